//! Direct writes to the shards: which shard a row belongs to, decided exactly as the
//! Distributed table decides, and which nodes hold each shard.
//!
//! The Distributed table shards by `cityHash64(toString(id))` (see `ess_core::schema`).
//! ClickHouse's `cityHash64` is CityHash v1.0.2's 64-bit hash (the `ch_cityhash102` crate),
//! `toString` of a UUID is its lowercase hyphenated form, and a row goes to the shard whose
//! weight slot holds `hash % (sum of the shard weights)`, shards taken in `shard_num` order.
//! The integration tests check the result against the servers' own `cityHash64`.

use std::time::{Duration, Instant};

use clickhouse::Client;
use uuid::Uuid;

/// The sharding expression the Distributed table must have for direct writes to put every
/// row where the Distributed table would.
pub const SHARDING_KEY: &str = "cityHash64(toString(id))";

/// How long discovery keeps waiting for the remaining nodes once every shard has a replica.
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// The Distributed table's row → shard mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharding {
    /// Slot → shard index (0-based); one slot per unit of weight.
    slots: Vec<usize>,
}

impl Sharding {
    /// From the shards' weights in `shard_num` order; `None` if there is no weight at all.
    pub fn from_weights(weights: &[u32]) -> Option<Self> {
        let slots: Vec<usize> = weights
            .iter()
            .enumerate()
            .flat_map(|(shard, &w)| std::iter::repeat_n(shard, w as usize))
            .collect();
        (!slots.is_empty()).then_some(Self { slots })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.slots.last().map_or(0, |&s| s + 1)
    }

    /// The shard index (0-based) of the event `id`.
    pub fn shard_of(&self, id: Uuid) -> usize {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let hash = ch_cityhash102::cityhash64(id.hyphenated().encode_lower(&mut text).as_bytes());
        self.slots[(hash % self.slots.len() as u64) as usize]
    }
}

/// Which shard each node holds.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The row → shard mapping.
    pub sharding: Sharding,
    /// Per shard (index = `shard_num - 1`), the `(url, client)` of its replicas.
    pub replicas: Vec<Vec<(String, Client)>>,
}

/// Why the shards could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The cluster is not defined on the server.
    #[error("clickhouse.cluster {0:?} is not in system.clusters")]
    NoCluster(String),
    /// The Distributed table shards by something else, so direct writes would put rows on
    /// other shards than the table's own inserts.
    #[error(
        "sink.write_path = \"shards\" needs {table} to shard by {SHARDING_KEY}, but it is \
         `{engine}`; set sink.write_path = \"distributed\" or re-create the table"
    )]
    ShardingKey {
        /// The Distributed table.
        table: String,
        /// Its engine clause.
        engine: String,
    },
    /// A node claims more than one shard of the cluster.
    #[error("ClickHouse at {url} holds shards {shards:?} of cluster {cluster}; expected one")]
    Ambiguous {
        /// The node.
        url: String,
        /// The cluster.
        cluster: String,
        /// What it said.
        shards: Vec<u32>,
    },
    /// Some shard has no reachable replica.
    #[error("no node of shard(s) {shards:?} answered within {wait:?}: {last}")]
    Unreachable {
        /// 1-based shard numbers.
        shards: Vec<usize>,
        /// How long discovery tried.
        wait: Duration,
        /// The last error seen.
        last: String,
    },
}

