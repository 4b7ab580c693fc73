//! Development Kafka: librdkafka's in-process mock cluster (real Kafka protocol, memory only).
//!
//! Used by `kafka.bootstrap_servers: embedded` (in the service's own process) and by
//! `audit-manager dev-kafka` (a standalone process, so tests and developers can kill the agent
//! while the broker lives on). Nothing is written to disk: everything is gone when it stops.
//!
//! The mock cluster handle is not `Send`, so it lives on a thread of its own, which owns it
//! from creation to destruction; [`EmbeddedKafka`] only holds the address and the stop signal.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

/// The warning printed whenever a development broker starts.
pub const NOT_DURABLE: &str = "DEVELOPMENT ONLY: this Kafka broker is librdkafka's in-memory \
     mock cluster; it is NOT DURABLE and every event in it is lost when the process stops. \
     Never use it in production: set kafka.bootstrap_servers to a real cluster";

#[derive(Debug, thiserror::Error)]
pub enum DevKafkaError {
    #[error("cannot start the development Kafka broker: {0}")]
    Start(String),
}

/// A running mock cluster; stopped (and its data discarded) on drop.
pub struct EmbeddedKafka {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts one mock broker with `topics` created, each with `partitions` partitions.
    pub fn start(partitions: i32, topics: &[String]) -> Result<EmbeddedKafka, DevKafkaError> {
        EmbeddedKafka::start_with_rtt(partitions, topics, None)
    }

    /// Like [`EmbeddedKafka::start`], with every request to the broker answered `rtt` late: a
    /// slow or distant broker, for benchmarks that must not depend on the broker's speed.
    pub fn start_with_rtt(
        partitions: i32,
        topics: &[String],
        rtt: Option<std::time::Duration>,
    ) -> Result<EmbeddedKafka, DevKafkaError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("dev-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions.max(1), 1) {
                        let _ = ready_tx.send(Err(format!("cannot create topic {t}: {e}")));
                        return;
                    }
                }
                if let Some(rtt) = rtt
                    && let Err(e) = cluster.broker_round_trip_time(-1, rtt)
                {
                    let _ = ready_tx.send(Err(format!("cannot set the round-trip time: {e}")));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until told to stop, or until the handle is dropped (the sender goes away).
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| DevKafkaError::Start(format!("cannot spawn its thread: {e}")))?;
        let bootstrap = match ready_rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(DevKafkaError::Start(e)),
            Err(_) => return Err(DevKafkaError::Start("its thread died".into())),
        };
        tracing::warn!(bootstrap = %bootstrap, "{NOT_DURABLE}");
        Ok(EmbeddedKafka {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `host:port` list for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
