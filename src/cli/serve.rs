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
        super::block_on(database_answers(&config.database.url))??;
    }
    exit_code(super::block_on(crate::serve::run(config))?)
}

/// `serve --dev` stores everything in PostgreSQL: without a server answering at
/// `database.url`, an error that says what to run (a missing database is fine: it is created).
async fn database_answers(url: &str) -> anyhow::Result<()> {
    let store = crate::store::Store::connect_lazy(url, 1).context("invalid database.url")?;
    let r = store.ping().await;
    store.close().await;
    match r {
        Err(e) if e.code().is_none() => Err(anyhow::anyhow!(no_database_help(url, &e.to_string()))),
        // The server answered (even "no such database", which the store creates).
        _ => Ok(()),
    }
}

/// What to do when nothing answers at `url` (see docs/kafka-less.md, "serve --dev").
pub fn no_database_help(url: &str, error: &str) -> String {
    format!(
        "serve --dev stores every event in PostgreSQL, and no PostgreSQL answers at {url} \
         ({error}).\n\
         Start one, then run `serve --dev` again. In a checkout of this repository,\n\
         \x20 .ci/postgres    # installs, creates and starts exactly the server --dev expects\n\
         or:\n\
         \x20 docker run -d --name audit-postgres -p 5432:5432 \\\n\
         \x20   -e POSTGRES_HOST_AUTH_METHOD=trust postgres:17\n\
         or, on Debian/Ubuntu with the system's packages:\n\
         \x20 sudo apt-get install -y postgresql\n\
         \x20 sudo pg_ctlcluster \"$(ls /etc/postgresql | sort -V | tail -1)\" main start\n\
         \x20 sudo -u postgres psql -c '\\password postgres'    # choose a password\n\
         \x20 export DATABASE_URL=postgres://postgres:PASSWORD@localhost:5432/auditmanager\n\
         (or point DATABASE_URL at any PostgreSQL 14 or later you have).",
        url = crate::config::redact_url(url),
    )
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

/// `serve --dev`: ingest, forward straight into PostgreSQL (`forward.target: postgres`, no
/// broker) and maintain, plus `query` when readers can be told apart or anonymous reads are
/// allowed. Everything else keeps its configured value: the defaults already are the
/// development setup (`0.0.0.0:8000`, `./data/spool`,
/// `postgres://postgres@localhost:5432/auditmanager`, a database the store creates when it is
/// missing), and the environment still overrides them. `dev-kafka` is for the Kafka path.
pub fn apply_dev(config: &mut Config) {
    config.forward.target = crate::config::ForwardTarget::Postgres;
    config.roles = vec![Role::Ingest, Role::Forward, Role::Maintain];
    // The read side too, when the configuration says who may read.
    if config.query.allow_anonymous || config.auth.mode != crate::config::AuthMode::None {
        config.roles.push(Role::Query);
    }
}

/// What `serve --dev` keeps: printed before anything starts, so it is the first thing a
/// newcomer reads.
pub fn dev_banner(config: &Config) -> String {
    let rule = "=".repeat(78);
    format!(
        "{rule}\n\
         audit-manager serve --dev: ingest, forward and maintain in one process, no Kafka\n\
         \x20 API          http://{listen}/v1/auditmanager  (try GET /health)\n\
         \x20 spool        {spool}: every 202 is fsynced here first\n\
         \x20 PostgreSQL   {db}: the spool drains straight into it\n\
         \x20              (the database is created if missing)\n\
         \n\
         \x20 DURABLE: every event answered 202 is on disk, in the spool until it is stored\n\
         \x20 in PostgreSQL; a crash or kill -9 loses none of them. Development settings\n\
         \x20 (no authentication, no sealing key): check every key before real use.\n\
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
    fn dev_writes_straight_into_postgresql_without_a_broker() {
        let mut c = Config {
            roles: vec![Role::Ingest],
            ..Config::default()
        };
        apply_dev(&mut c);
        assert_eq!(c.roles, [Role::Ingest, Role::Forward, Role::Maintain]);
        assert_eq!(c.forward.target, crate::config::ForwardTarget::Postgres);
        c.validate().expect("the --dev configuration is valid");
        assert_eq!(
            c.database.url,
            "postgres://postgres@localhost:5432/auditmanager"
        );
        let banner = dev_banner(&c);
        assert!(
            banner.contains("DURABLE: every event answered 202"),
            "{banner}"
        );
        assert!(!banner.contains("NOT DURABLE"), "{banner}");
        c.query.allow_anonymous = true;
        apply_dev(&mut c);
        assert_eq!(c.roles.last(), Some(&Role::Query));
    }

    #[test]
    fn dev_hides_the_password_and_says_what_to_run_without_a_database() {
        let mut c = Config::default();
        c.database.url = "postgres://u:s3cret@db:5432/x".into();
        apply_dev(&mut c);
        let banner = dev_banner(&c);
        assert!(!banner.contains("s3cret"), "{banner}");
        let help = no_database_help(&c.database.url, "connection refused");
        assert!(!help.contains("s3cret"), "{help}");
        assert!(help.contains("apt-get install -y postgresql"), "{help}");
        assert!(help.contains("docker run"), "{help}");
        assert!(help.contains(".ci/postgres"), "{help}");
    }
}
