//! `audit-manager topics ensure` (the Helm chart's pre-install hook) against a mock cluster.
//!
//! librdkafka's mock cluster answers Metadata but not CreateTopics or CreatePartitions, so
//! these tests cover what it can: topics that are already big enough pass, and a topic that
//! would need creating or growing fails the command (exit 1) with the topic named, rather
//! than the hook succeeding with nothing done.

use crate::common;

use common::kafka::{DLQ_TOPIC, MockKafka, TOPIC};
use common::run_cli;

fn ensure(bootstrap: &str, topic: &str, partitions: &str) -> (i32, String, String) {
    run_cli(
        &[
            "topics",
            "ensure",
            "--timeout",
            "3s",
            "--partitions",
            partitions,
        ],
        &[
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", bootstrap),
            ("AUDIT_MANAGER__KAFKA__TOPIC", topic),
        ],
    )
}

#[test]
fn topics_with_enough_partitions_pass() {
    let kafka = MockKafka::new(1, 4);
    let (code, stdout, stderr) = ensure(&kafka.bootstrap, TOPIC, "4");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for t in [TOPIC, DLQ_TOPIC] {
        assert!(
            stdout.contains(&format!("{t}: exists with 4 partitions (at least 4)")),
            "{stdout}"
        );
    }
}

#[test]
fn too_few_partitions_are_grown_or_the_command_fails() {
    let kafka = MockKafka::new(1, 4);
    let (code, stdout, stderr) = ensure(&kafka.bootstrap, TOPIC, "8");
    // The mock cannot add partitions: the hook must fail, naming the topic and the change.
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&format!("{TOPIC}: ")) && stderr.contains("partitions 4 -> 8"),
        "{stderr}"
    );
}

#[test]
fn a_missing_topic_is_created_or_the_command_fails() {
    let kafka = MockKafka::new(1, 4);
    let (code, stdout, stderr) = ensure(&kafka.bootstrap, "audit.not.there", "2");
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("audit.not.there") && stderr.contains("created with 2 partitions"),
        "{stderr}"
    );
    // The DLQ topic exists with 4 >= 2 partitions and is reported as fine.
    assert!(
        stdout.contains(&format!("{DLQ_TOPIC}: exists with 4")),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_broker_fails_with_the_address() {
    // A port nothing listens on: bound once by the OS, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let bootstrap = format!("127.0.0.1:{port}");
    let (code, _, stderr) = run_cli(
        &["topics", "ensure", "--timeout", "3s"],
        &[(
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            bootstrap.as_str(),
        )],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&bootstrap), "{stderr}");
}

#[test]
fn the_seal_topic_is_ensured_when_sealing_is_configured() {
    let kafka = MockKafka::new(1, 4);
    let (code, stdout, stderr) = run_cli(
        &["topics", "ensure", "--timeout", "3s", "--partitions", "4"],
        &[
            ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", &kafka.bootstrap),
            (
                "AUDIT_MANAGER__INTEGRITY__SIGNING_KEY_FILE",
                "/keys/sealer.key",
            ),
        ],
    );
    // The mock cannot create it: the hook fails and names it.
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("openg2p.audit.seals: ") && stderr.contains("created with 1 partitions"),
        "{stderr}"
    );
}
