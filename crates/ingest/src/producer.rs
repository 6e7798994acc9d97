//! The one shared Kafka producer.
//!
//! Idempotent, `acks=all`, bounded queue. [`Producer::enqueue`] never blocks: a full queue is an
//! error at once. `message.timeout.ms` equals the request's produce timeout, so librdkafka gives
//! its final verdict on a message before the request that sent it answers, and it never retries
//! a message after its client was told 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ess_core::config::Config;
use futures::future::{MaybeDone, maybe_done};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

use crate::metrics::ProducerStats;

/// Header telling consumers the version of the message value's shape.
pub const SCHEMA_HEADER: &str = "ess-schema";
/// The current value of [`SCHEMA_HEADER`].
pub const SCHEMA_VERSION: &str = "1";

/// Extra time a request waits past `message.timeout.ms` for librdkafka's verdict.
const VERDICT_GRACE: Duration = Duration::from_millis(500);
/// How often librdkafka reports its statistics (`[ingest.producer]` may override it).
const STATISTICS_INTERVAL_MS: &str = "5000";

type FutureProducer = rdkafka::producer::FutureProducer<IngestContext>;

/// The producer's context: feeds librdkafka's statistics to the metrics.
#[derive(Clone)]
struct IngestContext(ProducerStats);

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        self.0.record(&statistics);
    }
}

/// The producer and its topic.
///
/// The librdkafka producer inside can be replaced ([`Producer::rebuild`]): an idempotent
/// producer whose broker lost its state (a restarted broker without durable storage) can stay
/// stuck re-initialising its producer id, timing out every message although the broker answers.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    client: Arc<ClientConfig>,
    context: IngestContext,
    topic: String,
    wait: Duration,
    /// Requests in a row that got no acknowledgement at all.
    failing: Arc<AtomicU64>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.topic)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The broker acknowledged it (all in-sync replicas have it).
    Stored,
    /// The producer reported a failure that librdkafka counts as not persisted: not in Kafka.
    Failed,
    /// No verdict in time, or a failure after which it may be in Kafka (librdkafka's
    /// "possibly persisted": a timeout or a broken connection after the message was sent).
    Unknown,
    /// Not handed to the producer (an earlier event of the request hit a full queue).
    NotSent,
}

impl Delivery {
    /// The name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::NotSent => "not_sent",
        }
    }
}

/// Why an event could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The producer queue is full.
    #[error("the producer queue is full")]
    QueueFull,
    /// Anything else librdkafka refused.
    #[error("the producer refused the event: {0}")]
    Refused(KafkaError),
}

impl Producer {
    /// Creates the producer from `[kafka]` and `[ingest]`; its statistics go to `stats`.
    pub fn new(config: &Config, stats: ProducerStats) -> Result<Self, KafkaError> {
        let ingest = &config.ingest;
        let mut client = ess_core::kafka::client_config(&config.kafka);
        let timeout_ms = ingest.produce_timeout.as_millis().min(u128::from(u32::MAX));
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", &ingest.compression)
            .set("linger.ms", ingest.linger_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                ingest.queue_max_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                ingest.queue_max_kbytes.to_string(),
            )
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("request.timeout.ms", timeout_ms.min(30_000).to_string())
            .set("socket.keepalive.enable", "true")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        for (key, value) in &ingest.producer {
            client.set(key, value);
        }
        let context = IngestContext(stats);
        Ok(Self {
            inner: Arc::new(RwLock::new(client.create_with_context(context.clone())?)),
            client: Arc::new(client),
            context,
            topic: config.kafka.topic.clone(),
            wait: ingest.produce_timeout + VERDICT_GRACE,
            failing: Arc::new(AtomicU64::new(0)),
        })
    }

    fn current(&self) -> FutureProducer {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the librdkafka producer with a fresh one. Deliveries pending on the old one
    /// still get their verdict.
    pub fn rebuild(&self) -> Result<(), KafkaError> {
        let fresh: FutureProducer = self.client.create_with_context(self.context.clone())?;
        let old = {
            let mut guard = match self.inner.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *guard, fresh)
        };
        self.failing.store(0, Ordering::Relaxed);
        // Let the old one finish what it holds, off the runtime threads.
        let wait = self.wait;
        std::thread::spawn(move || {
            let _ = old.flush(wait);
        });
        Ok(())
    }

    /// How long a request waits for verdicts.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Requests in a row whose events all failed; 0 after any acknowledgement.
    pub fn failing_requests(&self) -> u64 {
        self.failing.load(Ordering::Relaxed)
    }

    /// Whether librdkafka reported a fatal error (the producer cannot continue).
    pub fn is_fatal(&self) -> bool {
        self.current().client().fatal_error().is_some()
    }

