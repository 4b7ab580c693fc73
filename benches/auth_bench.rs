//! What authentication adds to each request, measured in-process without HTTP (not run by
//! default: it measures, it does not assert speed). Run it optimized:
//!
//! ```text
//! cargo bench --bench auth_bench
//! ```
//!
//! - the token lookup: SHA-256 of a 64-character token and a constant-time comparison with
//!   every principal's hash (20 principals, the match last; a wrong token costs the same);
//! - the `source` pattern check of one event (`urn:openg2p:*`);
//! - replacing `authtype`/`authid` in one parsed event.
//!
//! Each figure is the best of 5 runs of 200 000 iterations (the least disturbed by other work
//! on the machine), in nanoseconds per operation.

// A measurement harness, not shipped code: a failed setup step may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::time::Instant;

use audit_manager::auth::{Principals, SourcePattern};
use audit_manager::event::authcontext::{self, AuthContext};
use serde_json::json;
use sha2::{Digest, Sha256};

const ITERATIONS: u32 = 200_000;

fn best_ns(mut op: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ITERATIONS {
                op();
            }
            started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn bench_authentication_cost_per_request() {
    let token = "9f1c0e5d2b7a4c3e8f6a1d0b9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e";
    let mut file = String::from("principals:\n");
    for i in 0..19 {
        let other = format!("{token}-{i}");
        file.push_str(&format!(
            "  - {{name: other-{i}, role: emitter, token_sha256: \"{}\", sources: [\"/o/{i}/*\"]}}\n",
            hex::encode(Sha256::digest(other.as_bytes()))
        ));
    }
    file.push_str(&format!(
        "  - {{name: loadgen, role: emitter, token_sha256: \"{}\", sources: [\"urn:openg2p:*\"]}}\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    ));
    let principals = Principals::parse(&file).unwrap();
    assert_eq!(principals.len(), 20);
    assert!(principals.by_token(token.as_bytes()).is_some());

    let lookup = best_ns(|| {
        black_box(principals.by_token(black_box(token.as_bytes())));
    });
    let wrong = "0".repeat(64);
    let lookup_wrong = best_ns(|| {
        black_box(principals.by_token(black_box(wrong.as_bytes())));
    });
    let pattern = SourcePattern::new("urn:openg2p:*");
    let matching = best_ns(|| {
        black_box(pattern.matches(black_box("urn:openg2p:registry")));
    });
    let event = json!({
        "specversion": "1.0", "id": "x", "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated", "time": "2026-11-22T10:00:00.000Z",
        "authtype": "user", "authid": "someone",
        "data": {"actor": {"id": "user-42"}, "action": "update", "outcome": "success"}
    });
    let ctx = AuthContext {
        auth_type: "api_key",
        auth_id: "loadgen",
    };
    let mut ev = event.clone();
    let apply = best_ns(|| {
        authcontext::apply(black_box(&mut ev), Some(ctx));
    });
    let clone_only = best_ns(|| {
        black_box(event.clone());
    });
    println!("token lookup, 20 principals, match last:  {lookup:>8.0} ns");
    println!("token lookup, 20 principals, no match:    {lookup_wrong:>8.0} ns");
    println!("source pattern match (urn:openg2p:*):     {matching:>8.0} ns");
    println!("authtype/authid replaced in one event:    {apply:>8.0} ns");
    println!("(for scale: cloning that event:           {clone_only:>8.0} ns)");
}

fn main() {
    support::run(&[(
        "bench_authentication_cost_per_request",
        bench_authentication_cost_per_request,
    )]);
}
