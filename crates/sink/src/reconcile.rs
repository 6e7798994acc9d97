//! Reconciliation on assignment: which offsets past a partition's committed offset are already
//! in ClickHouse, so that re-reading from the committed offset skips them.
//!
//! Every row carries `kafka_partition` and `kafka_offset`. An offset counts as stored only
//! together with the event id the row holds: a topic deleted and created again (or a broker
//! that keeps topics in memory, restarted) numbers new events from 0, and rows of the earlier
//! topic at those offsets are other events, which must not hide the new ones. When partitions
//! are assigned, the
//! sink first waits until no insert of a previous owner that names them (by query id) still
//! runs on any node — the fence — and then asks every replica of every shard for the stored
//! offsets at or past the committed ones, and takes the union: a row one replica has not
//! fetched yet is still seen on the replica that took the insert.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use serde::Deserialize;
use uuid::Uuid;

use crate::query_id::query_id_partitions;

/// `(offset, event id)` of the rows of one partition stored at or past its committed offset,
/// sorted. An offset may appear with several ids (rows of an earlier incarnation of the topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored(Vec<(i64, Uuid)>);

impl Stored {
    /// From rows in any order, with repeats.
    pub fn new(mut rows: Vec<(i64, Uuid)>) -> Self {
        rows.sort_unstable();
        rows.dedup();
        Self(rows)
    }

