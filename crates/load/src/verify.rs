//! `ess verify`: what ClickHouse holds for a run, against what the load generator was told
//! was accepted. Rows of a run are selected by `source` ([`RunRows`]: the run id, or with an
//! API key the key's id, which many runs share, and then also by the run id its event ids
//! carry) and each stored id is decoded back to its sequence number.
//!
//! Duplicates are counted in raw rows, and the verdict says how ([`RawCount`]): the table is
//! a `ReplacingMergeTree`, whose background merges delete a duplicate's extra copy within
//! seconds, so a count taken only at the end can miss a duplicate that was written. Either
//! merges were stopped on every node's table for the run ([`Verifier::stop_merges`]), or the
//! run's rows and distinct ids were sampled while it went on and the most extra rows seen at
//! once count.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ess_core::clickhouse::{Client, connect};
use ess_core::config::Config;
use ess_core::schema::Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{RunId, SeqSet, decode};
use crate::record::RunRecord;
use crate::stats::group;

/// Which rows are a run's: those with its `source`, and, when that is not the run id (an API
/// key's id, shared by every run sent with the key), whose id carries the run id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRows {
    /// The run.
    pub run: RunId,
    /// The `source` its events carry.
    pub source: String,
}

impl From<RunId> for RunRows {
    fn from(run: RunId) -> Self {
        Self {
            run,
            source: run.to_string(),
        }
    }
}

impl From<&RunRecord> for RunRows {
    fn from(record: &RunRecord) -> Self {
        let run = record.summary.run;
        Self {
            run,
            source: record.source.clone().unwrap_or_else(|| run.to_string()),
        }
    }
}

impl RunRows {
    /// The `WHERE` condition; its parameters are bound by [`RunRows::bind`].
    fn condition(&self) -> &'static str {
        if self.source == self.run.to_string() {
            "source = ?"
        } else {
            // The hyphenated id text starts with the run id's 12 hex digits (8, `-`, 4).
            "source = ? AND substring(toString(id), 1, 13) = ?"
        }
    }

    fn bind(&self, query: clickhouse::query::Query) -> clickhouse::query::Query {
        let query = query.bind(self.source.as_str());
        if self.source == self.run.to_string() {
            return query;
        }
        query.bind(self.id_prefix())
    }

    /// The first 13 characters of the run's event ids as text.
    fn id_prefix(&self) -> String {
        let run = self.run.to_string();
        format!("{}-{}", &run[..8], &run[8..])
    }
}

/// One lost event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostId {
    /// Sequence number within the run.
    pub seq: u64,
    /// Its event id.
    pub id: Uuid,
}

/// End-to-end latency (ingest → stored) in milliseconds: the same percentiles as request
/// latency.
pub type E2eMs = crate::stats::LatencyMs;

/// One node's copy of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCount {
    /// The node's HTTP URL.
    pub url: String,
    /// Its shard (1-based), from `system.clusters` in the order of `clickhouse.nodes`.
    pub shard: u32,
    /// Its replica number within the shard.
    pub replica: u32,
    /// Rows of the run in its local table.
    pub rows: u64,
}

/// How the raw row count was kept from merges that delete duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum RawCount {
    /// Merges were stopped on every node's table before the run wrote its first row: every
    /// row written is still there when counted.
    MergesStopped,
    /// Merges ran; the run's rows and distinct ids were counted `samples` times over
    /// `span_s` seconds, and `max_duplicates` is the most extra rows one count saw. A copy
    /// written and merged away between two samples is not seen.
    Sampled {
        /// Counts taken.
        samples: u64,
        /// Seconds from the first count to the last.
        span_s: f64,
        /// The most extra rows (rows − distinct ids) one count saw.
        max_duplicates: u64,
        /// When the first count was taken (milliseconds since the epoch).
        #[serde(default)]
        first_ms: i64,
    },
}