impl Layout {
    /// Maps the cluster (each query waits at most `timeout`): its shard weights and the Distributed table's sharding key from the
    /// first node that answers, then each node's own shard (`is_local` in
    /// `system.clusters`). Retries unreachable nodes until every node answered, or every
    /// shard has a replica and a short grace passed, or `wait` is over. With no cluster (one
    /// server) every node is a replica of the only shard.
    pub async fn discover(
        nodes: &[(String, Client)],
        cluster: &str,
        distributed: (&str, &str),
        (wait, timeout): (Duration, Duration),
    ) -> Result<Self, LayoutError> {
        if cluster.is_empty() {
            return Ok(Self {
                sharding: Sharding::from_weights(&[1])
                    .ok_or(LayoutError::NoCluster(String::new()))?,
                replicas: vec![nodes.to_vec()],
            });
        }
        let started = Instant::now();
        let mut sharding: Option<Sharding> = None;
        let mut shard_of_node: Vec<Option<usize>> = vec![None; nodes.len()];
        let mut last = String::from("no node was asked");
        loop {
            for (i, (url, client)) in nodes.iter().enumerate() {
                if shard_of_node[i].is_some() {
                    continue;
                }
                let probed = async {
                    if sharding.is_none() {
                        sharding = Some(shape(client, cluster, distributed).await?);
                    }
                    local_shard(client, url, cluster).await
                };
                // A node that accepts connections but does not answer (frozen) must not hold
                // up the others.
                let probed = tokio::time::timeout(timeout, probed)
                    .await
                    .unwrap_or_else(|_| Err(Probe::Retry(format!("no answer within {timeout:?}"))));
                match probed {
                    Ok(shard) => shard_of_node[i] = Some(shard),
                    Err(Probe::Fatal(e)) => return Err(e),
                    Err(Probe::Retry(e)) => last = format!("{url}: {e}"),
                }
            }
            if let Some(sharding) = &sharding {
                let missing: Vec<usize> = (0..sharding.shards())
                    .filter(|&s| !shard_of_node.contains(&Some(s)))
                    .map(|s| s + 1)
                    .collect();
                let all = shard_of_node.iter().all(Option::is_some);
                if all || (missing.is_empty() && started.elapsed() >= STRAGGLER_GRACE) {
                    if !all {
                        tracing::warn!(
                            "going on without the ClickHouse nodes that did not answer ({last}); \
                             their shards are written through the other replicas"
                        );
                    }
                    let mut replicas = vec![Vec::new(); sharding.shards()];
                    for (node, shard) in nodes.iter().zip(&shard_of_node) {
                        if let Some(&s) = shard.as_ref().filter(|&&s| s < replicas.len()) {
                            replicas[s].push(node.clone());
                        }
                    }
                    return Ok(Self {
                        sharding: sharding.clone(),
                        replicas,
                    });
                }
                if started.elapsed() >= wait {
                    return Err(LayoutError::Unreachable {
                        shards: missing,
                        wait,
                        last,
                    });
                }
            } else if started.elapsed() >= wait {
                return Err(LayoutError::Unreachable {
                    shards: Vec::new(),
                    wait,
                    last,
                });
            }
            tracing::info!("waiting for ClickHouse nodes to say which shard they hold: {last}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

pub(crate) enum Probe {
    Fatal(LayoutError),
    Retry(String),
}

impl From<clickhouse::error::Error> for Probe {
    fn from(e: clickhouse::error::Error) -> Self {
        Self::Retry(e.to_string())
    }
}

/// Shard weights and the sharding key check.
async fn shape(
    client: &Client,
    cluster: &str,
    (database, table): (&str, &str),
) -> Result<Sharding, Probe> {
    let weights: Vec<(u32, u32)> = client
        .query(
            "SELECT shard_num, any(shard_weight) FROM system.clusters WHERE cluster = ? \
             GROUP BY shard_num ORDER BY shard_num",
        )
        .bind(cluster)
        .fetch_all()
        .await?;
    let weights: Vec<u32> = weights.into_iter().map(|(_, w)| w).collect();
    let sharding = Sharding::from_weights(&weights)
        .ok_or_else(|| Probe::Fatal(LayoutError::NoCluster(cluster.to_owned())))?;
    let engine: Vec<String> = client
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await?;
    let Some(engine) = engine.into_iter().next() else {
        return Err(Probe::Retry(format!(
            "table {database}.{table} does not exist yet (run `ess migrate`)"
        )));
    };
    if !engine.replace(' ', "").contains(SHARDING_KEY) {
        return Err(Probe::Fatal(LayoutError::ShardingKey {
            table: format!("{database}.{table}"),
            engine,
        }));
    }
    Ok(sharding)
}

/// The shard index (0-based) this node holds.
pub(crate) async fn local_shard(client: &Client, url: &str, cluster: &str) -> Result<usize, Probe> {
    let shards: Vec<u32> = client
        .query(
            "SELECT DISTINCT shard_num FROM system.clusters WHERE cluster = ? AND is_local \
             ORDER BY shard_num",
        )
        .bind(cluster)
        .fetch_all()
        .await?;
    match shards.as_slice() {
        [one] if *one >= 1 => Ok(*one as usize - 1),
        _ => Err(Probe::Fatal(LayoutError::Ambiguous {
            url: url.to_owned(),
            cluster: cluster.to_owned(),
            shards,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_slots_in_shard_order() {
        let s = Sharding::from_weights(&[1, 2]).unwrap();
        assert_eq!(s.slots, vec![0, 1, 1]);
        assert_eq!(s.shards(), 2);
        assert!(Sharding::from_weights(&[]).is_none());
        assert!(Sharding::from_weights(&[0, 0]).is_none());
    }

    #[test]
    fn the_hash_is_the_one_clickhouse_computes() {
        // Answers of ClickHouse 18.16.1 to `SELECT cityHash64(toString(toUUID('…')))`.
        let known = [
            (
                "00000000-0000-0000-0000-000000000000",
                3_617_567_523_365_099_007u64,
            ),
            (
                "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
                10_710_952_648_046_504_101,
            ),
        ];
        let two = Sharding::from_weights(&[1, 1]).unwrap();
        let three = Sharding::from_weights(&[2, 1]).unwrap();
        for (text, hash) in known {
            let id = Uuid::parse_str(text).unwrap();
            assert_eq!(ch_cityhash102::cityhash64(text.as_bytes()), hash, "{text}");
            assert_eq!(two.shard_of(id), (hash % 2) as usize, "{text}");
            assert_eq!(three.shard_of(id), [0, 0, 1][(hash % 3) as usize], "{text}");
        }
    }
}
