//! The poll loop: one thread that owns the Kafka consumer, decodes and batches messages,
//! hands sealed batches to the writer through a bounded queue, commits what the writer
//! acknowledged, and handles rebalances. It never waits for ClickHouse: when the queue is full
//! it pauses its partitions and keeps polling, so it stays in the group.
//!
//! Rebalance callbacks run inside `poll` on this thread. On revoke the loop cuts the open
//! batch, waits (at most `revoke_timeout`) until every batch is stored, commits synchronously
//! and only then lets the partitions go — unless the assignment was lost (the group expired
//! this member) or the process stalled ([`crate::lease`]): then everything in flight is
//! abandoned at once. On assign it pauses the new partitions until [`crate::reconcile`] has
//! said which of their offsets past the committed one are stored; after a stall it does the
//! same for the partitions it still holds, reading them again from their committed offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use ess_core::wire::{Millis, WireEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::batch::{Batch, BatchLimits, Builder, DeadLetter};
use crate::lease::Lease;
use crate::monitoring::Health;
use crate::offsets::Tracker;
use crate::reconcile::{Held, Reconciler, Stored};
use crate::shard::Sharding;
use crate::writer::{Ack, BatchOutcome};

/// Everything the poll loop needs.
#[derive(Debug)]
pub struct LoopConfig {
    /// The consumer's librdkafka settings.
    pub consumer: rdkafka::ClientConfig,
    /// The events topic.
    pub topic: String,
    /// Batch limits.
    pub limits: BatchLimits,
    /// With direct writes, how rows are split by shard as they are encoded.
    pub sharding: Option<Sharding>,
    /// Longest wait on revoke.
    pub revoke_timeout: Duration,
    /// Longest wait on shutdown.
    pub shutdown_timeout: Duration,
}

/// What the poll loop shares with the rest of the sink.
#[derive(Debug)]
pub struct Links {
    /// Sealed batches to the writer.
    pub batches: mpsc::Sender<Batch>,
    /// The writer's reports.
    pub acks: std_mpsc::Receiver<Ack>,
    /// The assignment generation.
    pub generation: Arc<AtomicU64>,
    /// The process's lease on its partitions.
    pub lease: Arc<Lease>,
    /// Reconciliation on assignment.
    pub reconciler: Reconciler,
    /// Where reconciliation runs.
    pub runtime: tokio::runtime::Handle,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    /// Set when the sink must stop.
    pub stop: Arc<AtomicBool>,
}

enum Part {
    /// Paused until reconciliation answers; reading starts again at `from` (the committed
    /// offset), seeking there first when `seek` (the partition was read past it before).
    Reconciling {
        from: i64,
        seek: bool,
    },
    Ready(Stored),
}

struct State {
    topic: String,
    builder: Builder,
    pending: VecDeque<Batch>,
    batches: mpsc::Sender<Batch>,
    acks: std_mpsc::Receiver<Ack>,
    tracker: Tracker,
    parts: BTreeMap<i32, Part>,
    /// Whether the group gave this member an assignment (possibly empty) since the last revoke.
    assigned: bool,
    generation: Arc<AtomicU64>,
    epoch: u64,
    reconciled_tx: std_mpsc::Sender<(u64, BTreeMap<i32, Stored>)>,
    reconciled_rx: std_mpsc::Receiver<(u64, BTreeMap<i32, Stored>)>,
    reconciler: Reconciler,
    runtime: tokio::runtime::Handle,
    paused: bool,
    /// Whether a row of another event at a read offset was reported (once per process).
    warned_reuse: bool,
    health: Arc<Health>,
    revoke_timeout: Duration,
    lease: Arc<Lease>,
}

/// The consumer context: rebalance callbacks and statistics.
pub struct SinkContext {
    state: Arc<Mutex<State>>,
    topic: String,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("topic", &self.topic)
            .finish()
    }
}

type Kafka = BaseConsumer<SinkContext>;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (p, part) in &topic.partitions {
            if *p >= 0 && part.consumer_lag >= 0 {
                metrics::gauge!("ess_sink_lag", "partition" => p.to_string())
                    .set(part.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &Kafka, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            lock(&self.state).revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &Kafka, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.state).assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!("offset commit failed (the next commit carries it): {e}");
        }
    }
}

impl State {
    fn seal(&mut self) {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(batch) = self.builder.seal(Millis::now().0, generation) {
            self.tracker.cut(batch.id, &batch.ranges);
            self.pending.push_back(batch);
        }
    }

