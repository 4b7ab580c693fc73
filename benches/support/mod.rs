//! What every benchmark binary shares: running its benchmarks by name. They measure and print
//! figures, they do not assert speed, so they are not tests:
//!
//! ```text
//! cargo bench --bench NAME                # every benchmark of benches/NAME.rs
//! cargo bench --bench NAME -- SUBSTRING   # those whose name contains SUBSTRING
//! ```
//!
//! `cargo bench` builds them optimized (the `bench` profile is `release`) and passes `--bench`.
//! Built any other way (`cargo test --benches`, a test runner's `--list`), a binary runs
//! nothing: a benchmark takes minutes and an unoptimized figure misleads.
#![allow(dead_code)]

use std::future::Future;
use std::time::Instant;

/// One benchmark: its name (what a filter matches) and the function that runs it.
pub type Bench = (&'static str, fn());

/// Runs the benchmarks the command line selects, one after another.
pub fn run(benches: &[Bench]) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // A test runner asking for tests: there are none here.
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmarks: run them optimized with `cargo bench --bench NAME [-- FILTER]`");
        return;
    }
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let chosen: Vec<&Bench> = benches
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = benches.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "no benchmark matches {filters:?}; this binary has: {}",
            names.join(", ")
        );
        std::process::exit(2);
    }
    for (name, bench) in chosen {
        println!("== {name}");
        let started = Instant::now();
        bench();
        println!("== {name}: {:.1} s", started.elapsed().as_secs_f64());
    }
}

/// Runs `f` to completion on the runtime the benchmarks measure with: two worker threads (the
/// two cores of the reference machine).
pub fn multi_thread<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}
