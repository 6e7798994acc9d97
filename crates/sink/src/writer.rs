//! The insert side: one task per batch (at most `inflight_inserts` at once), each inserting its
//! batch with retries until ClickHouse acknowledges it, splitting it when ClickHouse refuses
//! rows, and sending dead letters; then it reports back so the offsets can be committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{Semaphore, mpsc};

use crate::batch::{Batch, Block, DeadLetter};
use crate::classify::{Disposition, classify, code_name, error_code};
use crate::encode::{decode_row, row_to_wire_json};
use crate::lease::Lease;
use crate::nodes::{Node, Nodes};
use crate::query_id::query_id;
use crate::shard::Sharding;

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
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
    pub outcome: BatchOutcome,
}

/// Where and how inserts go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The nodes, each with the shard it takes parts for.
    pub nodes: Arc<Nodes>,
    /// Whether batches are split by shard (direct writes) or go whole to the Distributed
    /// table.
    pub direct: bool,
    /// `INSERT INTO db.table (cols) FORMAT RowBinary`.
    pub sql: String,
    /// The longest wait for a chunk of data to go out or for the server's answer.
    pub timeout: Duration,
}

/// What a [`Writer`] is made of.
#[allow(missing_debug_implementations)]
pub struct WriterParts {
    /// Where inserts go.
    pub target: Target,
    /// For dead letters.
    pub producer: FutureProducer,
    /// The events topic (query ids name it).
    pub topic: String,
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// The assignment generation.
    pub generation: Arc<AtomicU64>,
    /// The process's lease on its partitions.
    pub lease: Arc<Lease>,
    /// The row → shard mapping for direct writes.
    pub sharding: Option<Sharding>,
    /// Most months (table partitions) one insert may touch (`sink.max_partitions_per_insert`).
    pub max_months: usize,
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
    /// Whether the process ran recently enough to still own its partitions.
    lease: Arc<Lease>,
    /// The row → shard mapping for direct writes.
    sharding: Option<Sharding>,
    /// Most months (table partitions) one insert may touch.
    max_months: usize,
    /// Per shard, where the rotation over its replicas stands (one counter for all shards
    /// would hand each shard the same replica every time when batches have as many parts as
    /// shards have replicas).
    next_node: Vec<AtomicU64>,
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
    pub fn new(parts: WriterParts) -> Self {
        let shards = parts.sharding.as_ref().map_or(1, Sharding::shards);
        Self {
            target: parts.target,
            producer: parts.producer,
            topic: parts.topic,
            dlq_topic: parts.dlq_topic,
            initial_backoff: parts.initial_backoff,
            max_backoff: parts.max_backoff,
            generation: parts.generation,
            lease: parts.lease,
            sharding: parts.sharding,
            max_months: parts.max_months,
            next_node: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How the poll loop must split rows by shard as it encodes them (direct writes only).
    pub fn sharding(&self) -> Option<Sharding> {
        self.sharding.clone()
    }

    fn rotate(&self, shard: usize) -> u64 {
        self.next_node
            .get(shard)
            .map_or(0, |n| n.fetch_add(1, Ordering::Relaxed))
    }

    fn current(&self, batch: &Batch) -> bool {
        self.generation.load(Ordering::SeqCst) == batch.generation
    }

    /// Whether `batch` may be written now: waits while the lease is stale (the process just
    /// came back from a pause and the watch thread has not ticked yet), then answers whether
    /// the batch still belongs to the current generation.
    async fn may_write(&self, batch: &Batch) -> bool {
        loop {
            if !self.current(batch) {
                return false;
            }
            if self.lease.fresh() {
                // The generation is bumped before the lease is renewed: read it after.
                return self.current(batch);
            }
            tokio::time::sleep(crate::lease::TICK / 5).await;
        }
    }

    /// Whether a started insert of `batch` may go on (checked between chunks).
    fn still_mine(&self, batch: &Batch) -> bool {
        self.lease.fresh() && self.current(batch)
    }

    /// Stores one batch: rows (each shard's part concurrently), then dead letters.
    pub async fn write(&self, batch: Batch) -> Ack {
        let started = Instant::now();
        let direct = self.target.direct;
        let parts: Vec<(usize, &Block)> = batch
            .parts
            .iter()
            .enumerate()
            .filter(|(_, block)| !block.is_empty())
            .collect();
        let written = futures::future::join_all(
            parts
                .iter()
                .map(|&(shard, block)| self.insert_block(&batch, shard, direct, block)),
        )
        .await;
        let dead: Option<Vec<DeadLetter>> =
            written.into_iter().try_fold(Vec::new(), |mut all, part| {
                all.extend(part?);
                Some(all)
            });
        let outcome = match dead {
            Some(dead) if self.send_dead(&batch, batch.dead.iter().chain(&dead)).await => {
                BatchOutcome::Stored
            }
            _ => BatchOutcome::Abandoned,
        };
        if outcome == BatchOutcome::Stored {
            let now = ess_core::wire::Millis::now().0;
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
        shard: usize,
        direct: bool,
        block: &Block,
    ) -> Option<Vec<DeadLetter>> {
        let mut dead = Vec::new();
        let direct = direct.then_some(shard);
        if block.spans_more_months_than(self.max_months) {
            // The table is partitioned by month and current servers refuse a block touching
            // more than `max_partitions_per_insert_block` partitions.
            let blocks = block.by_months(self.max_months);
            metrics::counter!("ess_sink_month_splits_total").increment(1);
            tracing::info!(
                batch = batch.id,
                shard,
                rows = block.len(),
                blocks = blocks.len(),
                "rows span more than {} months: inserting them in blocks by month",
                self.max_months
            );
            for (i, part) in blocks.iter().enumerate() {
                let name = (direct, Some(i));
                if !self.insert_range(batch, shard, name, part, &mut dead).await {
                    return None;
                }
            }
            return Some(dead);
        }
        self.insert_range(batch, shard, (direct, None), block, &mut dead)
            .await
            .then_some(dead)
    }

    /// Inserts `block`, retrying transient failures and bisecting refused data down to
    /// single rows, which become dead letters. Returns false if abandoned.
    async fn insert_range(
        &self,
        batch: &Batch,
        shard: usize,
        name: (Option<usize>, Option<usize>),
        block: &Block,
        dead: &mut Vec<DeadLetter>,
    ) -> bool {
        // An explicit stack instead of recursion: (from, to) row ranges still to insert.
        let mut todo = vec![(0, block.len())];
        while let Some((from, to)) = todo.pop() {
            let data = block.slice(from, to);
            let query_id = query_id(&self.topic, batch, name, from, to);
            let mut attempt = 0u32;
            let mut tried = 0usize;
            loop {
                if !self.may_write(batch).await {
                    return false;
                }
                let started = Instant::now();
                let node = self.target.nodes.pick(shard, self.rotate(shard));
                let error = match self
                    .insert_once(batch, &node, &query_id, data.clone())
                    .await
                {
                    Ok(()) => {
                        metrics::histogram!("ess_sink_insert_seconds")
                            .record(started.elapsed().as_secs_f64());
                        break;
                    }
                    Err(None) => return false,
                    Err(Some(error)) => error,
                };
                match classify(&error) {
                    Disposition::Retry => {
                        metrics::counter!("ess_sink_insert_retries_total").increment(1);
                        tried += 1;
                        let healthy = node.fail(&error);
                        // The identical bytes go to another replica of the shard right away
                        // when one is not suspect (block deduplication holds across
                        // replicas); with none left, back off.
                        let other = self.target.nodes.has_healthy(shard);
                        let delay = if other && tried < 2 * self.target.nodes.count(shard) {
                            metrics::counter!("ess_sink_failovers_total").increment(1);
                            Duration::ZERO
                        } else {
                            let d = self.backoff(attempt);
                            attempt = attempt.saturating_add(1);
                            d
                        };
                        tracing::warn!(
                            batch = batch.id, shard, rows = to - from, node = %node.url, attempt,
                            node_suspect = !healthy, retry_in = ?delay,
                            "insert failed, will retry: {error}"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Disposition::Split if to - from > 1 => {
                        metrics::counter!("ess_sink_partition_splits_total").increment(1);
                        tracing::warn!(
                            batch = batch.id, shard, rows = to - from, node = %node.url,
                            "the block touches more partitions than the server takes, \
                             splitting: {error}"
                        );
                        let mid = from + (to - from) / 2;
                        todo.push((mid, to));
                        todo.push((from, mid));
                        break;
                    }
                    Disposition::BadData | Disposition::Split if to - from == 1 => {
                        let code = error_code(&error).unwrap_or(0);
                        dead.push(refused_row(block, from, code, &error));
                        break;
                    }
                    Disposition::BadData | Disposition::Split => {
                        tracing::warn!(
                            batch = batch.id, shard, rows = to - from, node = %node.url,
                            "ClickHouse refused the data, splitting: {error}"
                        );
                        let mid = from + (to - from) / 2;
                        todo.push((mid, to));
                        todo.push((from, mid));
                        break;
                    }
                }
            }
        }
        true
    }

    /// One INSERT of `data` on `node`. The query id names the batch's topic and partitions so
    /// a new owner of a partition can wait for an insert still running on the server (see
    /// [`crate::reconcile`]); retries reuse it, so one server refuses to run two attempts of
    /// one block at once. Gives up (`Err(None)`) between chunks when the batch is no longer
    /// this process's to write; every chunk and the answer wait at most the target's timeout.
    async fn insert_once(
        &self,
        batch: &Batch,
        node: &Node,
        query_id: &str,
        data: Bytes,
    ) -> Result<(), Option<clickhouse::error::Error>> {
        let timeout = Some(self.target.timeout);
        let mut insert = node
            .client
            .clone()
            .with_setting("query_id", query_id)
            .insert_formatted_with(self.target.sql.clone())
            .with_timeouts(timeout, timeout);
        const CHUNK: usize = 1 << 20;
        let mut at = 0;
        while at < data.len() {
            if !self.still_mine(batch) {
                // Dropping an unfinished insert aborts its request: the server never sees
                // the end of the data and stores nothing.
                drop(insert);
                return Err(None);
            }
            let end = (at + CHUNK).min(data.len());
            insert.send(data.slice(at..end)).await.map_err(Some)?;
            at = end;
        }
        if !self.still_mine(batch) {
            drop(insert);
            return Err(None);
        }
        insert.end().await.map_err(Some)
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
                if !self.may_write(batch).await {
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