    /// After a stall (see [`crate::lease`]) the group may have given this member's partitions
    /// away: everything read before it was abandoned (the generation moved on), so throw it
    /// away and reconcile the partitions librdkafka still says are ours, reading them again
    /// from their committed offsets. If the group did move them, the revoke arriving next
    /// supersedes this. Returns whether there was a stall.
    fn check_stall(&mut self, consumer: &Kafka) -> bool {
        if !self.lease.take_stall() {
            return false;
        }
        self.pending.clear();
        self.builder.discard();
        self.tracker.forget_all();
        self.parts.clear();
        self.epoch += 1;
        self.health.ready.store(false, Ordering::Relaxed);
        let parts: Vec<i32> = consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        tracing::warn!(?parts, "after a stall: reconciling the assignment again");
        if !parts.is_empty() {
            self.reconcile(consumer, &parts, true);
        }
        true
    }

    /// Moves sealed batches into the writer's queue while it has room.
    fn hand_off(&mut self) -> bool {
        while let Some(batch) = self.pending.pop_front() {
            match self.batches.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    self.pending.push_front(batch);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("the writer stopped; dropping a batch (it is not committed)");
                    return false;
                }
            }
        }
        true
    }

    fn apply(&mut self, ack: Ack, moved: &mut BTreeMap<i32, i64>) {
        if ack.outcome == BatchOutcome::Stored {
            for (p, next) in self.tracker.stored(ack.batch, &ack.ranges) {
                if self.parts.contains_key(&p) {
                    moved.insert(p, next);
                }
            }
        }
    }

    fn commit(&self, consumer: &Kafka, offsets: &BTreeMap<i32, i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in offsets {
            if tpl
                .add_partition_offset(&self.topic, p, Offset::Offset(next))
                .is_err()
            {
                return;
            }
        }
        metrics::counter!("ess_sink_commits_total").increment(1);
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!("offset commit failed (the next commit carries it): {e}");
        }
    }

    fn drain_acks(&mut self, consumer: &Kafka) {
        let mut moved = BTreeMap::new();
        while let Ok(ack) = self.acks.try_recv() {
            self.apply(ack, &mut moved);
        }
        self.commit(consumer, &moved, CommitMode::Async);
    }

    /// Cuts the open batch and waits until everything cut is stored, or `deadline`. Commits
    /// synchronously what was stored. Returns whether nothing is left in flight.
    fn flush(&mut self, consumer: &Kafka, deadline: Instant) -> bool {
        self.seal();
        let mut moved = BTreeMap::new();
        let done = loop {
            self.hand_off();
            while let Ok(ack) = self.acks.try_recv() {
                self.apply(ack, &mut moved);
            }
            if self.pending.is_empty() && self.tracker.in_flight() == 0 {
                break true;
            }
            if self.batches.is_closed() {
                break false;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            if let Ok(ack) = self.acks.recv_timeout(wait) {
                self.apply(ack, &mut moved);
            }
        };
        let all: BTreeMap<i32, i64> = self
            .tracker
            .committable()
            .iter()
            .filter(|(p, _)| self.parts.contains_key(p))
            .map(|(&p, &o)| (p, o))
            .collect();
        self.commit(consumer, &all, CommitMode::Sync);
        done
    }

    fn revoke(&mut self, consumer: &Kafka, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if !revoked.is_empty() {
            self.health.revocations.fetch_add(1, Ordering::Relaxed);
        }
        self.health.ready.store(false, Ordering::Relaxed);
        let stalled = self.lease.take_stall();
        if consumer.assignment_lost() || stalled {
            // Another member may own these partitions already: write nothing more for them
            // (after a stall the generation has moved on already).
            self.generation.fetch_add(1, Ordering::SeqCst);
            metrics::counter!("ess_sink_assignments_lost_total").increment(1);
            tracing::warn!(
                ?revoked,
                stalled,
                "assignment lost (the group may have expired this member); abandoning \
                 in-flight batches, the next owner reconciles them"
            );
        } else {
            tracing::info!(
                ?revoked,
                "partitions revoked; storing and committing in-flight batches"
            );
            let done = self.flush(consumer, Instant::now() + self.revoke_timeout);
            if !done {
                metrics::counter!("ess_sink_revoke_timeouts_total").increment(1);
                tracing::warn!(
                    "in-flight batches not stored within {:?}; abandoning them (the next owner \
                     reconciles)",
                    self.revoke_timeout
                );
            }
        }
        // Whatever is still in flight belongs to the old assignment: stop retrying it.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pending.clear();
        self.builder.discard();
        self.tracker.forget_all();
        self.parts.clear();
        self.assigned = false;
        self.paused = false;
        self.epoch += 1;
        metrics::gauge!("ess_sink_assigned_partitions").set(0.0);
        metrics::gauge!("ess_sink_paused").set(0.0);
        self.health.assigned.store(0, Ordering::Relaxed);
    }

    fn assign(&mut self, consumer: &Kafka, tpl: &TopicPartitionList) {
        self.epoch += 1;
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        tracing::info!(?parts, "partitions assigned; reconciling with ClickHouse");
        self.health.assignments.fetch_add(1, Ordering::Relaxed);
        self.assigned = true;
        metrics::gauge!("ess_sink_assigned_partitions").set(parts.len() as f64);
        self.health
            .assigned
            .store(parts.len() as u64, Ordering::Relaxed);
        // A stall before the assignment leaves nothing of it to throw away.
        let _ = self.lease.take_stall();
        if parts.is_empty() {
            self.health.ready.store(true, Ordering::Relaxed);
            return;
        }
        self.reconcile(consumer, &parts, false);
    }

    /// Pauses `parts`, reads their committed offsets and reconciles them in the background.
    fn reconcile(&mut self, consumer: &Kafka, parts: &[i32], seek: bool) {
        let mut tpl = TopicPartitionList::new();
        for &p in parts {
            tpl.add_partition(&self.topic, p);
        }
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!("pause for reconciliation failed: {e}");
        }
        let mut from = BTreeMap::new();
        match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(committed) => {
                for &p in parts {
                    let offset = match committed.find_partition(&self.topic, p).map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o,
                        _ => 0,
                    };
                    from.insert(p, offset);
                }
            }
            Err(e) => {
                // Reconciling from 0 finds a superset of what matters: still exact.
                tracing::warn!("committed offsets unavailable ({e}); reconciling from offset 0");
                from = parts.iter().map(|&p| (p, 0)).collect();
            }
        }
        for (&p, &offset) in &from {
            self.parts
                .insert(p, Part::Reconciling { from: offset, seek });
        }
        let epoch = self.epoch;
        let reconciler = self.reconciler.clone();
        let tx = self.reconciled_tx.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let stored = reconciler.run(&from).await;
            let found: usize = stored.values().map(Stored::len).sum();
            tracing::info!(
                ?from, already_stored = found, took = ?started.elapsed(),
                "reconciled"
            );
            let _ = tx.send((epoch, stored));
        });
    }

    fn take_reconciled(&mut self, consumer: &Kafka) {
        while let Ok((epoch, stored)) = self.reconciled_rx.try_recv() {
            if epoch != self.epoch {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for (p, s) in stored {
                if let Some(part @ Part::Reconciling { .. }) = self.parts.get_mut(&p) {
                    if let Part::Reconciling { from, seek: true } = *part
                        && let Err(e) =
                            consumer.seek(&self.topic, p, Offset::Offset(from), Duration::ZERO)
                    {
                        tracing::warn!(partition = p, "seek to the committed offset failed: {e}");
                    }
                    *part = Part::Ready(s);
                    tpl.add_partition(&self.topic, p);
                }
            }
            if !self.paused
                && tpl.count() > 0
                && let Err(e) = consumer.resume(&tpl)
            {
                tracing::warn!("resume after reconciliation failed: {e}");
            }
        }
        // Not ready before the group has answered: `all` over no partitions would say yes.
        let ready = self.assigned && self.parts.values().all(|p| matches!(p, Part::Ready(_)));
        self.health.ready.store(ready, Ordering::Relaxed);
    }

    fn ready_partitions(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&p, part) in &self.parts {
            if matches!(part, Part::Ready(_)) {
                tpl.add_partition(&self.topic, p);
            }
        }
        tpl
    }

    /// Pauses while sealed batches wait for room in the writer's queue; resumes when not.
    fn backpressure(&mut self, consumer: &Kafka) {
        let full = !self.hand_off();
        if full != self.paused {
            let tpl = self.ready_partitions();
            let result = if full {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = result {
                tracing::warn!("pause/resume failed: {e}");
            }
            self.paused = full;
            metrics::gauge!("ess_sink_paused").set(if full { 1.0 } else { 0.0 });
        }
    }

    /// A message is stored although ClickHouse holds another event at its offset.
    fn offset_reused(&mut self, partition: i32, offset: i64) {
        metrics::counter!("ess_sink_offset_reused_total").increment(1);
        if !self.warned_reuse {
            self.warned_reuse = true;
            tracing::warn!(
                partition,
                offset,
                "ClickHouse holds another event at this offset (the topic was created again?); \
                 storing this one too (further cases count in ess_sink_offset_reused_total)"
            );
        }
    }

    fn on_message(&mut self, consumer: &Kafka, msg: &BorrowedMessage<'_>, now: Instant) {
        // The generation before the stall check: a stall marked after this load has its flag
        // set before its bump, so either the check sees it or the batch is of the old
        // generation, which the writer abandons.
        let generation = self.generation.load(Ordering::SeqCst);
        if self.check_stall(consumer) {
            return;
        }
        self.builder.note_generation(generation);
        let (p, offset) = (msg.partition(), msg.offset());
        match self.parts.get_mut(&p) {
            Some(Part::Ready(stored)) => {
                let payload = msg.payload().unwrap_or_default();
                let decoded = WireEvent::from_json(payload);
                let held = decoded
                    .as_ref()
                    .map_or(Held::Nothing, |e| stored.lookup(offset, e.id));
                if offset % 4096 == 0 {
                    stored.forget_below(offset);
                }
                match decoded {
                    Ok(_) if held == Held::This => {
                        metrics::counter!("ess_sink_skipped_total").increment(1);
                        self.builder.push_skip(p, offset, now);
                    }
                    Ok(event) => {
                        if held == Held::Other {
                            self.offset_reused(p, offset);
                        }
                        self.builder.push_event(&event, p, offset, now);
                    }
                    Err(e) => self.builder.push_dead(
                        DeadLetter {
                            partition: p,
                            offset,
                            key: msg.key().map(<[u8]>::to_vec),
                            payload: payload.to_vec(),
                            reason: format!("undecodable event: {e}"),
                        },
                        now,
                    ),
                }
            }
            Some(&mut Part::Reconciling { from, .. }) => {
                // Fetched before the pause took hold: read again from the committed offset
                // once reconciled.
                if let Err(e) =
                    consumer.seek(&self.topic, p, Offset::Offset(from), Duration::from_secs(1))
                {
                    tracing::warn!(partition = p, "seek back failed: {e}");
                }
            }
            None => {}
        }
        if self.builder.is_full() {
            self.seal();
            self.backpressure(consumer);
            // Batches only ever wait in `pending` while paused; a second full one means the
            // pause did not hold, so wait for room rather than grow without bound.
            while self.pending.len() > 1 {
                if let Some(batch) = self.pending.pop_front()
                    && self.batches.blocking_send(batch).is_err()
                {
                    break;
                }
            }
        }
    }
}

