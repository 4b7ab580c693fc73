//! Supervision: a role that panics while clients are posting takes the process down on purpose
//! (the others drain, `serve` returns the failure, the binary exits non-zero so the orchestrator
//! restarts it), and nothing that was answered 202 is lost.
//!
//! The panic comes from the test seam `StartOptions::inject_panic`, which panics inside the
//! chosen role's own task once the test cancels its trigger. That the returned failure becomes
//! a non-zero exit code is checked by the unit test
//! `cli::serve::tests::a_role_failure_exits_non_zero`.
//!
//! A role's own error reaches the supervisor too, at start and while running: `serve` fails
//! with the role's error text, never a bare "returned".

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_manager::config::Role;
use audit_manager::serve::{self, StartOptions};
use audit_manager::shutdown::{Task, TaskFailure};
use common::kafka::{MockKafka, TOPIC, TopicTail, fast_settings, forwarding};
use common::{TestApp, exported_ids};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 8;

/// Starts clients against `app`, lets `acks_before` events be acknowledged, fires the panic in
/// `task`, and returns the failure `Running::wait` reported and the acknowledged ids.
async fn panic_under_load(
    mut app: TestApp,
    trigger: CancellationToken,
    acks_before: usize,
) -> (TaskFailure, Vec<String>, tempfile::TempDir) {
    let url = format!("http://{}{}", app.addr, common::BASE);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = common::spawn_batch_clients(&url, 0, CLIENTS, &acked, &stop);
    common::eventually(Duration::from_secs(60), "acknowledged events", || async {
        (acked.lock().unwrap().len() >= acks_before).then_some(())
    })
    .await;
    trigger.cancel();
    let running = app.running.take().expect("running");
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the process drains after a role failure");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await
            .expect("client saw only 202, 503 or a closed connection");
    }
    let err = outcome.expect_err("a role failure must make serve fail (non-zero exit)");
    let failure = err
        .downcast_ref::<TaskFailure>()
        .unwrap_or_else(|| panic!("not a TaskFailure: {err:#}"))
        .clone();
    let acked = acked.lock().unwrap().clone();
    (failure, acked, app.dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_panic_exits_with_a_failure_and_loses_no_acknowledged_event() {
    let kafka = MockKafka::new(1, 3);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let trigger = CancellationToken::new();
    let opts = StartOptions {
        forward: Some(fast_settings()),
        inject_panic: Some((Task::Forward, trigger.clone())),
        ..StartOptions::default()
    };
    let app = TestApp::start_with(|c| forwarding(c, &kafka.bootstrap), opts).await;
    let (failure, acked, dir) = panic_under_load(app, trigger, 2000).await;
    assert_eq!(failure.task, Task::Forward);
    assert!(failure.reason.contains("panicked"), "{failure}");
    assert!(failure.to_string().contains("exits non-zero"), "{failure}");

    // Every 202 is either delivered or still in the spool for the restarted process.
    let in_spool: HashSet<String> = exported_ids(&dir.path().join("spool"))
        .into_iter()
        .collect();
    // What left the spool was acknowledged by the broker; the tail may still be reading it, so
    // give it until a deadline to see every such event (a lost one never shows up).
    let must_be_delivered: Vec<&String> =
        acked.iter().filter(|id| !in_spool.contains(*id)).collect();
    let seen = |msgs: &[common::kafka::Consumed]| -> HashSet<String> {
        msgs.iter().map(|m| m.id().to_owned()).collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let delivered = seen(&tail.snapshot());
        if must_be_delivered.iter().all(|id| delivered.contains(*id))
            || std::time::Instant::now() >= deadline
        {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lost: Vec<&String> = must_be_delivered
        .into_iter()
        .filter(|id| !delivered.contains(*id))
        .collect();
    eprintln!(
        "{} acked, {} delivered, {} left in the spool",
        acked.len(),
        delivered.len(),
        in_spool.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost (first {:?})",
        lost.len(),
        lost.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_panic_exits_with_a_failure_and_loses_no_acknowledged_event() {
    let trigger = CancellationToken::new();
    let opts = StartOptions {
        inject_panic: Some((Task::Http, trigger.clone())),
        ..StartOptions::default()
    };
    let app = TestApp::start_with(|_| {}, opts).await;
    let (failure, acked, dir) = panic_under_load(app, trigger, 2000).await;
    assert_eq!(failure.task, Task::Http);
    assert!(failure.reason.contains("panicked"), "{failure}");
    let in_spool: HashSet<String> = exported_ids(&dir.path().join("spool"))
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !in_spool.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost (first {:?})",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

/// The whole chain in a real process, with a real failure instead of the seam: a sink whose
/// consumer cannot subscribe (librdkafka refuses a topic that is an invalid regular expression)
/// ends its task. Before supervision that left a process answering `/health` UP with no sink;
/// now `audit-manager serve` drains and exits 1, naming the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_1_when_the_sink_stops_on_its_own() {
    let kafka = common::TestKafka::new(1);
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::ChildServer::spawn(
        &dir.path().join("spool"),
        &[
            ("AUDIT_MANAGER__ROLES", "sink"),
            (
                "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
                kafka.bootstrap.as_str(),
            ),
            ("AUDIT_MANAGER__KAFKA__TOPIC", "^(unclosed"),
            ("DATABASE_URL", db.url.as_str()),
        ],
    );
    let code = server.wait_exit(Duration::from_secs(60)).await;
    let log = server.log().join("\n");
    assert_eq!(
        code,
        Some(1),
        "a dead role must make the process exit 1:\n{log}"
    );
    assert!(
        log.contains("a role stopped before shutdown") && log.contains("\"task\":\"sink\""),
        "the failure is logged with the task:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("a role stopped before shutdown")
                && l.contains("cannot subscribe to kafka.topic")),
        "the failure's log line carries the sink's error:\n{log}"
    );
}

/// A sink that cannot start (its writer key file is missing) stops `serve` before any role
/// runs: the error names the role and the cause, and the root token is cancelled, so what was
/// already running (the ingest and forward roles built before it, the metrics upkeep) stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_cannot_start_fails_serve_with_its_error() {
    let kafka = common::TestKafka::new(1);
    let dir = tempfile::tempdir().unwrap();
    let roles = [Role::Ingest, Role::Forward, Role::Sink];
    // Never connected to: the sink fails before it would.
    let mut config = common::sink_config(&kafka, "postgres://postgres@127.0.0.1:1/none", &roles);
    config.spool.path = dir.path().join("spool");
    config.integrity.writer_key_file = Some(dir.path().join("missing-writer.key"));
    let token = CancellationToken::new();
    let err = serve::start(config, token.clone(), StartOptions::default())
        .await
        .err()
        .expect("a sink that cannot load its writer key must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot start the sink role")
            && text.contains("integrity.writer_key_file")
            && text.contains("missing-writer.key"),
        "the error names the role and the cause: {text}"
    );
    assert!(
        token.is_cancelled(),
        "the start failure cancels the root token, stopping what already runs"
    );
}

/// A sink that fails while running (its consumer cannot subscribe: librdkafka refuses a topic
/// that is an invalid regular expression) returns its error to the supervisor: `serve` fails
/// naming the sink, with the sink's error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_fails_while_running_fails_serve_with_its_error() {
    let kafka = common::TestKafka::new(1);
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::sink_config(&kafka, &db.url, &[Role::Sink]);
    config.spool.path = dir.path().join("spool");
    config.kafka.topic = "^(unclosed".into();
    let running = serve::start(config, CancellationToken::new(), StartOptions::default())
        .await
        .expect("the sink starts; it fails once it subscribes");
    let err = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the process drains after the sink failed")
        .expect_err("a failed sink must make serve fail (non-zero exit)");
    let failure = err
        .downcast_ref::<TaskFailure>()
        .unwrap_or_else(|| panic!("not a TaskFailure: {err:#}"));
    assert_eq!(failure.task, Task::Sink);
    assert!(
        failure
            .reason
            .starts_with("failed: the sink cannot subscribe to kafka.topic \"^(unclosed\"")
            && failure.reason.contains("Subscription error"),
        "the failure carries the sink's error: {failure}"
    );
}
