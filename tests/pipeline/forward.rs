//! The forward role against librdkafka's mock cluster (real Kafka protocol, in process):
//! content and order of what reaches the topic, outages, permanent rejections.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{Consumed, MockKafka, TOPIC, TopicTail, eventually};
use common::{TestApp, run_cli};
use serde_json::{Value, json};

/// An event for entity `entity`; `subject` set unless `with_subject` is false (then the key is
/// the actor id).
fn entity_event(id: &str, entity: usize, with_subject: bool) -> Value {
    let mut e = common::event(id);
    if with_subject {
        e["subject"] = json!(format!("beneficiary/{entity}"));
    } else {
        e.as_object_mut().unwrap().remove("subject");
        e["data"]["actor"]["id"] = json!(format!("actor-{entity}"));
    }
    e
}

fn ids(msgs: &[Consumed]) -> HashSet<String> {
    msgs.iter().map(|m| m.id().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_reach_the_topic_with_key_header_value_in_per_key_order() {
    let kafka = MockKafka::new(1, 3);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let app = TestApp::with_kafka(&kafka.bootstrap, |_| {}).await;

    // 8 entities x 25 events, interleaved across entities, singles and batches mixed;
    // entities 6 and 7 have no subject, so their key is data.actor.id.
    const ENTITIES: usize = 8;
    const PER: usize = 25;
    let mut posted: BTreeMap<String, Value> = BTreeMap::new();
    for n in 0..PER {
        let batch: Vec<Value> = (0..ENTITIES)
            .map(|e| entity_event(&format!("e{e}-n{n:03}"), e, e < 6))
            .collect();
        if n % 2 == 0 {
            let (status, body) = app
                .post_json("/events/batch", &json!({ "events": batch }))
                .await;
            assert_eq!(status, 202, "{body}");
        } else {
            for ev in &batch {
                let (status, body) = app.post_json("/events", ev).await;
                assert_eq!(status, 202, "{body}");
            }
        }
        for ev in batch {
            posted.insert(ev["id"].as_str().unwrap().to_string(), ev);
        }
    }

    let want: HashSet<String> = posted.keys().cloned().collect();
    let msgs = tail
        .wait_for(Duration::from_secs(30), "every posted event", |m| {
            ids(m).is_superset(&want)
        })
        .await;

    let mut by_key: BTreeMap<String, Vec<&Consumed>> = BTreeMap::new();
    for m in &msgs {
        let sent = &posted[m.id()];
        assert_eq!(
            m.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        let expected_key = match sent.get("subject") {
            Some(s) => s.as_str().unwrap().to_string(),
            None => sent["data"]["actor"]["id"].as_str().unwrap().to_string(),
        };
        assert_eq!(m.key.as_deref(), Some(expected_key.as_str()), "{}", m.id());
        // The value is the normalized event: everything sent, unchanged, plus defaults.
        for (k, v) in sent.as_object().unwrap() {
            assert_eq!(&m.value[k], v, "attribute {k} of {}", m.id());
        }
        assert_eq!(m.value["datacontenttype"], "application/json");
        by_key.entry(expected_key).or_default().push(m);
    }
    assert_eq!(by_key.len(), ENTITIES);
    for (key, mut recs) in by_key {
        let partitions: HashSet<i32> = recs.iter().map(|m| m.partition).collect();
        assert_eq!(partitions.len(), 1, "key {key} spread over {partitions:?}");
        recs.sort_by_key(|m| m.offset);
        // First occurrences (duplicates would be allowed) must be in the order posted.
        let mut seen = HashSet::new();
        let order: Vec<&str> = recs
            .iter()
            .map(|m| m.id())
            .filter(|id| seen.insert(id.to_string()))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "events of key {key} out of order");
        assert_eq!(order.len(), PER);
    }

    // Delivered events leave the spool; the role reports UP.
    eventually(Duration::from_secs(20), "spool to drain", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    let fwd = app.role_health("forward").await;
    assert_eq!(fwd["status"], "UP", "{fwd}");
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("audit_forward_events_produced_total"),
        "{metrics}"
    );
}

/// A forwarder restarted on a spool with undelivered events sends them; nothing is deleted
/// before Kafka acknowledged it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_survive_a_restart_and_are_sent_after_it() {
    let kafka = MockKafka::new(1, 3);
    kafka.all_down();
    let app = TestApp::with_kafka(&kafka.bootstrap, |_| {}).await;
    for n in 0..50 {
        let (status, _) = app
            .post_json("/events", &common::event(&format!("r-{n}")))
            .await;
        assert_eq!(status, 202);
    }
    let dir = app.shutdown().await;
    // Kafka never answered: every event is still in the spool.
    assert_eq!(common::exported_ids(&dir.path().join("spool")).len(), 50);

    kafka.all_up();
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let app = TestApp::start_in(
        dir,
        |c| common::kafka::forwarding(c, &kafka.bootstrap),
        audit_manager::serve::StartOptions {
            forward: Some(common::kafka::fast_settings()),
            ..Default::default()
        },
    )
    .await;
    let want: HashSet<String> = (0..50).map(|n| format!("r-{n}")).collect();
    tail.wait_for(Duration::from_secs(30), "the spooled events", |m| {
        ids(m).is_superset(&want)
    })
    .await;
    eventually(Duration::from_secs(20), "spool to drain", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
}

/// Guarantee 2: a record Kafka refuses for good is quarantined with the reason, and the
/// records behind it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_rejected_event_is_quarantined_and_does_not_block_the_rest() {
    let kafka = MockKafka::new(1, 1);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    // The producer refuses records over 4000 bytes (MessageSizeTooLarge), as a topic with a
    // small max.message.bytes would.
    let app = TestApp::with_kafka(&kafka.bootstrap, |c| {
        c.kafka
            .producer
            .insert("message.max.bytes".into(), "4000".into());
    })
    .await;
    let mut small = Vec::new();
    for n in 0..30 {
        let id = format!("s-{n:02}");
        let (status, _) = app.post_json("/events", &common::event(&id)).await;
        assert_eq!(status, 202);
        small.push(id);
        if n == 10 {
            let mut big = common::event("too-big");
            big["data"]["blob"] = json!("x".repeat(20_000));
            let (status, _) = app.post_json("/events", &big).await;
            assert_eq!(status, 202);
        }
    }
    let want: HashSet<String> = small.iter().cloned().collect();
    let msgs = tail
        .wait_for(
            Duration::from_secs(30),
            "the events behind the big one",
            |m| ids(m).is_superset(&want),
        )
        .await;
    assert!(!ids(&msgs).contains("too-big"));
    eventually(
        Duration::from_secs(20),
        "spool to hold only the quarantined event",
        || async {
            let ingest = app.role_health("ingest").await;
            let s = &ingest["spool"];
            (s["events"] == 0 && s["quarantined"] == 1).then_some(())
        },
    )
    .await;
    let fwd = app.role_health("forward").await;
    assert_eq!(fwd["kafka"]["quarantined_events"], 1, "{fwd}");

    let dir = app.shutdown().await;
    let spool = dir.path().join("spool");
    let spool = spool.to_string_lossy();
    let (code, out, err) = run_cli(
        &["spool", "export", "--quarantine"],
        &[("AUDIT_MANAGER__SPOOL__PATH", spool.as_ref())],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["id"], "too-big");
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(reason.contains("too large"), "reason: {reason}");
}

/// Guarantee 4: all brokers down for 30 s under steady load. Ingest keeps answering 202, the
/// spool grows, `/health` says DEGRADED with the reason; after the brokers return everything
/// drains and every acknowledged event is in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_under_load_loses_nothing_and_drains() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let kafka = MockKafka::new(3, 3);
    let tail = TopicTail::start(&kafka.bootstrap, TOPIC);
    let app = Arc::new(TestApp::with_kafka(&kafka.bootstrap, |_| {}).await);

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (app, acked, refused, stop) =
            (app.clone(), acked.clone(), refused.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("o-{n}");
                let (status, body) = app.post_json("/events", &common::event(&id)).await;
                if status == 202 {
                    acked.lock().unwrap().push(id);
                } else {
                    refused.lock().unwrap().push(format!("{status} {body}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    tail.wait_for(
        Duration::from_secs(20),
        "forwarding before the outage",
        |m| m.len() >= 50,
    )
    .await;
    kafka.all_down();
    let down_at = Instant::now();
    let before = app.spool_events().await;

    let fwd = eventually(
        Duration::from_secs(20),
        "forward to report DEGRADED",
        || async {
            let f = app.role_health("forward").await;
            (f["status"] == "DEGRADED").then_some(f)
        },
    )
    .await;
    assert!(
        fwd["reason"].as_str().is_some_and(|r| r.contains("Kafka")),
        "{fwd}"
    );
    // One paced client: on a busy machine 500 events can take most of the outage to arrive.
    eventually(OUTAGE, "the spool to grow", || async {
        (app.spool_events().await >= before + 500).then_some(())
    })
    .await;
    tokio::time::sleep_until((down_at + OUTAGE).into()).await;
    let during = app.spool_events().await;
    assert!(during >= before + 500);
    let (status, _) = app.get("/health").await;
    assert_eq!(status, 200, "a Kafka outage must not make /health fail");

    kafka.all_up();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    eventually(Duration::from_secs(60), "the spool to drain", || async {
        (app.spool_events().await == 0).then_some(())
    })
    .await;
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        refused.lock().unwrap().is_empty(),
        "{:?}",
        refused.lock().unwrap()
    );
    let msgs = tail
        .wait_for(Duration::from_secs(30), "every acknowledged event", |m| {
            ids(m).is_superset(&acked)
        })
        .await;
    assert_eq!(
        ids(&msgs),
        acked,
        "consumed ids must be exactly the acknowledged ones"
    );
    eventually(Duration::from_secs(20), "forward to report UP", || async {
        (app.role_health("forward").await["status"] == "UP").then_some(())
    })
    .await;
    eprintln!(
        "outage: {} acked, {} records consumed, spool peaked at >= {during}",
        acked.len(),
        msgs.len()
    );
}

/// `kafka.bootstrap_servers: embedded` starts the development broker in process, with both
/// topics created, and the forwarder delivers into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_is_started_with_topics_and_receives_events() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let app = TestApp::with_kafka("embedded", |_| {}).await;
    let (_, cfg) = app.get("/config").await;
    let bootstrap = cfg["response"]["kafka"]["bootstrap_servers"]
        .as_str()
        .expect("bootstrap in /config")
        .to_string();
    assert_ne!(bootstrap, "embedded", "the broker's real address is used");

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for topic in [TOPIC, common::kafka::DLQ_TOPIC] {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        // kafka.topic_partitions (3 in these tests), not the mock's auto-create default.
        assert_eq!(md.topics()[0].partitions().len(), 3, "{topic}");
    }

    let tail = TopicTail::start(&bootstrap, TOPIC);
    let (status, _) = app.post_json("/events", &common::event("emb-1")).await;
    assert_eq!(status, 202);
    tail.wait_for(
        Duration::from_secs(20),
        "the event in the embedded broker",
        |m| ids(m).contains("emb-1"),
    )
    .await;
}