/// Builds the consumer, runs the loop until `stop` is set, stores and commits what is in
/// flight, then leaves the group. Blocking: run it on its own thread.
pub fn poll_loop(config: LoopConfig, links: Links) -> anyhow::Result<()> {
    let Links {
        batches,
        acks,
        generation,
        lease,
        reconciler,
        runtime,
        health,
        stop,
    } = links;
    let (reconciled_tx, reconciled_rx) = std_mpsc::channel();
    let state = Arc::new(Mutex::new(State {
        topic: config.topic.clone(),
        builder: Builder::new(config.limits, config.sharding.clone()),
        pending: VecDeque::new(),
        batches,
        acks,
        tracker: Tracker::default(),
        parts: BTreeMap::new(),
        assigned: false,
        generation,
        epoch: 0,
        reconciled_tx,
        reconciled_rx,
        reconciler,
        runtime,
        paused: false,
        warned_reuse: false,
        health: health.clone(),
        revoke_timeout: config.revoke_timeout,
        lease,
    }));
    let context = SinkContext {
        state: state.clone(),
        topic: config.topic.clone(),
    };
    let consumer: Kafka = config.consumer.create_with_context(context)?;
    let _ = consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(10));
    consumer.subscribe(&[&config.topic])?;
    tracing::info!(topic = %config.topic, "sink consuming");

    // The writer's queue closes only when the runtime goes away under us: stop then too.
    while !stop.load(Ordering::SeqCst) && !lock(&state).batches.is_closed() {
        health.beat();
        let timeout = {
            let mut s = lock(&state);
            s.check_stall(&consumer);
            s.drain_acks(&consumer);
            s.take_reconciled(&consumer);
            s.backpressure(&consumer);
            let now = Instant::now();
            if s.builder.is_due(now) {
                s.seal();
                s.backpressure(&consumer);
            }
            s.builder.deadline().map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            })
        };
        // Up to a few hundred messages per lock; the lock is never held inside poll, where
        // the rebalance callbacks take it.
        let mut timeout = timeout;
        for _ in 0..512 {
            match consumer.poll(timeout) {
                Some(Ok(msg)) => {
                    let mut s = lock(&state);
                    s.on_message(&consumer, &msg, Instant::now());
                }
                Some(Err(e)) => {
                    tracing::warn!("consumer: {e}");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
    }

    tracing::info!("sink stopping: storing and committing in-flight batches");
    {
        let mut s = lock(&state);
        s.health.ready.store(false, Ordering::Relaxed);
        if !s.flush(&consumer, Instant::now() + config.shutdown_timeout) {
            tracing::warn!(
                "in-flight batches not stored within {:?}; they stay uncommitted and are \
                 read again by the next owner",
                config.shutdown_timeout
            );
        }
        s.generation.fetch_add(1, Ordering::SeqCst);
    }
    // Leaving the group: close runs the revoke callback, which finds nothing in flight.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        consumer.poll(Duration::from_millis(50));
        if consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(true)
        {
            break;
        }
    }
    drop(consumer);
    tracing::info!("sink left the group");
    Ok(())
}
