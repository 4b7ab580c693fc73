//! `privacy keygen|hash|forget|readmit|report` (see docs/privacy.md).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::PrivacyCommand;
use crate::config::Config;
use crate::privacy::{Privacy, forget};

/// `privacy keygen --out FILE`: the keeper key, FILE (private, mode 0600) and FILE.pub.
pub fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let (secret, public) = crate::privacy::envelope::Keeper::generate();
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            anyhow::bail!(
                "{} exists already; keygen never overwrites a key (choose another --out)",
                p.display()
            );
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    writeln!(f, "{secret}").and_then(|()| f.sync_all())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .with_context(|| format!("cannot create {}", pub_path.display()))?;
    writeln!(f, "{public}").and_then(|()| f.sync_all())?;
    println!(
        "keeper key: {} (private: privacy.keeper_key_file of writers, readers and forget) and \
         {} (public: privacy.keeper_public_key_file of ingest nodes)",
        out.display(),
        pub_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The commands that need the configuration.
pub async fn run(config: &Config, command: PrivacyCommand) -> anyhow::Result<ExitCode> {
    let privacy = Privacy::from_config(&config.privacy)?;
    match command {
        PrivacyCommand::Keygen { .. } => unreachable_keygen(),
        PrivacyCommand::Hash { value } => {
            let hmac = privacy
                .hmac()
                .context("privacy.hmac_key_file is not set: there are no pseudonyms to compute")?;
            for p in hmac.all_pseudonyms(&value) {
                println!("{p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Forget { subject, reason } => {
            let audit = crate::sink::attesting(
                config,
                crate::store::Store::connect_lazy(&config.database.url, 2)?,
            )?;
            audit.prepare().await?;
            let keys = crate::store::Store::connect_lazy(
                &crate::privacy::subject_keys::keys_url(config),
                2,
            )?;
            let who = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            let report = forget::forget(
                &privacy,
                &audit,
                keys.pool(),
                &subject,
                &reason,
                &who,
                forget::residue(config),
            )
            .await?;
            print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Readmit { subject } => {
            let hmac = privacy.hmac().context("privacy.hmac_key_file is not set")?;
            let keys = crate::store::Store::connect_lazy(
                &crate::privacy::subject_keys::keys_url(config),
                2,
            )?;
            crate::store::subject_keys::prepare(keys.pool()).await?;
            let n =
                crate::store::subject_keys::readmit(keys.pool(), &hmac.all_pseudonyms(&subject))
                    .await?;
            println!(
                "re-admitted: {n} forgotten pseudonym(s) cleared; new events of this subject are \
                 stored under a new key (values stored before stay unreadable)"
            );
            Ok(ExitCode::SUCCESS)
        }
        PrivacyCommand::Report => {
            let keys = crate::store::Store::connect_lazy(
                &crate::privacy::subject_keys::keys_url(config),
                2,
            )?;
            crate::store::subject_keys::prepare(keys.pool()).await?;
            let (keyed, forgotten) = crate::store::subject_keys::counts(keys.pool()).await?;
            let audit = crate::store::Store::connect_lazy(&config.database.url, 2)?;
            let counts: std::collections::BTreeMap<String, i64> =
                crate::store::subject_keys::rule_counts(audit.pool())
                    .await?
                    .into_iter()
                    .collect();
            println!("stored rows per rule:");
            for name in privacy.rule_names() {
                println!("  {name}: {}", counts.get(name).copied().unwrap_or(0));
            }
            println!("subjects keyed: {keyed}");
            println!("subjects forgotten: {forgotten}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn unreachable_keygen() -> anyhow::Result<ExitCode> {
    anyhow::bail!("`privacy keygen` needs no configuration and is run before it is loaded")
}

fn print_report(r: &forget::ForgetReport) {
    println!("forgotten: {}", r.pseudonym);
    println!(
        "forget event: {}",
        if r.event_recorded {
            "recorded now"
        } else {
            "already recorded by an earlier run"
        }
    );
    println!("keys destroyed: {}", r.keys_destroyed);
    println!("stored rows now unreadable: {}", r.rows_unreadable);
    println!("may still hold a recoverable copy:");
    for line in &r.residue {
        println!("  - {line}");
    }
}
