//! `keygen`: an ed25519 key pair, for the sealer or a writer (see docs/integrity.md).

use std::path::Path;
use std::process::ExitCode;

pub fn run(out: &Path) -> anyhow::Result<ExitCode> {
    let id = crate::integrity::seal::keygen(out)?;
    println!(
        "wrote signing key {} and public key {}.pub (key id {})",
        out.display(),
        out.display(),
        hex::encode(id)
    );
    Ok(ExitCode::SUCCESS)
}
