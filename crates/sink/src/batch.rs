//! Batches: rows encoded as they are read, cut by rows, bytes or age, each knowing the offset
//! range of every partition it covers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ess_core::wire::WireEvent;

use crate::encode::encode_row;
use crate::shard::Sharding;

/// A message the sink will not store, on its way to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The message key, when it had one.
    pub key: Option<Vec<u8>>,
    /// The message value (or the refused row as canonical JSON).
    pub payload: Vec<u8>,
    /// Why it was refused.
    pub reason: String,
}

/// RowBinary rows and where each starts: a whole batch, or the part of one bound for a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// Encoded rows.
    pub data: bytes::Bytes,
    /// Start of each row in `data`.
    pub starts: Vec<u32>,
    /// The month (UTC) of each row's event time, as `year * 12 + month - 1`: the table is
    /// partitioned by month.
    pub months: Vec<i32>,
}

impl Block {
    /// The number of distinct months the rows fall in.
    pub fn month_count(&self) -> usize {
        let mut months = self.months.clone();
        months.sort_unstable();
        months.dedup();
        months.len()
    }

    /// Whether the rows fall in more than `max` distinct months (cheap for the usual one or
    /// two).
    pub fn spans_more_months_than(&self, max: usize) -> bool {
        let mut seen: Vec<i32> = Vec::new();
        let mut last = None;
        for &m in &self.months {
            if last == Some(m) {
                continue;
            }
            last = Some(m);
            if !seen.contains(&m) {
                seen.push(m);
                if seen.len() > max {
                    return true;
                }
            }
        }
        false
    }

    /// This block as blocks of rows from at most `max` months each: months in ascending
    /// order, `max` at a time, each block's rows in their original order. The same block
    /// always splits the same way, so a retry resends identical blocks (which replicated
    /// deduplication drops when the first attempt was stored). One block, this one, when it
    /// spans no more than `max` months.
    pub fn by_months(&self, max: usize) -> Vec<Block> {
        let mut months = self.months.clone();
        months.sort_unstable();
        months.dedup();
        let max = max.max(1);
        if months.len() <= max {
            return vec![self.clone()];
        }
        months
            .chunks(max)
            .map(|group| {
                let (lo, hi) = (group[0], group[group.len() - 1]);
                let mut data = Vec::new();
                let mut out = Block::default();
                for i in 0..self.len() {
                    let month = self.months[i];
                    if (lo..=hi).contains(&month) {
                        out.starts.push(data.len() as u32);
                        out.months.push(month);
                        data.extend_from_slice(self.row(i));
                    }
                }
                out.data = data.into();
                out
            })
            .collect()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The bytes of rows `from..to`.
    pub fn slice(&self, from: usize, to: usize) -> bytes::Bytes {
        self.data.slice(self.span(from, to))
    }

    /// The bytes of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[self.span(i, i + 1)]
    }

    fn span(&self, from: usize, to: usize) -> std::ops::Range<usize> {
        let start = self.starts[from] as usize;
        let end = self.starts.get(to).map_or(self.data.len(), |&e| e as usize);
        start..end
    }
}

/// A sealed batch: RowBinary rows plus what is needed to commit, split and dead-letter them.
#[derive(Debug)]
pub struct Batch {
    /// Sequence number within the process.
    pub id: u64,
    /// The assignment generation it was read under; a batch from an older generation is
    /// abandoned rather than retried.
    pub generation: u64,
    /// The rows in the order they were read: one block per shard (index = shard) when the
    /// sink writes to the shards, else one block.
    pub parts: Vec<Block>,
    /// `ingest_time` of each row (ms), for the end-to-end latency histogram.
    pub ingest_times: Vec<i64>,
    /// Per partition, the first and last offset consumed into this batch (inclusive);
    /// offsets in between that hold no row were dead-lettered or found already stored.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Messages that go to the dead-letter topic.
    pub dead: Vec<DeadLetter>,
    /// The rows' `store_time` (ms), written into every row when the batch was sealed.
    pub store_time: i64,
}

