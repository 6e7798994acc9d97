//! The insert side: one task per batch (at most `inflight_inserts` at once), each inserting its
//! batch with retries until ClickHouse acknowledges it, splitting it when ClickHouse refuses
//! rows, and sending dead letters; then it reports back so the offsets can be committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Client;
use rand::Rng as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{Semaphore, mpsc};

use crate::batch::{Batch, Block, DeadLetter};
use crate::classify::{Disposition, classify, code_name, error_code};
use crate::encode::{decode_row, row_to_wire_json};
use crate::shard::{Layout, Sharding};

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rows stored and dead letters acknowledged: the offsets may be committed.
    Stored,
    /// Given up because its partitions were revoked or the sink is stopping; nothing may be
    /// committed for it.
    Abandoned,
}

/// The report of one batch.
#[derive(Debug)]
pub struct Ack {
    /// The batch.
    pub batch: u64,
    /// Its partition ranges.
    pub ranges: std::collections::BTreeMap<i32, (i64, i64)>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Which nodes take a batch's rows.
#[derive(Debug, Clone)]
pub enum Route {
    /// Every node has the Distributed table and takes whole batches; inserts rotate over the
    /// nodes and fail over on errors.
    Distributed(Vec<(String, Client)>),
    /// A batch is split by shard; each part goes to a replica of its shard (rotating, failing
    /// over to the other replicas).
    Shards(Layout),
}

impl Route {
    /// The nodes that take `shard`'s part (never empty: [`Layout::discover`] maps a replica
    /// for every shard).
    fn nodes(&self, shard: Option<usize>) -> &[(String, Client)] {
        match self {
            Self::Distributed(nodes) => nodes,
            Self::Shards(layout) => &layout.replicas[shard.unwrap_or(0)],
        }
    }
}

/// Where and how inserts go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The nodes.
    pub route: Route,
    /// `INSERT INTO db.table (cols) FORMAT RowBinary`.
    pub sql: String,
}

/// Shared by the insert tasks.
pub struct Writer {
    target: Target,
    producer: FutureProducer,
    topic: String,
    dlq_topic: String,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// Current assignment generation; a batch of an older one is abandoned between attempts.
    generation: Arc<AtomicU64>,
    next_node: AtomicU64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("sql", &self.target.sql)
            .field("dlq_topic", &self.dlq_topic)
            .finish()
    }
}

impl Writer {
    /// A writer.
    pub fn new(
        target: Target,
        producer: FutureProducer,
        topic: String,
        dlq_topic: String,
        initial_backoff: Duration,
        max_backoff: Duration,
        generation: Arc<AtomicU64>,
    ) -> Self {
        Self {
            target,
            producer,
            topic,
            dlq_topic,
            initial_backoff,
            max_backoff,
            generation,
            next_node: AtomicU64::new(0),
        }
    }

    /// How the poll loop must split rows by shard as it encodes them (direct writes only).
    pub fn sharding(&self) -> Option<Sharding> {
        match &self.target.route {
            Route::Shards(layout) => Some(layout.sharding.clone()),
            Route::Distributed(_) => None,
        }
    }

    fn current(&self, batch: &Batch) -> bool {
        self.generation.load(Ordering::SeqCst) == batch.generation
    }

    /// Stores one batch: rows (each shard's part concurrently), then dead letters.
    pub async fn write(&self, batch: Batch) -> Ack {
        let started = Instant::now();
        let direct = matches!(self.target.route, Route::Shards(_));
        let parts: Vec<(Option<usize>, &Block)> = batch
            .parts
            .iter()
            .enumerate()
            .filter(|(_, block)| !block.is_empty())
            .map(|(shard, block)| (direct.then_some(shard), block))
            .collect();
        let written = futures::future::join_all(
            parts
                .iter()
                .map(|&(shard, block)| self.insert_block(&batch, shard, block)),
        )
        .await;
        let dead: Option<Vec<DeadLetter>> =
            written.into_iter().try_fold(Vec::new(), |mut all, part| {
                all.extend(part?);
                Some(all)
            });
        let outcome = match dead {
            Some(dead) if self.send_dead(&batch, batch.dead.iter().chain(&dead)).await => {
                Outcome::Stored
            }
            _ => Outcome::Abandoned,
        };
        if outcome == Outcome::Stored {
            let now = ess_core::event::Millis::now().0;
            metrics::counter!("ess_sink_rows_total").increment(batch.rows() as u64);
            metrics::counter!("ess_sink_batches_total").increment(1);
            metrics::histogram!("ess_sink_batch_rows").record(batch.rows() as f64);
            metrics::histogram!("ess_sink_batch_bytes").record(batch.bytes() as f64);
            metrics::histogram!("ess_sink_batch_seconds").record(started.elapsed().as_secs_f64());
            let e2e = metrics::histogram!("ess_sink_e2e_seconds");
            for &t in &batch.ingest_times {
                e2e.record((now - t).max(0) as f64 / 1000.0);
            }
        } else {
            metrics::counter!("ess_sink_batches_abandoned_total").increment(1);
        }
        Ack {
            batch: batch.id,
            ranges: batch.ranges,
            outcome,
        }
    }