impl Default for RawCount {
    fn default() -> Self {
        Self::sampled()
    }
}

impl RawCount {
    /// Sampling with no sample yet.
    pub fn sampled() -> Self {
        Self::Sampled {
            samples: 0,
            span_s: 0.0,
            max_duplicates: 0,
            first_ms: 0,
        }
    }

    /// Adds one count of `rows` rows and `unique` distinct ids (when sampling).
    pub fn add(&mut self, rows: u64, unique: u64) {
        if let Self::Sampled {
            samples,
            span_s,
            max_duplicates,
            first_ms,
        } = self
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            if *samples == 0 {
                *first_ms = now;
            }
            *samples += 1;
            *span_s = (now - *first_ms).max(0) as f64 / 1000.0;
            *max_duplicates = (*max_duplicates).max(rows.saturating_sub(unique));
        }
    }

    /// The most extra rows of an id seen by a sample (0 with merges stopped: the final count
    /// is the raw one).
    pub fn sampled_duplicates(&self) -> u64 {
        match self {
            Self::MergesStopped => 0,
            Self::Sampled { max_duplicates, .. } => *max_duplicates,
        }
    }

    /// One line saying how the duplicates were counted.
    pub fn describe(&self) -> String {
        match self {
            Self::MergesStopped => {
                "raw rows: merges stopped on every node's table for the run".into()
            }
            Self::Sampled {
                samples, span_s, ..
            } => format!(
                "merges ran: rows and ids counted {samples} time{} over {span_s:.0} s, the most \
                 extra rows seen at once count (a copy merged away between two counts is missed)",
                if *samples == 1 { "" } else { "s" }
            ),
        }
    }
}

