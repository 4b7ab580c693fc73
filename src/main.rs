//! `audit-manager`: see `audit_manager::cli` for the commands.

// glibc malloc was the largest single cost on the request path (many small JSON allocations
// freed on other threads); mimalloc handles that pattern far better. Its version 2 line (see
// Cargo.toml) gives freed memory back sooner than version 3 at the same speed. The
// `system-allocator` feature keeps glibc's, so heap profilers that hook malloc (heaptrack) see
// every allocation: see "Profiling memory" in docs/memory.md.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    audit_manager::cli::main()
}