    /// Inserts every row of `block` (all of `batch`'s, or its part for `shard`); returns the
    /// rows ClickHouse refused as dead letters, or `None` if abandoned.
    async fn insert_block(
        &self,
        batch: &Batch,
        shard: Option<usize>,
        block: &Block,
    ) -> Option<Vec<DeadLetter>> {
        let mut dead = Vec::new();
        self.insert_range(batch, shard, block, &mut dead)
            .await
            .then_some(dead)
    }

    /// Inserts `block`, retrying transient failures and bisecting refused data down to
    /// single rows, which become dead letters. Returns false if abandoned.
    async fn insert_range(
        &self,
        batch: &Batch,
        shard: Option<usize>,
        block: &Block,
        dead: &mut Vec<DeadLetter>,
    ) -> bool {
        // An explicit stack instead of recursion: (from, to) row ranges still to insert.
        let mut todo = vec![(0, block.len())];
        while let Some((from, to)) = todo.pop() {
            let data = block.slice(from, to);
            let query_id = query_id(&self.topic, batch, shard, from, to);
            let mut attempt = 0u32;
            loop {
                if !self.current(batch) {
                    return false;
                }
                let started = Instant::now();
                match self.insert_once(shard, &query_id, data.clone()).await {
                    Ok(()) => {
                        metrics::histogram!("ess_sink_insert_seconds")
                            .record(started.elapsed().as_secs_f64());
                        break;
                    }
                    Err((node, error)) => match classify(&error) {
                        Disposition::Retry => {
                            metrics::counter!("ess_sink_insert_retries_total").increment(1);
                            let delay = self.backoff(attempt);
                            attempt = attempt.saturating_add(1);
                            tracing::warn!(
                                batch = batch.id, ?shard, rows = to - from, node, attempt,
                                retry_in = ?delay, "insert failed, will retry: {error}"
                            );
                            tokio::time::sleep(delay).await;
                        }
                        Disposition::BadData if to - from == 1 => {
                            let code = error_code(&error).unwrap_or(0);
                            dead.push(refused_row(block, from, code, &error));
                            break;
                        }
                        Disposition::BadData => {
                            tracing::warn!(
                                batch = batch.id,
                                ?shard,
                                rows = to - from,
                                node,
                                "ClickHouse refused the data, splitting: {error}"
                            );
                            let mid = from + (to - from) / 2;
                            todo.push((mid, to));
                            todo.push((from, mid));
                            break;
                        }
                    },
                }
            }
        }
        true
    }

    /// One INSERT of `data` on the next node that takes it (any node for the Distributed
    /// table, a replica of `shard` for a shard's part). The query id names the batch's topic
    /// and partitions so a new owner of a partition can wait for an insert still running on
    /// the server (see [`crate::reconcile`]); retries reuse it, so ClickHouse refuses to run
    /// two attempts of one block at once.
    async fn insert_once(
        &self,
        shard: Option<usize>,
        query_id: &str,
        data: Bytes,
    ) -> Result<(), (String, clickhouse::error::Error)> {
        let nodes = self.target.route.nodes(shard);
        let n = nodes.len() as u64;
        let index = (self.next_node.fetch_add(1, Ordering::Relaxed) % n) as usize;
        let (url, client) = &nodes[index];
        let mut insert = client
            .clone()
            .with_setting("query_id", query_id)
            .insert_formatted_with(self.target.sql.clone());
        const CHUNK: usize = 1 << 20;
        let mut at = 0;
        let result = async {
            while at < data.len() {
                let end = (at + CHUNK).min(data.len());
                insert.send(data.slice(at..end)).await?;
                at = end;
            }
            insert.end().await
        }
        .await;
        result.map_err(|e| (url.clone(), e))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        // Equal jitter: half fixed, half random, so retries of many sinks spread out.
        let half = base / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// Sends dead letters and waits for the broker's acknowledgement of each, retrying.
    async fn send_dead<'a>(
        &self,
        batch: &Batch,
        letters: impl Iterator<Item = &'a DeadLetter>,
    ) -> bool {
        for letter in letters {
            let mut attempt = 0u32;
            loop {
                if !self.current(batch) {
                    return false;
                }
                let partition = letter.partition.to_string();
                let offset = letter.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ess-error",
                        value: Some(letter.reason.as_bytes()),
                    })
                    .insert(Header {
                        key: "ess-source-topic",
                        value: Some(self.topic.as_bytes()),
                    })
                    .insert(Header {
                        key: "ess-source-partition",
                        value: Some(partition.as_bytes()),
                    })
                    .insert(Header {
                        key: "ess-source-offset",
                        value: Some(offset.as_bytes()),
                    });
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.dlq_topic)
                    .payload(&letter.payload)
                    .headers(headers);
                if let Some(key) = &letter.key {
                    record = record.key(key);
                }
                match self.producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => {
                        metrics::counter!("ess_sink_dlq_total").increment(1);
                        tracing::warn!(
                            partition = letter.partition,
                            offset = letter.offset,
                            reason = %letter.reason,
                            "dead-lettered"
                        );
                        break;
                    }
                    Err((error, _)) => {
                        let delay = self.backoff(attempt);
                        attempt = attempt.saturating_add(1);
                        tracing::warn!("dead-letter produce failed, retry in {delay:?}: {error}");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        true
    }
}

