//! CPU per event of `privacy.rules`, on one core, with the allocator the service ships:
//!
//! - ingest: an event's parse + validation + normalization (what every request pays) alone,
//!   against the same with five rules (drop, mask, pseudonymise, two `encrypt`) applied by
//!   `Privacy::at_ingest`; single events and the events of 500-event batches alike (a batch
//!   pays per event the same path);
//! - sink: decoding a consumed record into its row alone (a record without personal-data
//!   rules), against the writer's step first (`Privacy::at_store`: the data key unwrapped once,
//!   two values opened and re-encrypted under their subject's key, keys from memory as the
//!   writer's cache holds them) on records that carry encrypted fields.
//!
//! Rounds alternate the two sides; medians are printed, with the share of the request's whole
//! CPU cost the rules add (`REQUEST_NS`, default 27 000 ns: a single event's CPU through the
//! HTTP path on the 2-vCPU machine, BENCHMARKS.md). Run with
//!
//! ```sh
//! cargo bench --bench privacy_bench
//! ```
//!
//! `BENCH_ROUNDS` (default 7) and `BENCH_EVENTS` (events per round and side, default 100 000);
//! `BENCH_RULES=phone,ip,name,nid,address` keeps only the rules named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_manager::config::Config;
use audit_manager::event::{self, Incoming, Limits, ValidationMode};
use audit_manager::privacy::Privacy;
use audit_manager::privacy::envelope::Keeper;
use audit_manager::privacy::subject_keys::MemoryKeys;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `audit-loadgen`'s event with the personal data the five rules select.
fn event(seq: usize) -> String {
    format!(
        concat!(
            r#"{{"specversion":"1.0","id":"bench-{seq}","source":"urn:openg2p:registry","#,
            r#""type":"org.openg2p.beneficiary.updated","subject":"beneficiary/{s}","#,
            r#""time":"2026-11-20T10:00:00.123Z","#,
            r#""data":{{"actor":{{"type":"user","id":"user-{a}","#,
            r#""name":"Load User {a}","roles":["officer"],"ip":"10.0.1.{a}"}},"#,
            r#""action":"beneficiary.update","outcome":"success","#,
            r#""resource":{{"type":"person","id":"P-{s}","address":"{s} Long Road"}},"#,
            r#""changes":[{{"field":"phone","old":"0711{seq}","new":"0722{seq}"}},"#,
            r#"{{"field":"national_id","old":"NID-{s}","new":"NID-{s}-B"}}]}}}}"#,
        ),
        seq = seq,
        s = seq % 1000,
        a = seq % 250,
    )
}