impl Batch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(Block::len).sum()
    }

    /// Encoded bytes.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }
}

/// When a batch is cut.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Rows.
    pub rows: usize,
    /// Encoded bytes.
    pub bytes: usize,
    /// Age of the first message.
    pub max_wait: Duration,
}

/// The rows of the open batch bound for one shard.
#[derive(Debug, Default)]
struct OpenPart {
    data: Vec<u8>,
    row_starts: Vec<u32>,
    /// Where each row's `store_time` goes.
    stamp_at: Vec<u32>,
    months: Vec<i32>,
}

#[derive(Debug, Default)]
struct Open {
    /// The assignment generation when its first message was read.
    generation: Option<u64>,
    parts: Vec<OpenPart>,
    rows: usize,
    bytes: usize,
    ingest_times: Vec<i64>,
    ranges: BTreeMap<i32, (i64, i64)>,
    dead: Vec<DeadLetter>,
    opened: Option<Instant>,
}

/// Builds batches one message at a time.
#[derive(Debug)]
pub struct Builder {
    limits: BatchLimits,
    /// With direct writes, rows are encoded straight into their shard's part.
    sharding: Option<Sharding>,
    open: Open,
    next_id: u64,
}

impl Builder {
    /// An empty builder; with `sharding`, each batch has one part per shard.
    pub fn new(limits: BatchLimits, sharding: Option<Sharding>) -> Self {
        let mut builder = Self {
            limits,
            sharding,
            open: Open::default(),
            next_id: 0,
        };
        builder.open = builder.empty();
        builder
    }

    fn empty(&self) -> Open {
        let parts = self.sharding.as_ref().map_or(1, Sharding::shards);
        Open {
            parts: (0..parts).map(|_| OpenPart::default()).collect(),
            ..Open::default()
        }
    }

    fn touch(&mut self, partition: i32, offset: i64, now: Instant) {
        self.open
            .ranges
            .entry(partition)
            .and_modify(|r| r.1 = offset)
            .or_insert((offset, offset));
        self.open.opened.get_or_insert(now);
    }

    /// Adds a decoded event read at `partition`/`offset`.
    pub fn push_event(&mut self, event: &WireEvent<'_>, partition: i32, offset: i64, now: Instant) {
        let shard = self.sharding.as_ref().map_or(0, |s| s.shard_of(event.id));
        let open = &mut self.open;
        let part = &mut open.parts[shard];
        let start = part.data.len();
        let stamp = encode_row(&mut part.data, event, 0, partition, offset);
        part.row_starts.push(start as u32);
        part.stamp_at.push(stamp as u32);
        part.months.push(month_of(event.timestamp.0));
        open.rows += 1;
        open.bytes += part.data.len() - start;
        open.ingest_times.push(event.ingest_time.0);
        self.touch(partition, offset, now);
    }

    /// The assignment generation messages are read under now; the open batch keeps the one
    /// its first message was read under.
    pub fn note_generation(&mut self, generation: u64) {
        self.open.generation.get_or_insert(generation);
    }

    /// Records an offset that produces no row (already stored, or a tombstone).
    pub fn push_skip(&mut self, partition: i32, offset: i64, now: Instant) {
        self.touch(partition, offset, now);
    }

    /// Adds a message for the dead-letter topic.
    pub fn push_dead(&mut self, dead: DeadLetter, now: Instant) {
        let (partition, offset) = (dead.partition, dead.offset);
        self.open.dead.push(dead);
        self.touch(partition, offset, now);
    }

    /// Whether anything was read since the last seal.
    pub fn is_empty(&self) -> bool {
        self.open.ranges.is_empty()
    }

    /// Encoded bytes so far.
    pub fn bytes(&self) -> usize {
        self.open.bytes
    }

