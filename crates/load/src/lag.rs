//! Consumer lag of a group on a topic, from the broker: the partitions' high watermarks minus
//! the group's committed offsets (minus the low watermark where the group committed nothing).

use std::time::Duration;

use ess_core::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

/// Reads one group's lag; blocking calls, so run it on a blocking thread.
pub struct LagProbe {
    consumer: BaseConsumer,
    topic: String,
    partitions: std::sync::Mutex<Vec<i32>>,
}

impl std::fmt::Debug for LagProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagProbe")
            .field("topic", &self.topic)
            .finish()
    }
}

impl LagProbe {
    /// A probe for `group` on `topic`. It never joins the group.
    pub fn new(kafka: &KafkaConfig, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ess_core::kafka::client_config(kafka)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions: Default::default(),
        })
    }

    /// Messages in the topic not yet committed by the group, over all partitions.
    pub fn lag(&self) -> anyhow::Result<i64> {
        let timeout = Duration::from_secs(5);
        let known = self
            .partitions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let partitions = if known.is_empty() {
            let found = ess_core::kafka::partition_ids(&self.consumer, &self.topic, timeout)?;
            if let Ok(mut p) = self.partitions.lock() {
                p.clone_from(&found);
            }
            found
        } else {
            known
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        let mut lag = 0i64;
        for p in partitions {
            let (low, high) = self.consumer.fetch_watermarks(&self.topic, p, timeout)?;
            let done = match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            lag += (high - done).max(0);
        }
        Ok(lag)
    }
}
