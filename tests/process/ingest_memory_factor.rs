//! What one byte of a request body costs while the ingest holds it: the body, the normalized
//! events and their spool frames are alive together until the answer (events are parsed one at
//! a time, so only one parsed event is). The `http.max_in_flight_bytes` bound counts body bytes
//! only, so `docs/memory.md` states this factor; the test pins it and prints it (`--nocapture`).
//! It repeats the batch handler's steps (split, then parse and normalize each event) rather
//! than calling the handler: a costlier split, parse, normalization or frame fails here
//! (parsing the whole batch into one tree first costs 8.6x), a handler that stopped using the
//! split would not.
//!
//! It also counts allocations: an event valid as sent goes through the borrowed path
//! (`event::Incoming`) with a handful of allocations, where a tree costs one or more per field.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use audit_manager::event::{self, Limits, ValidationMode};
use audit_manager::spool::Record;
use serde_json::{Value, json};

/// The system allocator, counting the live bytes, their peak and the allocations of the
/// measuring thread. Only that thread counts: this binary's other tests may run in the same
/// process at the same time (`cargo test` runs them on threads of one process), and the code
/// measured here runs on the calling thread. Live bytes are signed: the measured code may free
/// what was allocated before counting began.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count (no destructor, so usable inside the allocator).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTED.get() {
            let size = layout.size() as isize;
            let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
            PEAK.fetch_max(now, Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if COUNTED.get() {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are global: one test measures at a time.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Counts this thread's allocations while alive, one test at a time.
struct Measuring {
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Measuring {
    fn start() -> Measuring {
        let one_at_a_time = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
        COUNTED.set(true);
        Measuring {
            _one_at_a_time: one_at_a_time,
        }
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        COUNTED.set(false);
    }
}

/// A realistic event of about 700 bytes (the shape `audit-loadgen` sends).
fn event(n: usize) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("0b6e3c1e-5f7a-4d7e-9a53-{n:012}"),
        "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated",
        "subject": format!("beneficiary/{}", n % 1000),
        "time": "2026-11-22T10:00:00.000Z",
        "data": {
            "actor": {"type": "user", "id": format!("user-{}", n % 1000), "name": "Alice",
                      "roles": ["officer"], "ip": "10.1.2.3"},
            "action": "beneficiary.update",
            "outcome": "success",
            "resource": {"type": "beneficiary", "id": format!("{}", n * 7)},
            "changes": [{"field": "phone", "old": "+254700000001", "new": "+254700000002"}],
            "context": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "channel": "web"}
        }
    })
}

/// What the batch handler keeps alive at its peak: the body, then the events parsed from it,
/// normalized one by one into records, then their frames for the spool.
fn ingest_like(body: &[u8]) -> usize {
    let limits = Limits {
        mode: ValidationMode::Compatible,
        max_future_skew: Duration::from_secs(3600),
        max_event_bytes: 1 << 20,
    };
    // As the batch handler does: split the body, then parse and normalize one event at a time.
    let event::BatchBody::Events(events) = event::split_batch(body).expect("json") else {
        panic!("not a batch")
    };
    let now = chrono::Utc::now();
    let records: Vec<Record> = events
        .into_iter()
        .map(|raw| {
            let e = event::Incoming::parse(raw.get().as_bytes(), limits.mode).expect("json");
            let n = e.normalize(None, now, &limits).expect("valid");
            Record {
                accepted_at_ms: 0,
                id: n.id,
                key: n.key,
                value: n.json,
            }
        })
        .collect();
    let frames: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
    frames.iter().map(Vec::len).sum::<usize>() + records.len()
}

#[test]
fn a_body_byte_costs_a_bounded_few_bytes_while_it_is_ingested() {
    let _measuring = Measuring::start();
    for batch in [1usize, 100, 500] {
        let body = if batch == 1 {
            json!({ "events": [event(0)] })
        } else {
            json!({ "events": (0..batch).map(event).collect::<Vec<_>>() })
        }
        .to_string()
        .into_bytes();
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let kept = ingest_like(&body);
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let factor = peak as f64 / body.len() as f64;
        println!(
            "batch of {batch}: body {} bytes, peak {peak} bytes more while ingested: {factor:.1}x \
             ({kept} bytes of frames)",
            body.len()
        );
        if batch == 1 {
            assert!(
                peak < 16 * 1024,
                "one event costs {peak} bytes while ingested"
            );
        } else {
            assert!(
                factor < 4.5,
                "a batch of {batch} costs {factor:.1}x its body while ingested; docs/memory.md \
                 says about 3.3x"
            );
        }
    }
}

/// Allocations made while one event is parsed and normalized, by path.
fn allocations_per_event(body: &[u8], limits: &Limits) -> (usize, usize) {
    let now = chrono::Utc::now();
    let count = |f: &dyn Fn()| {
        let before = COUNT.load(Ordering::Relaxed);
        f();
        COUNT.load(Ordering::Relaxed) - before
    };
    let tree = count(&|| {
        let e = event::parse_json(body).expect("json");
        drop(event::normalize(e, now, limits).expect("valid"));
    });
    let borrowed = count(&|| {
        let e = event::Incoming::parse(body, limits.mode).expect("json");
        assert!(matches!(e, event::Incoming::Borrowed(_)), "valid as sent");
        drop(e.normalize(None, now, limits).expect("valid"));
    });
    (tree, borrowed)
}

#[test]
fn an_event_valid_as_sent_is_ingested_without_a_tree() {
    let _measuring = Measuring::start();
    let limits = Limits {
        mode: ValidationMode::Compatible,
        max_future_skew: Duration::from_secs(3600),
        max_event_bytes: 1 << 20,
    };
    let mut sent = event(7);
    // What most emitters leave to the service: filled in and appended, still borrowed.
    sent.as_object_mut().unwrap().remove("id");
    let body = sent.to_string().into_bytes();
    let (tree, borrowed) = allocations_per_event(&body, &limits);
    println!("allocations per event: tree path {tree}, borrowed path {borrowed}");
    // The tree takes one or more per key and string (73 here); the borrowed path keeps each
    // object's keys on the stack and allocates for the id (generated), time, Kafka key and
    // stored bytes (5 here).
    assert!(
        borrowed <= 6,
        "the borrowed path made {borrowed} allocations for one event (tree path: {tree})"
    );
    assert!(tree > 3 * borrowed, "tree {tree}, borrowed {borrowed}");
}