    /// Whether the rows or bytes limit is reached.
    pub fn is_full(&self) -> bool {
        self.open.rows >= self.limits.rows
            || self.open.bytes >= self.limits.bytes
            || self.open.dead.len() >= self.limits.rows
    }

    /// When the open batch must be cut at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.opened.map(|t| t + self.limits.max_wait)
    }

    /// Whether the open batch should be cut now.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.is_empty() && (self.is_full() || self.deadline().is_some_and(|d| now >= d))
    }

    /// Cuts the open batch, stamping `store_time` (ms) into every row. The batch belongs to
    /// the generation noted for its first message, else `generation`.
    pub fn seal(&mut self, store_time: i64, generation: u64) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        let fresh = self.empty();
        let open = std::mem::replace(&mut self.open, fresh);
        let stamp = store_time.to_le_bytes();
        let parts = open
            .parts
            .into_iter()
            .map(|mut part| {
                for &at in &part.stamp_at {
                    let at = at as usize;
                    part.data[at..at + 8].copy_from_slice(&stamp);
                }
                Block {
                    data: bytes::Bytes::from(part.data),
                    starts: part.row_starts,
                    months: part.months,
                }
            })
            .collect();
        self.next_id += 1;
        Some(Batch {
            id: self.next_id,
            generation: open.generation.unwrap_or(generation),
            parts,
            ingest_times: open.ingest_times,
            ranges: open.ranges,
            dead: open.dead,
            store_time,
        })
    }

    /// Drops the open batch (its partitions were revoked before it was cut).
    pub fn discard(&mut self) {
        self.open = self.empty();
    }
}

