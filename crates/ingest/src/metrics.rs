//! Prometheus metrics of one server.
//!
//! Each server owns its recorder and keeps handles to its metrics, so nothing global is
//! installed (tests run many servers in one process, and other components may install their
//! own global recorder) and the hot path does no lookups.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use rdkafka::statistics::Statistics;

const REQUESTS: &str = "ess_ingest_requests_total";
const ACCEPTED: &str = "ess_ingest_events_accepted_total";
const QUEUE: &str = "ess_ingest_producer_queue_depth";
const LATENCY: &str = "ess_ingest_produce_latency_seconds";
const BROKER_RTT: &str = "ess_ingest_broker_rtt_seconds";
const QUEUE_LATENCY: &str = "ess_ingest_producer_queue_latency_seconds";
const BATCH_EVENTS: &str = "ess_ingest_produce_batch_events";
const CONNECTIONS: &str = "ess_ingest_connections_open";
const REFUSED: &str = "ess_ingest_connections_refused_total";
const TIMEOUTS: &str = "ess_ingest_connection_timeouts_total";
const BUFFERED: &str = "ess_ingest_buffered_bytes";

/// Statuses counted under their own label; any other is counted as `other`.
const STATUSES: [u16; 15] = [
    200, 202, 204, 400, 401, 403, 404, 405, 408, 413, 415, 429, 500, 503, 504,
];

/// Produce latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// The server's metrics.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    requests: [Counter; STATUSES.len()],
    other: Counter,
    /// Events the broker acknowledged.
    pub accepted: Counter,
    /// Messages in the producer queue.
    pub queue_depth: Gauge,
    /// Time from the first enqueue to the last verdict of a request.
    pub produce_latency: Histogram,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections answered 503 at once because `max_connections` were open.
    pub connections_refused: Counter,
    /// Connections closed because a request head did not arrive in time.
    pub head_timeouts: Counter,
    /// Kept-alive connections closed because no request came in time.
    pub idle_timeouts: Counter,
    /// Bytes of request bodies held (the byte budget in use).
    pub buffered_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static META: Metadata<'static> = Metadata::new("ess_ingest", Level::INFO, Some(module_path!()));

impl Metrics {
    /// A fresh recorder with every metric registered.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), &BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        recorder.describe_counter(
            REQUESTS.into(),
            None,
            "HTTP requests by response status".into(),
        );
        recorder.describe_counter(
            ACCEPTED.into(),
            None,
            "Events acknowledged by the broker and answered 202".into(),
        );
        recorder.describe_gauge(
            QUEUE.into(),
            None,
            "Messages queued or in flight in the producer".into(),
        );
        recorder.describe_histogram(
            LATENCY.into(),
            Some(Unit::Seconds),
            "Time from handing a request's events to the producer until the broker's last acknowledgement".into(),
        );
        recorder.describe_gauge(
            BROKER_RTT.into(),
            Some(Unit::Seconds),
            "Produce request round trip per broker, over librdkafka's last statistics window"
                .into(),
        );
        recorder.describe_gauge(
            QUEUE_LATENCY.into(),
            Some(Unit::Seconds),
            "Time a message waits in the producer before its request is sent (linger included), per broker, over librdkafka's last statistics window".into(),
        );
        recorder.describe_gauge(
            BATCH_EVENTS.into(),
            None,
            "Average events per produce batch over librdkafka's last statistics window".into(),
        );
        recorder.describe_gauge(CONNECTIONS.into(), None, "Open HTTP connections".into());
        recorder.describe_counter(
            REFUSED.into(),
            None,
            "Connections answered 503 at once because ingest.max_connections were open".into(),
        );
        recorder.describe_counter(
            TIMEOUTS.into(),
            None,
            "Connections closed by a timeout: head (request head not in time) or idle (no next request in time)".into(),
        );
        recorder.describe_gauge(
            BUFFERED.into(),
            Some(Unit::Bytes),
            "Bytes of request bodies held, as received, decompressed and parsed (ingest.max_buffered_bytes bounds it)".into(),
        );
        let timeouts = |phase: &'static str| {
            recorder.register_counter(
                &Key::from_parts(TIMEOUTS, vec![Label::new("phase", phase)]),
                &META,
            )
        };
        let status = |value: String| {
            recorder.register_counter(
                &Key::from_parts(REQUESTS, vec![Label::new("status", value)]),
                &META,
            )
        };
        Self {
            requests: STATUSES.map(|s| status(s.to_string())),
            other: status("other".into()),
            accepted: recorder.register_counter(&Key::from_static_name(ACCEPTED), &META),
            queue_depth: recorder.register_gauge(&Key::from_static_name(QUEUE), &META),
            produce_latency: recorder.register_histogram(&Key::from_static_name(LATENCY), &META),
            connections_open: recorder.register_gauge(&Key::from_static_name(CONNECTIONS), &META),
            connections_refused: recorder.register_counter(&Key::from_static_name(REFUSED), &META),
            head_timeouts: timeouts("head"),
            idle_timeouts: timeouts("idle"),
            buffered_bytes: recorder.register_gauge(&Key::from_static_name(BUFFERED), &META),
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
        }
    }

    /// What the producer's statistics callback writes to.
    pub fn producer_stats(&self, topic: &str) -> ProducerStats {
        ProducerStats {
            recorder: Arc::clone(&self.recorder),
            topic: topic.to_owned(),
        }
    }

    /// Counts one response.
    pub fn request(&self, status: u16) {
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.requests[i].increment(1),
            None => self.other.increment(1),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets (call every few seconds, so
    /// samples do not pile up between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Turns librdkafka's periodic statistics into gauges: where produce latency goes (waiting in
/// the producer vs. the broker's round trip) and how many events each produce request carries.
#[derive(Clone)]
pub struct ProducerStats {
    recorder: Arc<PrometheusRecorder>,
    topic: String,
}

impl std::fmt::Debug for ProducerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerStats")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ProducerStats {
    /// Records one statistics report. Windows with no samples leave their gauges as they were.
    pub fn record(&self, statistics: &Statistics) {
        for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
            let windows = [
                (BROKER_RTT, broker.rtt.as_ref()),
                (QUEUE_LATENCY, broker.int_latency.as_ref()),
            ];
            for (name, window) in windows {
                let Some(window) = window.filter(|w| w.cnt > 0) else {
                    continue;
                };
                for (quantile, value) in [("0.5", window.p50), ("0.99", window.p99)] {
                    let labels = vec![
                        Label::new("broker", broker.name.clone()),
                        Label::new("quantile", quantile),
                    ];
                    self.recorder
                        .register_gauge(&Key::from_parts(name, labels), &META)
                        .set(value as f64 / 1e6);
                }
            }
        }
        if let Some(topic) = statistics.topics.get(&self.topic)
            && topic.batchcnt.cnt > 0
        {
            self.recorder
                .register_gauge(&Key::from_static_name(BATCH_EVENTS), &META)
                .set(topic.batchcnt.avg as f64);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