/// The verdict on a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    /// The run.
    pub run: RunId,
    /// The table checked (`db.table`).
    pub table: String,
    /// ClickHouse version.
    pub server: String,
    /// Distinct events the load generator got 2xx for.
    pub accepted: u64,
    /// Rows with the run's source in the table users query.
    pub stored_rows: u64,
    /// Distinct ids among them.
    pub unique_ids: u64,
    /// Rows as `FINAL` sees them (after ReplacingMergeTree collapses copies).
    pub rows_final: u64,
    /// Extra rows of an id: `stored_rows − unique_ids`, or more when a sample taken while
    /// merges ran saw more (see `raw_count`).
    pub duplicates: u64,
    /// How duplicates were kept from merges before they were counted.
    #[serde(default)]
    pub raw_count: RawCount,
    /// Extra rows that survive `FINAL` (`rows_final − unique_ids`).
    pub duplicates_final: u64,
    /// Events re-sent on purpose by the generator.
    pub resent: u64,
    /// Accepted but not stored.
    pub lost: u64,
    /// The first few lost events.
    pub lost_first: Vec<LostId>,
    /// Stored although the generator saw no 2xx for them (e.g. a timeout after the broker
    /// had the event): not a loss, shown for completeness.
    pub stored_without_ack: u64,
    /// Rows with the run's source whose id is not one of the run's.
    pub foreign_ids: u64,
    /// Ingest → stored latency.
    pub e2e_ms: E2eMs,
    /// Event time (the client's timestamp) → stored latency.
    pub event_to_store_ms: E2eMs,
    /// Per node.
    pub nodes: Vec<NodeCount>,
    /// Whether every shard's replicas hold the same rows and the shards add up to the table.
    pub replicas_consistent: bool,
    /// Sum over shards (first replica of each).
    pub shard_sum: u64,
    /// Seconds spent waiting for the data to arrive and replicas to agree.
    pub waited_s: f64,
    /// Everything that is wrong; empty when the run passes.
    pub problems: Vec<String>,
    /// Whether nothing was lost or duplicated and the replicas agree.
    pub ok: bool,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct IdRow {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LatencyRow {
    q: Vec<f64>,
    lo: f64,
    hi: f64,
    mean: f64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ReplicaRow {
    shard_num: u32,
    replica_num: u32,
}

/// How the verifier talks to the cluster.
#[derive(Debug)]
pub struct Verifier {
    client: Client,
    nodes: Vec<(String, Client)>,
    schema: Schema,
    server: String,
    shards: Vec<(u32, u32)>,
}

impl Verifier {
    /// Connects to the query node and every node of the cluster.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let ch = &config.clickhouse;
        let (client, version) = connect(ch, &ch.url).await?;
        let schema = Schema::new(ch, version.flavor());
        let mut nodes = Vec::new();
        for url in ch.all_nodes() {
            let (c, _) = connect(ch, &url).await?;
            nodes.push((url, c));
        }
        let shards = if schema.cluster.is_empty() {
            vec![(1, 1)]
        } else {
            client
                .query(
                    "SELECT shard_num, replica_num FROM system.clusters WHERE cluster = ? \
                     ORDER BY shard_num, replica_num",
                )
                .bind(&schema.cluster)
                .fetch_all::<ReplicaRow>()
                .await
                .context("read system.clusters")?
                .into_iter()
                .map(|r| (r.shard_num, r.replica_num))
                .collect()
        };
        Ok(Self {
            client,
            nodes,
            schema,
            server: version.text,
            shards,
        })
    }

    fn table(&self) -> String {
        format!("{}.{}", self.schema.database, self.schema.table)
    }

    /// Rows and distinct ids of `run` in the queried table. (`uniqExact` of the id's text: of
    /// the UUID itself, ClickHouse 18.16 takes seconds for 100,000 rows.)
    pub async fn counts(&self, run: impl Into<RunRows>) -> anyhow::Result<(u64, u64)> {
        let run = run.into();
        run.bind(self.client.query(&format!(
            "SELECT count(), uniqExact(toString(id)) FROM {} WHERE {}",
            self.table(),
            run.condition()
        )))
        .fetch_one::<(u64, u64)>()
        .await
        .context("count the run's rows")
    }

    /// Rows of `run` in the queried table (cheaper than [`Verifier::counts`]).
    pub async fn rows(&self, run: impl Into<RunRows>) -> anyhow::Result<u64> {
        let run = run.into();
        run.bind(self.client.query(&format!(
            "SELECT count() FROM {} WHERE {}",
            self.table(),
            run.condition()
        )))
        .fetch_one::<u64>()
        .await
        .context("count the run's rows")
    }

    /// Rows of `run` on each node's local table.
    pub async fn node_counts(&self, run: impl Into<RunRows>) -> anyhow::Result<Vec<NodeCount>> {
        let run = run.into();
        let local = format!("{}.{}", self.schema.database, self.schema.local_table());
        let mut out = Vec::new();
        for (i, (url, client)) in self.nodes.iter().enumerate() {
            let rows = run
                .bind(client.query(&format!(
                    "SELECT count() FROM {local} WHERE {}",
                    run.condition()
                )))
                .fetch_one::<u64>()
                .await
                .with_context(|| format!("count the run's rows on {url}"))?;
            let (shard, replica) = self.shards.get(i).copied().unwrap_or((i as u32 + 1, 1));
            out.push(NodeCount {
                url: url.clone(),
                shard,
                replica,
                rows,
            });
        }
        Ok(out)
    }

    async fn latency(&self, run: &RunRows, from: &str) -> anyhow::Result<E2eMs> {
        let e = format!(
            "toFloat64({}) - toFloat64({})",
            self.schema.millis("store_time"),
            self.schema.millis(from)
        );
        let row = run
            .bind(self.client.query(&format!(
                "SELECT quantilesExact(0.5, 0.9, 0.95, 0.99)(e) AS q, min(e) AS lo, max(e) AS hi, \
                 avg(e) AS mean FROM (SELECT {e} AS e FROM {} WHERE {})",
                self.table(),
                run.condition()
            )))
            .fetch_one::<LatencyRow>()
            .await
            .context("end-to-end latency")?;
        let q = |i: usize| row.q.get(i).copied().unwrap_or(0.0);
        let fix = |v: f64| if v.is_finite() { v } else { 0.0 };
        Ok(E2eMs {
            min: fix(row.lo),
            mean: fix(row.mean),
            p50: fix(q(0)),
            p90: fix(q(1)),
            p95: fix(q(2)),
            p99: fix(q(3)),
            max: fix(row.hi),
        })
    }

    /// Stops merges of the table on every node (`SYSTEM STOP MERGES`), so that a duplicate
    /// row stays until it is counted. Call it before the run writes its first row; mind
    /// `parts_to_throw_insert` (300 parts per partition) on long runs.
    pub async fn stop_merges(&self) -> anyhow::Result<()> {
        self.on_every_node("SYSTEM STOP MERGES").await
    }

    /// Lets merges run again on every node (`SYSTEM START MERGES`).
    pub async fn start_merges(&self) -> anyhow::Result<()> {
        self.on_every_node("SYSTEM START MERGES").await
    }

    async fn on_every_node(&self, statement: &str) -> anyhow::Result<()> {
        let local = format!("{}.{}", self.schema.database, self.schema.local_table());
        for (url, client) in &self.nodes {
            client
                .query(&format!("{statement} {local}"))
                .execute()
                .await
                .with_context(|| format!("{statement} {local} on {url}"))?;
        }
        Ok(())
    }

    /// The full check of `record`, waiting up to `wait` for the rows to arrive and the
    /// replicas to agree. `raw_count` says how duplicates were kept from merges so far (the
    /// caller's samples, or merges stopped); the counts taken while waiting add to it.
    pub async fn verify(
        &self,
        record: &RunRecord,
        wait: Duration,
        list: usize,
        mut raw_count: RawCount,
    ) -> anyhow::Result<Verification> {
        let rows_of = RunRows::from(record);
        let run = rows_of.run;
        let accepted = record.accepted_set();
        let started = Instant::now();
        let (rows, unique, nodes) = self
            .wait_settled(&rows_of, accepted.len(), wait, &mut raw_count)
            .await?;
        let waited_s = started.elapsed().as_secs_f64();
        let rows_final = self.rows_final(&rows_of).await?;
        let ids = self.stored_ids(&rows_of).await?;
        let lost_first: Vec<LostId> = accepted
            .difference(&ids.stored)
            .take(list)
            .map(|seq| LostId {
                seq,
                id: run.event_id(seq),
            })
            .collect();
        let (replicas_consistent, shard_sum) = consistent(&nodes, rows);
        let mut v = Verification {
            run,
            table: self.table(),
            server: self.server.clone(),
            accepted: accepted.len(),
            stored_rows: rows,
            unique_ids: unique,
            rows_final,
            duplicates: rows
                .saturating_sub(unique)
                .max(raw_count.sampled_duplicates()),
            raw_count,
            duplicates_final: rows_final.saturating_sub(unique),
            resent: record.summary.resent,
            lost: accepted.difference(&ids.stored).count() as u64,
            lost_first,
            stored_without_ack: ids.stored.difference(&accepted).count() as u64,
            foreign_ids: ids.foreign,
            e2e_ms: self.latency(&rows_of, "ingest_time").await?,
            event_to_store_ms: self.latency(&rows_of, "event_time").await?,
            nodes,
            replicas_consistent,
            shard_sum,
            waited_s,
            problems: Vec::new(),
            ok: false,
        };
        v.problems = v.find_problems();
        v.ok = v.problems.is_empty();
        Ok(v)
    }

    /// Counts the run until every accepted event is stored and the replicas agree, or
    /// `wait` passes; each count is a sample for `raw_count`. Returns the last rows, distinct
    /// ids and per-node rows.
    async fn wait_settled(
        &self,
        run: &RunRows,
        accepted: u64,
        wait: Duration,
        raw_count: &mut RawCount,
    ) -> anyhow::Result<(u64, u64, Vec<NodeCount>)> {
        let deadline = Instant::now() + wait;
        loop {
            let (rows, unique) = self.counts(run.clone()).await?;
            raw_count.add(rows, unique);
            let nodes = self.node_counts(run.clone()).await?;
            let settled = unique >= accepted && consistent(&nodes, rows).0;
            if settled || Instant::now() >= deadline {
                return Ok((rows, unique, nodes));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Rows of the run as `FINAL` sees them (copies of an id collapsed).
    async fn rows_final(&self, run: &RunRows) -> anyhow::Result<u64> {
        run.bind(self.client.query(&format!(
            "SELECT count() FROM {} FINAL WHERE {}",
            self.table(),
            run.condition()
        )))
        .fetch_one::<u64>()
        .await
        .context("count the run's rows with FINAL")
    }

    /// The sequence numbers of the run's stored ids, and how many ids are not the run's.
    async fn stored_ids(&self, rows: &RunRows) -> anyhow::Result<StoredIds> {
        let run = rows.run;
        let mut ids = StoredIds {
            stored: SeqSet::new(),
            foreign: 0,
        };
        let mut cursor = rows
            .bind(self.client.query(&format!(
                "SELECT id FROM {} WHERE {}",
                self.table(),
                rows.condition()
            )))
            .fetch::<IdRow>()
            .context("read the run's ids")?;
        while let Some(row) = cursor.next().await.context("read the run's ids")? {
            match decode(&row.id) {
                Some((r, seq)) if r == run => {
                    ids.stored.insert(seq);
                }
                _ => ids.foreign += 1,
            }
        }
        Ok(ids)
    }
}

/// What the run's rows hold.
struct StoredIds {
    /// Sequence numbers of the run's ids.
    stored: SeqSet,
    /// Rows with the run's source whose id is not one of the run's.
    foreign: u64,
}

/// Whether replicas of each shard agree and the shards (first replica each) add up to `total`.
pub fn consistent(nodes: &[NodeCount], total: u64) -> (bool, u64) {
    let mut shards: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for n in nodes {
        shards.entry(n.shard).or_default().push(n.rows);
    }
    let replicas_agree = shards.values().all(|r| r.windows(2).all(|w| w[0] == w[1]));
    let sum: u64 = shards
        .values()
        .map(|r| r.first().copied().unwrap_or(0))
        .sum();
    (replicas_agree && sum == total, sum)
}

impl Verification {
    /// Everything wrong with the run.
    fn find_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!(
                "{} accepted events are not stored",
                group(self.lost)
            ));
        }
        if self.duplicates_final > 0 {
            problems.push(format!(
                "{} duplicate rows remain after FINAL",
                group(self.duplicates_final)
            ));
        }
        if self.duplicates > 0 && self.resent == 0 {
            problems.push(format!(
                "{} duplicate rows although no event was sent twice",
                group(self.duplicates)
            ));
        }
        if !self.replicas_consistent {
            problems.push("replicas of a shard disagree, or the shards do not add up".into());
        }
        if self.foreign_ids > 0 {
            problems.push(format!(
                "{} rows carry the run's source but not its ids",
                group(self.foreign_ids)
            ));
        }
        problems
    }

    /// The text report.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let row = |s: &mut String, name: &str, value: String| {
            let dots = ".".repeat(34usize.saturating_sub(name.len()));
            let _ = writeln!(s, "  {name} {dots}: {value}");
        };
        row(
            &mut s,
            "run",
            format!(
                "{}  ({} on ClickHouse {})",
                self.run, self.table, self.server
            ),
        );
        row(&mut s, "accepted (2xx)", group(self.accepted));
        row(&mut s, "stored rows", group(self.stored_rows));
        row(&mut s, "unique ids", group(self.unique_ids));
        row(
            &mut s,
            "duplicates",
            format!(
                "{}  ({} after FINAL; {} re-sent on purpose)",
                group(self.duplicates),
                group(self.duplicates_final),
                group(self.resent)
            ),
        );
        row(&mut s, "duplicates counted", self.raw_count.describe());
        row(&mut s, "lost (accepted, not stored)", group(self.lost));
        for l in &self.lost_first {
            row(&mut s, "  lost", format!("seq {} id {}", l.seq, l.id));
        }
        row(
            &mut s,
            "stored without a 2xx",
            group(self.stored_without_ack),
        );
        let e = &self.e2e_ms;
        row(
            &mut s,
            "e2e ingest→stored",
            format!(
                "p50={:.0}ms p90={:.0}ms p95={:.0}ms p99={:.0}ms max={:.0}ms",
                e.p50, e.p90, e.p95, e.p99, e.max
            ),
        );
        let e = &self.event_to_store_ms;
        row(
            &mut s,
            "e2e event time→stored",
            format!("p50={:.0}ms p95={:.0}ms max={:.0}ms", e.p50, e.p95, e.max),
        );
        let mut shards: std::collections::BTreeMap<u32, Vec<&NodeCount>> = Default::default();
        for n in &self.nodes {
            shards.entry(n.shard).or_default().push(n);
        }
        for (shard, nodes) in &shards {
            let parts: Vec<String> = nodes
                .iter()
                .map(|n| format!("{} {}", n.url.trim_start_matches("http://"), group(n.rows)))
                .collect();
            let agree = nodes.windows(2).all(|w| w[0].rows == w[1].rows);
            row(
                &mut s,
                &format!("shard {shard} replicas"),
                format!(
                    "{}  {}",
                    parts.join(" | "),
                    if agree { "✓" } else { "✗ differ" }
                ),
            );
        }
        row(
            &mut s,
            "shards sum = table",
            format!(
                "{} = {}  {}",
                group(self.shard_sum),
                group(self.stored_rows),
                if self.shard_sum == self.stored_rows {
                    "✓"
                } else {
                    "✗"
                }
            ),
        );
        row(
            &mut s,
            "result",
            if self.ok {
                "PASS: nothing lost, nothing duplicated".into()
            } else {
                format!("FAIL: {}", self.problems.join("; "))
            },
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_sent_under_a_keys_source_is_also_selected_by_its_ids() {
        let run: RunId = "00a1b2c3d4e5".parse().unwrap();
        let own = RunRows::from(run);
        assert_eq!(own.condition(), "source = ?");
        let shared = RunRows {
            run,
            source: "web".into(),
        };
        assert!(
            shared
                .condition()
                .contains("substring(toString(id), 1, 13) = ?")
        );
        let prefix = shared.id_prefix();
        assert_eq!(prefix.len(), 13);
        for seq in [0, 1, 1 << 40] {
            assert!(run.event_id(seq).to_string().starts_with(&prefix));
        }
        let other: RunId = "00a1b2c3d4e6".parse().unwrap();
        assert!(!other.event_id(0).to_string().starts_with(&prefix));
    }

    fn node(shard: u32, rows: u64) -> NodeCount {
        NodeCount {
            url: String::new(),
            shard,
            replica: 1,
            rows,
        }
    }

    #[test]
    fn replicas_must_agree_and_shards_add_up() {
        assert_eq!(
            consistent(&[node(1, 5), node(1, 5), node(2, 7), node(2, 7)], 12),
            (true, 12)
        );
        assert!(!consistent(&[node(1, 5), node(1, 4), node(2, 7), node(2, 7)], 12).0);
        assert!(!consistent(&[node(1, 5), node(1, 5), node(2, 7), node(2, 7)], 13).0);
        assert_eq!(consistent(&[node(1, 3)], 3), (true, 3));
    }
}
