//! `.ci/postgres`, the script that makes the tests' PostgreSQL on a fresh machine (docs/ci.md):
//! its idea of "ready" is the server these tests run against, and it says what is missing
//! where nothing is. `--check` only looks: it never installs or changes anything. The full
//! install-create-start path needs a machine without PostgreSQL: `.ci/fresh-machine-check`
//! proves it in a throwaway Debian chroot.

use std::net::TcpListener;
use std::process::{Command, Output};

fn ci_postgres_check(port: u16) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres"))
        .arg("--check")
        .env("PGPORT", port.to_string())
        .output()
        .expect("running .ci/postgres")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_tests_postgresql_is_what_ci_postgres_makes() {
    // The server at 127.0.0.1:5432 that this suite uses (trust, TLS for localhost, UTF-8).
    let out = ci_postgres_check(5432);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        ".ci/postgres --check refuses the tests' own server: {stdout}{}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "== postgres: ready at postgres@127.0.0.1:5432"
    );
}

#[test]
fn ci_postgres_says_what_is_missing_where_no_postgresql_answers() {
    // Something listens, but it is not PostgreSQL: every connection is closed at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let out = ci_postgres_check(port);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "== postgres: not ready: nothing answers as postgres without a password on 127.0.0.1:{port}"
        )
    );
}

#[test]
fn ci_postgres_refuses_an_unknown_argument() {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres"))
        .arg("--install-everything")
        .output()
        .expect("running .ci/postgres");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("usage:"),
        "{}",
        text(&out.stderr)
    );
}
