//! CPU per event of the two ingest paths, on one core, with the allocator the service ships
//! (mimalloc): the tree path (parse into a `serde_json::Value`, validate, serialize) and the
//! borrowed path (`event::Incoming`), on the event `audit-loadgen` sends. Rounds alternate the
//! paths; the medians are printed. Run with
//!
//! ```sh
//! cargo bench --bench ingest_path_bench
//! ```
//!
//! `BENCH_ROUNDS` (default 7) and `BENCH_EVENTS` (events per round and path, default 200 000).
//!
//! A second benchmark prices what an event the borrowed path cannot take pays for trying it:
//! the same event with a naive `time` (which `compatible` rewrites), through the tree path
//! alone and through `Incoming` (a skim, then the tree path).

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use audit_manager::event::{self, Incoming, Limits, ValidationMode};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The event `audit-loadgen` sends (416 bytes for the first): `datacontenttype` is left to the
/// service, which appends it.
fn loadgen_event(seq: usize) -> String {
    format!(
        concat!(
            r#"{{"specversion":"1.0","id":"bench-{seq}","source":"urn:openg2p:registry","#,
            r#""type":"org.openg2p.beneficiary.updated","subject":"beneficiary/{s}","#,
            r#""time":"2026-11-20T10:00:00.123Z","#,
            r#""data":{{"actor":{{"type":"user","id":"user-{a}","#,
            r#""name":"Load User {a}","roles":["officer"],"ip":"10.0.1.{a}"}},"#,
            r#""action":"beneficiary.update","outcome":"success","#,
            r#""resource":{{"type":"beneficiary","id":"{s}"}},"#,
            r#""changes":[{{"field":"phone","old":"x","new":"{seq}"}}]}}}}"#,
        ),
        seq = seq,
        s = seq % 1000,
        a = seq % 250,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `a` and `b` over `n` events for `rounds` alternating rounds; their median ns/event.
fn compare(rounds: usize, n: usize, names: [&str; 2], a: &dyn Fn(), b: &dyn Fn()) -> (f64, f64) {
    let per_event = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let (mut a_ns, mut b_ns) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        if round % 2 == 0 {
            a_ns.push(per_event(a));
            b_ns.push(per_event(b));
        } else {
            b_ns.push(per_event(b));
            a_ns.push(per_event(a));
        }
        println!(
            "round {round}: {} {:.0} ns/event, {} {:.0} ns/event",
            names[0], a_ns[round], names[1], b_ns[round]
        );
    }
    (median(a_ns), median(b_ns))
}

/// The tree path alone against `Incoming` over `bodies`, alternating rounds (`BENCH_ROUNDS`,
/// `BENCH_EVENTS`); `borrowed` says which path `Incoming` must take for these bodies. Prints
/// every round; returns the median ns/event of each and the rounds × events measured.
fn tree_against_incoming(
    bodies: &[String],
    borrowed: bool,
    names: [&str; 2],
) -> (f64, f64, String) {
    let rounds = env("BENCH_ROUNDS", 7);
    let n = env("BENCH_EVENTS", 200_000);
    let limits = Limits {
        mode: ValidationMode::Compatible,
        max_future_skew: Duration::from_secs(300),
        max_event_bytes: 1 << 20,
    };
    let now = chrono::Utc::now();
    let tree = || {
        for i in 0..n {
            let body = bodies[i % bodies.len()].as_bytes();
            let value = event::parse_json(body).expect("json");
            black_box(event::normalize(value, now, &limits).expect("valid"));
        }
    };
    let incoming = || {
        for i in 0..n {
            let body = bodies[i % bodies.len()].as_bytes();
            let e = Incoming::parse(body, limits.mode).expect("json");
            assert_eq!(
                matches!(e, Incoming::Borrowed(_)),
                borrowed,
                "the path taken"
            );
            black_box(e.normalize(None, now, &limits).expect("valid"));
        }
    };
    let (t, i) = compare(rounds, n, names, &tree, &incoming);
    (t, i, format!("{rounds} rounds × {n} events"))
}

fn bench_tree_and_borrowed_paths() {
    let bodies: Vec<String> = (0..1000).map(loadgen_event).collect();
    let (t, b, runs) = tree_against_incoming(&bodies, true, ["tree", "borrowed"]);
    println!(
        "median of {runs} ({} bytes each): tree path {t:.0} ns/event, borrowed path {b:.0} \
         ns/event ({:.1}x)",
        bodies[0].len(),
        t / b
    );
}

fn bench_an_event_the_borrowed_path_cannot_take() {
    let bodies: Vec<String> = (0..1000)
        .map(|i| loadgen_event(i).replace("10:00:00.123Z", "10:00:00.123"))
        .collect();
    let (t, i, runs) = tree_against_incoming(&bodies, false, ["tree alone", "skim + tree"]);
    println!(
        "median of {runs} with a naive time: tree path alone {t:.0} ns/event, through \
         Incoming {i:.0} ns/event (+{:.0} %)",
        (i / t - 1.0) * 100.0
    );
}

fn main() {
    support::run(&[
        (
            "bench_tree_and_borrowed_paths",
            bench_tree_and_borrowed_paths,
        ),
        (
            "bench_an_event_the_borrowed_path_cannot_take",
            bench_an_event_the_borrowed_path_cannot_take,
        ),
    ]);
}
