//! `audit-manager`: see `audit_manager::cli` for the commands.

fn main() -> std::process::ExitCode {
    audit_manager::cli::main()
}
