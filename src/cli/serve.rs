//! `serve`: the service itself, with `--roles` or `--dev` applied over the configuration.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, Role};

pub fn run(mut config: Config, roles: Option<Vec<Role>>, dev: bool) -> anyhow::Result<ExitCode> {
    if let Some(roles) = roles {
        config.roles = roles;
        config.validate().context("invalid --roles")?;
    }
    if dev {
        apply_dev(&mut config);
        config
            .validate()
            .context("invalid configuration for --dev")?;
        eprint!("{}", dev_banner(&config));
    }
    exit_code(super::block_on(crate::serve::run(config))?)
}

/// Exit code of `serve`: 0 after a drain on SIGTERM/SIGINT; 1 when a role failed while running
/// (the others were drained first), so the orchestrator restarts the process; other errors
/// (could not start) go to `main`, which exits 2.
fn exit_code(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<crate::shutdown::TaskFailure>().is_some() => {
            eprintln!("error: {}", crate::config::redact::scrub(&format!("{e:#}")));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

/// `serve --dev`: every write role (and `query` when readers can be told apart, or anonymous
/// reads are allowed), and the
/// in-process broker unless the configuration names a real
/// one. Everything else keeps its configured value: the defaults already are the development
/// setup (`0.0.0.0:8000`, `./data/spool`, `postgres://postgres@localhost:5432/auditmanager`,
/// a database the store creates when it is missing), and the environment still overrides them.
pub fn apply_dev(config: &mut Config) {
    config.roles = Role::DEFAULT.to_vec();
    // The read side too, when the configuration says who may read.
    if config.query.allow_anonymous || config.auth.mode != crate::config::AuthMode::None {
        config.roles.push(Role::Query);
    }
    if config.kafka.bootstrap_servers == crate::config::KafkaConfig::default().bootstrap_servers {
        config.kafka.bootstrap_servers = crate::serve::EMBEDDED_KAFKA.to_string();
    }
}

/// What `serve --dev` keeps and what it does not: printed before anything starts, so it is the
/// first thing a newcomer reads.
pub fn dev_banner(config: &Config) -> String {
    let rule = "=".repeat(78);
    let embedded = config.kafka.bootstrap_servers == crate::serve::EMBEDDED_KAFKA;
    let kafka = if embedded {
        "in-process development broker: NOT DURABLE. Events forwarded to it and not yet\n\
         \x20               stored in PostgreSQL are LOST when this process stops."
            .to_string()
    } else {
        format!(
            "{} (kafka.bootstrap_servers): as durable as that cluster",
            config.kafka.bootstrap_servers
        )
    };
    let warning = if embedded {
        "NOT DURABLE PAST KAFKA: never send real audit events to --dev."
    } else {
        "Development settings: check every key before using this for real audit events."
    };
    format!(
        "{rule}\n\
         audit-manager serve --dev: every role in one process, for development\n\
         \x20 API          http://{listen}/v1/auditmanager  (try GET /health)\n\
         \x20 spool        {spool}: durable, every 202 is fsynced here first\n\
         \x20 Kafka        {kafka}\n\
         \x20 PostgreSQL   {db}: durable; the database is created if missing\n\
         \n\
         \x20 {warning}\n\
         {rule}\n",
        listen = config.http.listen,
        spool = config.spool.path.display(),
        db = crate::config::redact_url(&config.database.url),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Task, TaskFailure};

    #[test]
    fn a_role_failure_exits_non_zero() {
        assert_eq!(exit_code(Ok(())).ok(), Some(ExitCode::SUCCESS));
        let failure = TaskFailure {
            task: Task::Forward,
            reason: "panicked: boom".into(),
        };
        let code = exit_code(Err(anyhow::Error::from(failure)));
        assert_eq!(code.ok(), Some(ExitCode::FAILURE));
        // Startup errors keep going to `main` (exit 2 with the message).
        assert!(exit_code(Err(anyhow::anyhow!("cannot listen"))).is_err());
    }

    #[test]
    fn dev_runs_every_role_on_the_embedded_broker_by_default() {
        let mut c = Config {
            roles: vec![Role::Ingest],
            ..Config::default()
        };
        apply_dev(&mut c);
        assert_eq!(c.roles, Role::DEFAULT.to_vec());
        assert_eq!(c.kafka.bootstrap_servers, crate::serve::EMBEDDED_KAFKA);
        assert_eq!(
            c.database.url,
            "postgres://postgres@localhost:5432/auditmanager"
        );
        let banner = dev_banner(&c);
        assert!(banner.contains("NOT DURABLE PAST KAFKA"), "{banner}");
        c.query.allow_anonymous = true;
        apply_dev(&mut c);
        assert_eq!(c.roles.last(), Some(&Role::Query));
    }

    #[test]
    fn dev_keeps_a_configured_broker_and_database_and_hides_the_password() {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = "b1:9092".into();
        c.database.url = "postgres://u:s3cret@db:5432/x".into();
        apply_dev(&mut c);
        assert_eq!(c.kafka.bootstrap_servers, "b1:9092");
        let banner = dev_banner(&c);
        assert!(
            banner.contains("b1:9092") && !banner.contains("NOT DURABLE PAST"),
            "{banner}"
        );
        assert!(!banner.contains("s3cret"), "{banner}");
    }
}