/// `ess:{topic}:,{p},{p},:{pid}-{batch}[-s{shard}]:{from}-{to}`. Topic names cannot hold `:`
/// or `,`.
pub fn query_id(
    topic: &str,
    batch: &Batch,
    shard: Option<usize>,
    from: usize,
    to: usize,
) -> String {
    let mut id = format!("ess:{topic}:,");
    for p in batch.ranges.keys() {
        id.push_str(&p.to_string());
        id.push(',');
    }
    id.push_str(&format!(":{}-{}", std::process::id(), batch.id));
    if let Some(shard) = shard {
        id.push_str(&format!("-s{}", shard + 1));
    }
    id.push_str(&format!(":{from}-{to}"));
    id
}

/// The partitions a query id of [`query_id`] names, if it is one of `topic`'s.
pub fn query_id_partitions(topic: &str, id: &str) -> Option<Vec<i32>> {
    let rest = id
        .strip_prefix("ess:")?
        .strip_prefix(topic)?
        .strip_prefix(':')?;
    let list = rest.split(':').next()?;
    Some(
        list.split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect(),
    )
}

fn refused_row(
    block: &Block,
    row: usize,
    code: u32,
    error: &clickhouse::error::Error,
) -> DeadLetter {
    let bytes = block.row(row);
    let decoded = decode_row(bytes);
    let (partition, offset, payload, key) = match &decoded {
        Some(r) => (
            r.kafka_partition,
            r.kafka_offset,
            row_to_wire_json(r),
            Some(r.id.to_string().into_bytes()),
        ),
        None => (-1, -1, bytes.to_vec(), None),
    };
    DeadLetter {
        partition,
        offset,
        key,
        payload,
        reason: format!(
            "clickhouse refused the row ({} {code}): {error}",
            code_name(code)
        ),
    }
}

/// Takes sealed batches from `batches` and writes each in its own task, at most `inflight`
/// at once; a batch is taken off the queue only when a slot is free, so a full queue is what
/// the consumer sees as backpressure.
pub async fn dispatch(
    writer: Arc<Writer>,
    mut batches: mpsc::Receiver<Batch>,
    acks: std::sync::mpsc::Sender<Ack>,
    inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(inflight));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(batch) = batches.recv().await else {
            break;
        };
        let writer = writer.clone();
        let acks = acks.clone();
        tasks.spawn(async move {
            let ack = writer.write(batch).await;
            let _ = acks.send(ack);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_name_topic_and_partitions() {
        let batch = Batch {
            id: 7,
            generation: 1,
            parts: vec![],
            ingest_times: vec![],
            ranges: [(3, (0, 1)), (11, (5, 9))].into_iter().collect(),
            dead: vec![],
            store_time: 0,
        };
        let id = query_id("it_abc.events", &batch, None, 0, 10);
        assert_eq!(query_id_partitions("it_abc.events", &id), Some(vec![3, 11]));
        let shard_id = query_id("it_abc.events", &batch, Some(1), 0, 10);
        assert!(shard_id.contains("-s2:"), "{shard_id}");
        assert_eq!(
            query_id_partitions("it_abc.events", &shard_id),
            Some(vec![3, 11])
        );
        assert_eq!(query_id_partitions("it_abc.event", &id), None);
        assert_eq!(query_id_partitions("other", &id), None);
    }
}
