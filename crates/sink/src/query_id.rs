//! Query ids of the sink's inserts: they name the topic and the partitions a batch covers, so
//! a new owner of a partition finds an earlier owner's insert still running on a server
//! (`system.processes`, see [`crate::reconcile`]); retries of one block reuse its id.

use crate::batch::Batch;

/// `ess:{topic}:,{p},{p},:{pid}-{batch}[-s{shard}][-m{block}]:{from}-{to}` (`-m`: one of the
/// blocks a part was split into by month). Topic names cannot hold `:` or `,`.
pub fn query_id(
    topic: &str,
    batch: &Batch,
    (shard, block): (Option<usize>, Option<usize>),
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
    if let Some(block) = block {
        id.push_str(&format!("-m{block}"));
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
        let id = query_id("it_abc.events", &batch, (None, None), 0, 10);
        assert_eq!(query_id_partitions("it_abc.events", &id), Some(vec![3, 11]));
        let shard_id = query_id("it_abc.events", &batch, (Some(1), Some(3)), 0, 10);
        assert!(shard_id.contains("-s2-m3:"), "{shard_id}");
        assert_eq!(
            query_id_partitions("it_abc.events", &shard_id),
            Some(vec![3, 11])
        );
        assert_eq!(query_id_partitions("it_abc.event", &id), None);
        assert_eq!(query_id_partitions("other", &id), None);
    }
}
