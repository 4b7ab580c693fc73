//! `token hash` and `token new`: the bearer tokens of `auth.mode: token`. Only their hashes go
//! into `auth.tokens_file`; no configuration is needed to make them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::TokenCommand;

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Hash => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input)
                .context("cannot read the token from stdin")?;
            println!("{}", token_hash_line(&input)?);
        }
        TokenCommand::New { out, force } => {
            let mut bytes = [0u8; 32];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut bytes)
                .context("cannot get random bytes from the OS for a random token")?;
            let token = hex::encode(bytes);
            let line = token_hash_line(token.as_bytes())?;
            match out {
                Some(path) => {
                    write_secret_file(&path, format!("{token}\n").as_bytes(), force)?;
                    println!("{line}");
                }
                None => {
                    eprintln!("{line}");
                    println!("{token}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `contents` to `path` readable by its owner only (0600), durably. Without `force` an
/// existing file is refused; with it, the content is written to a new file beside `path` and
/// renamed over it, so the replaced file never holds a half-written token and the mode is
/// 0600 whatever the old file's was.
fn write_secret_file(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let create = |p: &Path| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(p)
    };
    let target = if force {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(name)
    } else {
        path.to_owned()
    };
    let mut f = create(&target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
            anyhow::anyhow!(
                "{} exists; it is not overwritten (pass --force to replace it, or choose \
                 another file)",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", target.display())
        }
    })?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    let written = written.and_then(|()| {
        if force {
            std::fs::rename(&target, path)
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// The `token_sha256: "<hex>"` line for the token in `input` (surrounding whitespace
/// trimmed); refuses an empty token and one a bearer header cannot carry.
pub fn token_hash_line(input: &[u8]) -> anyhow::Result<String> {
    let token = input.trim_ascii();
    if token.is_empty() {
        anyhow::bail!(
            "no token on stdin; pipe one in, e.g. `openssl rand -hex 32 | tee token | \
             audit-manager token hash`"
        );
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "the token holds spaces, control or non-ASCII characters, which an \
             `Authorization: Bearer` header cannot carry reliably; use e.g. `openssl rand -hex 32`"
        );
    }
    if token.len() < 16 {
        tracing::warn!(
            "the token is only {} characters long: anyone who guesses it can write audit \
             events; prefer `openssl rand -hex 32`",
            token.len()
        );
    }
    Ok(format!(
        "token_sha256: \"{}\"",
        hex::encode(crate::auth::token_hash(token))
    ))
}