fn config(dir: &std::path::Path, writer: bool) -> Config {
    let (sk, pk) = Keeper::generate();
    if !dir.join("keeper").exists() {
        std::fs::write(dir.join("hmac"), [7u8; 32]).unwrap();
        std::fs::write(dir.join("keeper"), sk).unwrap();
        std::fs::write(dir.join("keeper.pub"), pk).unwrap();
    }
    let keeper = if writer {
        format!("keeper_key_file: {:?}", dir.join("keeper"))
    } else {
        format!("keeper_public_key_file: {:?}", dir.join("keeper.pub"))
    };
    let yaml = format!(
        r#"audit_manager:
  privacy:
    hmac_key_file: {hmac:?}
    {keeper}
    rules:
      - {{name: phone, action: drop, select: "$.data.changes[?@.field=='phone']['old','new']"}}
      - {{name: ip, action: mask, keep_last: 2, select: "$.data.actor.ip"}}
      - {{name: name, action: pseudonymise, select: "$.data.actor.name"}}
      - {{name: nid, action: encrypt, subject: "$.data.resource.id",
          select: "$.data.changes[?@.field=='national_id']['old','new']"}}
      - {{name: address, action: encrypt, subject: "$.data.resource.id",
          select: "$.data.resource.address"}}
"#,
        hmac = dir.join("hmac"),
    );
    let mut c = Config::from_yaml_str(&yaml, &[]).unwrap();
    // `BENCH_RULES=phone,nid`: only these rules (to see what each costs).
    if let Ok(keep) = std::env::var("BENCH_RULES") {
        let keep: Vec<&str> = keep.split(',').collect();
        c.privacy
            .rules
            .retain(|r| r.name.as_deref().is_some_and(|n| keep.contains(&n)));
    }
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `a` and `b` over `n` events each, alternating rounds; their median ns/event.
fn compare(rounds: usize, n: usize, names: [&str; 2], a: &dyn Fn(), b: &dyn Fn()) -> (f64, f64) {
    let per_event = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let (mut a_ns, mut b_ns) = (Vec::new(), Vec::new());
    for round in 0..rounds {
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

fn limits() -> Limits {
    Limits {
        mode: ValidationMode::Compatible,
        max_future_skew: Duration::from_secs(300),
        max_event_bytes: 1 << 20,
    }
}

fn bench_ingest_with_five_rules() {
    let (rounds, n) = (env("BENCH_ROUNDS", 7), env("BENCH_EVENTS", 100_000));
    let dir = tempfile::tempdir().unwrap();
    let privacy = Privacy::from_config(&config(dir.path(), false).privacy).unwrap();
    let bodies: Vec<String> = (0..1000).map(event).collect();
    let limits = limits();
    let now = chrono::Utc::now();
    let path = |with: bool| {
        for i in 0..n {
            let body = bodies[i % bodies.len()].as_bytes();
            let e = Incoming::parse(body, limits.mode).expect("json");
            let mut ev = e.normalize(None, now, &limits).expect("valid");
            if with {
                privacy.at_ingest(&mut ev).expect("rules");
            }
            black_box(ev);
        }
    };
    let (none, five) = compare(
        rounds,
        n,
        ["no rules", "five rules"],
        &|| path(false),
        &|| path(true),
    );
    let request = env("REQUEST_NS", 27_000) as f64;
    println!(
        "median of {rounds} rounds × {n} events ({} bytes each): no rules {none:.0} ns/event, \
         five rules {five:.0} ns/event (+{:.0} ns); against a {request:.0} ns request: \
         throughput -{:.1} %",
        bodies[0].len(),
        five - none,
        (1.0 - request / (request + five - none)) * 100.0
    );
}

fn bench_sink_decode_with_encrypted_fields() {
    let (rounds, n) = (env("BENCH_ROUNDS", 7), env("BENCH_EVENTS", 100_000));
    let dir = tempfile::tempdir().unwrap();
    let ingest = Privacy::from_config(&config(dir.path(), false).privacy).unwrap();
    let writer = Privacy::from_config(&config(dir.path(), true).privacy)
        .unwrap()
        .with_subject_keys(Arc::new(MemoryKeys::default()));
    let none = Privacy::none();
    let limits = limits();
    let now = chrono::Utc::now();
    let record = |seq: usize, p: &Privacy| {
        let body = event(seq);
        let mut ev =
            event::normalize(event::parse_json(body.as_bytes()).unwrap(), now, &limits).unwrap();
        p.at_ingest(&mut ev).unwrap();
        ev.json
    };
    let plain: Vec<Vec<u8>> = (0..1000).map(|i| record(i, &none)).collect();
    let sealed: Vec<Vec<u8>> = (0..1000).map(|i| record(i, &ingest)).collect();
    let decode = |records: &[Vec<u8>], p: &Privacy| {
        for i in 0..n {
            let value = p.at_store(&records[i % records.len()]).expect("store step");
            black_box(event::row_from_record(&value, now, ValidationMode::Compatible).unwrap());
        }
    };
    let (a, b) = compare(
        rounds,
        n,
        ["no encrypted fields", "encrypted fields"],
        &|| decode(&plain, &none),
        &|| decode(&sealed, &writer),
    );
    println!(
        "median of {rounds} rounds × {n} records: decode {a:.0} ns/row, with the writer's step \
         {b:.0} ns/row (+{:.0} ns, {:.0} → {:.0} rows/s of one core's decoding)",
        b - a,
        1e9 / a,
        1e9 / b
    );
}

fn main() {
    support::run(&[
        ("bench_ingest_with_five_rules", bench_ingest_with_five_rules),
        (
            "bench_sink_decode_with_encrypted_fields",
            bench_sink_decode_with_encrypted_fields,
        ),
    ]);
}