    /// The topic events go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Hands one message to librdkafka without blocking.
    pub fn enqueue(
        &self,
        key: &str,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<DeliveryFuture, EnqueueError> {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: SCHEMA_HEADER,
            value: Some(SCHEMA_VERSION),
        });
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .timestamp(timestamp_ms)
            .headers(headers);
        self.current()
            .send_result(record)
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    EnqueueError::QueueFull
                }
                other => EnqueueError::Refused(other),
            })
    }

    /// Waits for the verdict on every delivery, up to the produce timeout (plus a short grace
    /// for librdkafka's own timeout to fire first).
    pub async fn settle(&self, deliveries: Vec<DeliveryFuture>) -> Vec<Delivery> {
        let outcomes = self.wait_all(deliveries).await;
        if outcomes.contains(&Delivery::Stored) {
            self.failing.store(0, Ordering::Relaxed);
        } else if !outcomes.is_empty() {
            self.failing.fetch_add(1, Ordering::Relaxed);
        }
        outcomes
    }

    async fn wait_all(&self, deliveries: Vec<DeliveryFuture>) -> Vec<Delivery> {
        if deliveries.len() == 1 {
            let mut one = deliveries;
            let Some(delivery) = one.pop() else {
                return Vec::new();
            };
            let outcome = match tokio::time::timeout(self.wait, delivery).await {
                Ok(result) => outcome(result),
                Err(_) => Delivery::Unknown,
            };
            return vec![outcome];
        }
        let mut pending: Vec<MaybeDone<DeliveryFuture>> =
            deliveries.into_iter().map(maybe_done).collect();
        let _ = tokio::time::timeout(self.wait, AllDone(&mut pending, 0)).await;
        pending
            .into_iter()
            .map(|mut done| match Pin::new(&mut done).take_output() {
                Some(result) => outcome(result),
                None => Delivery::Unknown,
            })
            .collect()
    }

    /// Messages waiting in the producer (queued or in flight).
    pub fn queue_depth(&self) -> i32 {
        self.current().in_flight_count()
    }

    /// Whether the broker answers metadata for the topic (blocks up to `timeout`; call from a
    /// blocking thread).
    pub fn has_topic_blocking(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self
            .current()
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            Some(t) => Err(format!(
                "topic {} is not available ({:?})",
                self.topic,
                t.error()
            )),
            None => Err(format!("topic {} is not in the metadata", self.topic)),
        }
    }

    /// Delivers everything queued, up to `timeout` (blocks; call from a blocking thread).
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(timeout)
    }
}

fn outcome(result: <DeliveryFuture as Future>::Output) -> Delivery {
    match result {
        Ok(Ok(_)) => Delivery::Stored,
        Ok(Err((e, _))) => {
            tracing::debug!(error = %e, "delivery failed");
            failure(&e)
        }
        Err(_canceled) => Delivery::Unknown,
    }
}

/// Sorts a delivery error as librdkafka sorts it (`rd_kafka_err_action` and the produce error
/// handler in `rdkafka_request.c`): errors it marks "possibly persisted" are `Unknown`, the
/// others `Failed`. A message timeout counts as possibly persisted: librdkafka says so for a
/// message that timed out in flight, and the error alone does not tell it from one that never
/// left the queue.
fn failure(error: &KafkaError) -> Delivery {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return Delivery::Unknown,
    };
    match code {
        C::BrokerTransportFailure
        | C::SSL
        | C::OperationTimedOut
        | C::RequestTimedOut
        | C::NotEnoughReplicasAfterAppend
        | C::PurgeInflight
        | C::BadMessage
        | C::MessageTimedOut
        | C::OutOfOrderSequenceNumber
        | C::DuplicateSequenceNumber
        | C::Fatal => Delivery::Unknown,
        _ => Delivery::Failed,
    }
}

/// Polls every delivery until all are done; `.1` is the first one not known to be done.
struct AllDone<'a>(&'a mut [MaybeDone<DeliveryFuture>], usize);

impl Future for AllDone<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        while this.1 < this.0.len() {
            if Pin::new(&mut this.0[this.1]).poll(cx).is_pending() {
                break;
            }
            this.1 += 1;
        }
        let mut all = this.1 == this.0.len();
        // Poll the rest too so each registers its waker and finished ones are kept.
        for done in this.0[this.1..].iter_mut() {
            if Pin::new(done).poll(cx).is_pending() {
                all = false;
            }
        }
        if all { Poll::Ready(()) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possibly_persisted_errors_are_unknown_others_failed() {
        use RDKafkaErrorCode as C;
        let sorted = |code| failure(&KafkaError::MessageProduction(code));
        for code in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::RequestTimedOut,
            C::OperationTimedOut,
            C::NotEnoughReplicasAfterAppend,
            C::PurgeInflight,
            C::OutOfOrderSequenceNumber,
        ] {
            assert_eq!(sorted(code), Delivery::Unknown, "{code:?}");
        }
        for code in [
            C::MessageSizeTooLarge,
            C::UnknownTopicOrPartition,
            C::NotEnoughReplicas,
            C::TopicAuthorizationFailed,
            C::PurgeQueue,
            C::InvalidRecord,
        ] {
            assert_eq!(sorted(code), Delivery::Failed, "{code:?}");
        }
    }
}