    /// What the table holds at `offset` for the event `id` read there.
    pub fn lookup(&self, offset: i64, id: Uuid) -> Held {
        let i = self.0.partition_point(|&(o, _)| o < offset);
        let rows = self.0[i..].iter().take_while(|&&(o, _)| o == offset);
        let mut held = Held::Nothing;
        for &(_, stored) in rows {
            if stored == id {
                return Held::This;
            }
            held = Held::Other;
        }
        held
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops offsets below `offset` (already read past).
    pub fn forget_below(&mut self, offset: i64) {
        let cut = self.0.partition_point(|&(o, _)| o < offset);
        if cut > 0 {
            self.0.drain(..cut);
        }
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredRow {
    kafka_partition: i32,
    kafka_offset: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
}

/// What a partition's stored rows hold at one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// No row.
    Nothing,
    /// The event read there: already stored.
    This,
    /// Only other events (an earlier topic of the same name).
    Other,
}

/// Asks the nodes.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// `(url, client)` of every node.
    pub nodes: Vec<(String, Client)>,
    /// `db.table` holding the rows on each node (the replicated local table).
    pub local_table: String,
    /// The events topic (query ids name it).
    pub topic: String,
    /// Longest wait for every node to answer before going on with those that did.
    pub wait: Duration,
    /// Longest wait for one query's answer.
    pub timeout: Duration,
}

impl Reconciler {
    /// Fences, then returns the stored offsets of each partition at or past `from[p]`.
    pub async fn run(&self, from: &BTreeMap<i32, i64>) -> BTreeMap<i32, Stored> {
        if from.is_empty() {
            return BTreeMap::new();
        }
        let deadline = Instant::now() + self.wait;
        self.fence(from, deadline).await;
        let mut answered = vec![false; self.nodes.len()];
        let mut offsets: BTreeMap<i32, Vec<(i64, Uuid)>> = BTreeMap::new();
        let mut delay = Duration::from_millis(100);
        loop {
            let pending: Vec<usize> = (0..self.nodes.len()).filter(|&i| !answered[i]).collect();
            let results = futures::future::join_all(
                pending
                    .iter()
                    .map(|&i| self.stored_on(&self.nodes[i].1, from)),
            )
            .await;
            for (&i, result) in pending.iter().zip(results) {
                match result {
                    Ok(rows) => {
                        answered[i] = true;
                        for row in rows {
                            offsets
                                .entry(row.kafka_partition)
                                .or_default()
                                .push((row.kafka_offset, row.id));
                        }
                    }
                    Err(e) => tracing::warn!(
                        node = %self.nodes[i].0,
                        "reconcile: node does not answer, will retry: {e}"
                    ),
                }
            }
            if answered.iter().all(|&a| a) {
                break;
            }
            // With no node at all nothing can be known, so nothing may be read: keep trying.
            if Instant::now() >= deadline && answered.iter().any(|&a| a) {
                tracing::error!(
                    "reconcile: going on without the nodes that did not answer within {:?}; \
                     rows only they hold may be written again",
                    self.wait
                );
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        from.keys()
            .map(|&p| (p, Stored::new(offsets.remove(&p).unwrap_or_default())))
            .collect()
    }

    async fn stored_on(
        &self,
        client: &Client,
        from: &BTreeMap<i32, i64>,
    ) -> Result<Vec<StoredRow>, clickhouse::error::Error> {
        let sql = stored_rows_sql(&self.local_table, from);
        tokio::time::timeout(self.timeout, client.query(&sql).fetch_all::<StoredRow>())
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }

    /// Waits until, in one round, every node answered and none runs an insert whose query id
    /// names one of these partitions — the fence. A node whose `system.processes` cannot be
    /// read may be running an earlier owner's insert that lands after the stored offsets are
    /// read, so it is asked again until it answers or the deadline passes; only then does the
    /// sink go on without it, counting it in `ess_sink_fence_unreachable_total`. (A node
    /// that restarted runs nothing of before: a server does not resume an insert.)
    async fn fence(&self, from: &BTreeMap<i32, i64>, deadline: Instant) {
        let started = Instant::now();
        // `_` in a topic name matches any character here; the exact check is in Rust.
        let pattern = format!("ess:{}:%", self.topic);
        let sql = format!(
            "SELECT query_id, initial_query_id FROM system.processes \
             WHERE query_id LIKE '{pattern}' OR initial_query_id LIKE '{pattern}'"
        );
        let mut waited = false;
        loop {
            let results = futures::future::join_all(self.nodes.iter().map(|(_, c)| {
                let query = c.query(&sql).fetch_all::<(String, String)>();
                async move {
                    tokio::time::timeout(self.timeout, query)
                        .await
                        .unwrap_or(Err(clickhouse::error::Error::TimedOut))
                }
            }))
            .await;
            let mut unknown = Vec::new();
            let mut running = false;
            for ((url, _), result) in self.nodes.iter().zip(results) {
                match result {
                    Ok(queries) => {
                        running |= queries
                            .into_iter()
                            .flat_map(|(q, i)| [q, i])
                            .filter_map(|id| query_id_partitions(&self.topic, &id))
                            .any(|ps| ps.iter().any(|p| from.contains_key(p)));
                    }
                    Err(e) => unknown.push((url.as_str(), e)),
                }
            }
            if !running && unknown.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if running {
                    tracing::error!(
                        "reconcile: an earlier insert of these partitions still runs after {:?}; \
                         going on (its rows may be written twice)",
                        self.wait
                    );
                }
                for (url, e) in unknown {
                    metrics::counter!("ess_sink_fence_unreachable_total").increment(1);
                    tracing::error!(
                        node = url,
                        "reconcile: no answer from this node within {:?}; going on without \
                         knowing whether it still runs an earlier owner's insert: {e}",
                        self.wait
                    );
                }
                break;
            }
            if !waited {
                waited = true;
                metrics::counter!("ess_sink_fence_waits_total").increment(1);
            }
            if running {
                tracing::info!("reconcile: waiting for an earlier owner's insert to finish");
            }
            for (url, e) in &unknown {
                tracing::warn!(
                    node = url,
                    "reconcile: fence cannot ask this node, will retry: {e}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        metrics::histogram!("ess_sink_fence_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// The query reading the rows stored at or past `from`'s offset of each partition
/// (`kafka_partition`, `kafka_offset`, `id`) from `table`.
pub fn stored_rows_sql(table: &str, from: &BTreeMap<i32, i64>) -> String {
    let cond: Vec<String> = from
        .iter()
        .map(|(p, o)| format!("(kafka_partition = {p} AND kafka_offset >= {o})"))
        .collect();
    // PREWHERE reads `kafka_offset` alone for every row and the other columns only for
    // the few past the lowest committed offset; on current servers the table's min/max
    // index on `kafka_offset` skips the granules of older rows without reading them.
    let lowest = from.values().min().copied().unwrap_or(0);
    format!(
        "SELECT kafka_partition, kafka_offset, id FROM {table} PREWHERE kafka_offset >= {lowest} \
         WHERE {}",
        cond.join(" OR ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rows_are_a_sorted_set_of_offset_and_id() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut s = Stored::new(vec![(9, a), (3, a), (5, a), (3, a), (7, a), (3, b)]);
        assert_eq!(s.len(), 5);
        assert_eq!(s.lookup(3, a), Held::This);
        assert_eq!(s.lookup(3, b), Held::This);
        assert_eq!(s.lookup(9, a), Held::This);
        assert_eq!(s.lookup(4, a), Held::Nothing, "offset not stored");
        assert_eq!(
            s.lookup(9, b),
            Held::Other,
            "offset stored, but for another event"
        );
        s.forget_below(6);
        assert_eq!(s, Stored(vec![(7, a), (9, a)]));
    }
}
