//! The ClickHouse nodes inserts go to, with the shard each takes parts for and whether it is
//! suspect: a node whose insert timed out or failed on the network (or said it has no
//! ZooKeeper, or its table is read-only) is skipped while another replica of its shard is not
//! suspect, and probed in the background until it answers again. A node that did not answer
//! when the sink started (so its shard was unknown) is mapped as soon as it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clickhouse::Client;

use crate::classify::error_code;

/// A node's shard before it answered.
const UNMAPPED: usize = usize::MAX;

/// How often suspect and unmapped nodes are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Its HTTP URL.
    pub url: String,
    /// A client for it, with the insert settings.
    pub client: Client,
    shard: AtomicUsize,
    suspect: AtomicBool,
}

impl Node {
    fn takes(&self, shard: usize) -> bool {
        self.shard.load(Ordering::Relaxed) == shard
    }

    fn healthy(&self) -> bool {
        !self.suspect.load(Ordering::Relaxed)
    }

    /// An insert on this node failed with `error`; marks the node suspect when the failure is
    /// the node's rather than the data's or the cluster's. Returns whether it stays healthy.
    pub fn fail(&self, error: &clickhouse::error::Error) -> bool {
        use clickhouse::error::Error;
        let node_fault = match error {
            Error::BadResponse(_) => {
                // 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR, 225 NO_ZOOKEEPER,
                // 242 TABLE_IS_READ_ONLY, 999 KEEPER_EXCEPTION: this node cannot take inserts
                // now; its shard's other replica may.
                matches!(error_code(error), Some(209 | 210 | 225 | 242 | 999))
            }
            _ => true,
        };
        if node_fault && !self.suspect.swap(true, Ordering::Relaxed) {
            metrics::gauge!("ess_sink_suspect_nodes").increment(1.0);
            tracing::warn!(node = %self.url, "ClickHouse node suspect: {error}");
        }
        !node_fault
    }

    fn recovered(&self) {
        if self.suspect.swap(false, Ordering::Relaxed) {
            metrics::gauge!("ess_sink_suspect_nodes").decrement(1.0);
            tracing::info!(node = %self.url, "ClickHouse node answers again");
        }
    }
}

/// Every node inserts may go to.
#[derive(Debug)]
pub struct Nodes {
    list: Vec<Arc<Node>>,
}

impl Nodes {
    /// `(url, client, shard)` of each node; `None` for a node whose shard is not known yet.
    pub fn new(nodes: impl IntoIterator<Item = (String, Client, Option<usize>)>) -> Self {
        Self {
            list: nodes
                .into_iter()
                .map(|(url, client, shard)| {
                    Arc::new(Node {
                        url,
                        client,
                        shard: AtomicUsize::new(shard.unwrap_or(UNMAPPED)),
                        suspect: AtomicBool::new(false),
                    })
                })
                .collect(),
        }
    }

    /// The node for the next insert of `shard`'s part: starting at `rotation`, the first of
    /// the shard's replicas that is not suspect, or the rotation's own when all are.
    pub fn pick(&self, shard: usize, rotation: u64) -> Arc<Node> {
        let replicas: Vec<&Arc<Node>> = self.list.iter().filter(|n| n.takes(shard)).collect();
        // Discovery maps a replica for every shard before the sink starts; a shard without one
        // cannot happen, but the first node is a harmless answer if it did.
        let Some(n) = std::num::NonZeroUsize::new(replicas.len()) else {
            return self.list[0].clone();
        };
        let start = (rotation % n.get() as u64) as usize;
        (0..n.get())
            .map(|i| replicas[(start + i) % n.get()])
            .find(|node| node.healthy())
            .unwrap_or(replicas[start])
            .clone()
    }

    /// Whether some replica of `shard` is not suspect.
    pub fn has_healthy(&self, shard: usize) -> bool {
        self.list.iter().any(|n| n.takes(shard) && n.healthy())
    }

    /// How many replicas `shard` has.
    pub fn count(&self, shard: usize) -> usize {
        self.list.iter().filter(|n| n.takes(shard)).count()
    }

    /// Probes suspect nodes (`SELECT 1`) and maps unmapped ones (`map` answers a node's shard)
    /// every [`PROBE_EVERY`], each within `timeout`, until `stop` resolves.
    pub async fn watch<F, Fut>(
        self: Arc<Self>,
        timeout: Duration,
        map: F,
        stop: impl std::future::Future<Output = ()>,
    ) where
        F: Fn(Client, String) -> Fut,
        Fut: std::future::Future<Output = Option<usize>>,
    {
        let watch = async {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                for node in &self.list {
                    if node.shard.load(Ordering::Relaxed) == UNMAPPED {
                        let answer = tokio::time::timeout(
                            timeout,
                            map(node.client.clone(), node.url.clone()),
                        )
                        .await;
                        if let Ok(Some(shard)) = answer {
                            tracing::info!(node = %node.url, shard = shard + 1, "ClickHouse node mapped");
                            node.shard.store(shard, Ordering::Relaxed);
                        }
                    } else if !node.healthy() {
                        let probe = node.client.query("SELECT 1").fetch_one::<u8>();
                        if let Ok(Ok(_)) = tokio::time::timeout(timeout, probe).await {
                            node.recovered();
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = watch => {}
            () = stop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Nodes {
        Nodes::new((0..4).map(|i| {
            (
                format!("n{i}"),
                Client::default(),
                if i == 3 { None } else { Some(i % 2) },
            )
        }))
    }

    #[test]
    fn a_suspect_replica_is_skipped_while_its_shard_has_another() {
        let nodes = nodes();
        assert_eq!(nodes.count(0), 2);
        assert_eq!(nodes.count(1), 1, "n3 is not mapped yet");
        let picked: Vec<String> = (0..4).map(|r| nodes.pick(0, r).url.clone()).collect();
        assert_eq!(
            picked,
            ["n0", "n2", "n0", "n2"],
            "rotation over the replicas"
        );
        assert!(!nodes.pick(0, 0).fail(&clickhouse::error::Error::TimedOut));
        assert_eq!(nodes.pick(0, 0).url, "n2");
        assert_eq!(nodes.pick(0, 1).url, "n2");
        assert!(nodes.has_healthy(0));
        assert!(!nodes.pick(0, 0).fail(&clickhouse::error::Error::TimedOut));
        assert!(!nodes.has_healthy(0));
        assert_eq!(
            nodes.pick(0, 1).url,
            "n2",
            "all suspect: the rotation's own"
        );
        nodes.list[0].recovered();
        assert_eq!(nodes.pick(0, 1).url, "n0");
        let bad_data = clickhouse::error::Error::BadResponse("Code: 27, bad".into());
        assert!(
            nodes.list[1].fail(&bad_data),
            "the data's fault, not the node's"
        );
        assert!(nodes.has_healthy(1));
    }
}