/// The UTC month of `ms` since the epoch as `year * 12 + month - 1` (the proleptic Gregorian
/// calendar, as ClickHouse's `toYYYYMM` in UTC).
pub fn month_of(ms: i64) -> i32 {
    // Howard Hinnant's days → civil date.
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year * 12 + month - 1) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::decode_row;

    fn event_json(i: usize, props_len: usize) -> Vec<u8> {
        format!(
            r#"{{"id":"{}","type":"t","source":"s","timestamp":"2026-11-24T08:00:00.{:03}Z","ingest_time":"2026-11-24T08:00:01.000Z","properties":{{"p":"{}"}}}}"#,
            uuid::Uuid::new_v4(),
            i % 1000,
            "x".repeat(props_len)
        )
        .into_bytes()
    }

    fn limits(rows: usize) -> BatchLimits {
        BatchLimits {
            rows,
            bytes: 1 << 20,
            max_wait: Duration::from_millis(500),
        }
    }

    #[test]
    fn rows_are_stamped_and_split_at_row_boundaries() {
        let mut b = Builder::new(limits(10), None);
        let now = Instant::now();
        for (i, len) in [0, 200, 5, 130].into_iter().enumerate() {
            let json = event_json(i, len);
            let e = WireEvent::from_json(&json).unwrap();
            b.push_event(&e, 2, 100 + i as i64, now);
        }
        b.push_skip(2, 104, now);
        b.push_skip(5, 7, now);
        let batch = b.seal(1_764_000_000_777, 1).unwrap();
        assert_eq!(batch.rows(), 4);
        assert_eq!(batch.ranges[&2], (100, 104));
        assert_eq!(batch.ranges[&5], (7, 7));
        for i in 0..4 {
            let row = decode_row(&batch.parts[0].slice(i, i + 1)).unwrap();
            assert_eq!(row.store_time, 1_764_000_000_777);
            assert_eq!(row.kafka_offset, 100 + i as i64);
        }
        assert_eq!(batch.parts[0].slice(0, 4), batch.parts[0].data);
        assert_eq!(batch.parts[0].row(1), &batch.parts[0].slice(1, 2)[..]);
        assert!(b.is_empty() && b.seal(0, 1).is_none());
    }

    #[test]
    fn with_sharding_every_row_lands_in_its_shard_part_in_order() {
        let two = Sharding::from_weights(&[1, 1]).unwrap();
        let mut b = Builder::new(limits(10_000), Some(two.clone()));
        let now = Instant::now();
        for i in 0..1000 {
            let json = event_json(i, 3);
            let e = WireEvent::from_json(&json).unwrap();
            b.push_event(&e, 0, i as i64, now);
        }
        let batch = b.seal(7, 1).unwrap();
        assert_eq!((batch.parts.len(), batch.rows()), (2, 1000));
        assert!(batch.parts.iter().all(|p| p.len() > 400), "a fair split");
        for (shard, part) in batch.parts.iter().enumerate() {
            let mut last = -1;
            for i in 0..part.len() {
                let row = decode_row(part.row(i)).expect("whole rows");
                assert_eq!(two.shard_of(row.id), shard);
                assert_eq!(row.store_time, 7);
                assert!(row.kafka_offset > last, "read order kept");
                last = row.kafka_offset;
            }
        }
    }

    #[test]
    fn months_are_utc_calendar_months() {
        let month = |y: i32, m: i32| y * 12 + m - 1;
        assert_eq!(month_of(0), month(1970, 1));
        assert_eq!(month_of(-1), month(1969, 12));
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        assert_eq!(month_of(1_709_251_199_999), month(2024, 2));
        assert_eq!(month_of(1_709_251_200_000), month(2024, 3));
        // 2000-12-31T23:59:59.999Z, 2100-03-01T00:00:00Z.
        assert_eq!(month_of(978_307_199_999), month(2000, 12));
        assert_eq!(month_of(4_107_542_400_000), month(2100, 3));
    }

    #[test]
    fn a_block_over_many_months_splits_deterministically_by_month() {
        let mut b = Builder::new(limits(10_000), None);
        let now = Instant::now();
        // 1,000 rows over 250 months, months interleaved.
        let mut expected = Vec::new();
        for i in 0..1000i64 {
            let json = event_json(i as usize, 1);
            let mut e = WireEvent::from_json(&json).unwrap();
            let month = (i * 7) % 250;
            e.timestamp = ess_core::wire::Millis(month * 31 * 86_400_000 + i);
            b.push_event(&e, 0, i, now);
            expected.push(month_of(e.timestamp.0));
        }
        let batch = b.seal(1, 1).unwrap();
        let block = &batch.parts[0];
        assert_eq!(block.month_count(), 250);
        assert!(block.spans_more_months_than(249) && !block.spans_more_months_than(250));
        let split = block.by_months(50);
        assert_eq!(split.len(), 5);
        assert_eq!(split, block.by_months(50), "the same split every time");
        let mut rows = 0;
        let mut last_month = i32::MIN;
        for part in &split {
            assert!(part.month_count() <= 50);
            let months: Vec<i32> = (0..part.len())
                .map(|i| month_of(decode_row(part.row(i)).unwrap().event_time))
                .collect();
            assert_eq!(months, part.months);
            assert!(
                months.iter().all(|&m| m > last_month),
                "months ascend over blocks"
            );
            last_month = *months.iter().max().unwrap();
            let offsets: Vec<i64> = (0..part.len())
                .map(|i| decode_row(part.row(i)).unwrap().kafka_offset)
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "read order kept");
            rows += part.len();
        }
        assert_eq!(rows, 1000);
        assert_eq!(block.by_months(250), vec![block.clone()]);
    }

    #[test]
    fn cut_by_rows_and_by_age() {
        let mut b = Builder::new(limits(2), None);
        let t0 = Instant::now();
        assert!(
            !b.is_due(t0 + Duration::from_secs(60)),
            "empty is never due"
        );
        let json = event_json(0, 1);
        let e = WireEvent::from_json(&json).unwrap();
        b.push_event(&e, 0, 0, t0);
        assert!(!b.is_due(t0 + Duration::from_millis(499)));
        assert!(b.is_due(t0 + Duration::from_millis(500)), "age");
        b.push_event(&e, 0, 1, t0);
        assert!(b.is_full() && b.is_due(t0), "rows");
    }
}
