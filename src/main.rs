//! `audit-manager`: see `audit_manager::cli` for the commands.

// glibc malloc was the largest single cost on the request path (many small JSON allocations
// freed on other threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    audit_manager::cli::main()
}
