//! Every Kafka client of the service is built here, so the properties the delivery guarantees
//! rest on are set in one place and no role can forget them:
//!
//! - [`producer`]: the idempotent, `acks=all` producer configuration every producer shares
//!   (forwarder, dead letters, `dlq replay`, seals), and the producers built from it;
//! - [`consumer`]: the consumer configuration (manual commits) of the sink's group consumer
//!   and of the readers of assigned partitions (`dlq replay`, the seal topic);
//! - [`admin`]: topic creation, best effort at the forwarder's start and strict in `topics
//!   ensure`;
//! - [`error`]: what a Kafka error says about the system (one record's fault, or an outage
//!   every record would hit), with the operator's remedy;
//! - [`dev`]: librdkafka's in-memory mock cluster, the development broker.
//!
//! The properties themselves come from the configuration (`kafka.*`, see
//! [`crate::config::KafkaConfig`]); the roles ask this module for clients and never build one.

pub mod admin;
pub mod consumer;
pub mod dev;
pub mod error;
pub mod producer;

use rdkafka::ClientConfig;
use rdkafka::config::NativeClientConfig;
use rdkafka::error::KafkaResult;

/// librdkafka's reading of a property map (`kafka.producer` or `kafka.consumer`): refuses a
/// property it does not know or a value it cannot parse, and fills in its own defaults.
pub fn native_config<'a>(
    props: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> KafkaResult<NativeClientConfig> {
    let mut cc = ClientConfig::new();
    for (k, v) in props {
        cc.set(k, v);
    }
    cc.create_native_config()
}
