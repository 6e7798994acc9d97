//! Which offsets may be committed: per partition, the batches in the order they were cut; a
//! partition's commit point advances over the acknowledged prefix only, so a batch stored out
//! of order never lets the commit skip an earlier batch that is still in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug)]
struct Slot {
    batch: u64,
    next: i64,
    done: bool,
}

/// Commit bookkeeping for the assigned partitions.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<i32, VecDeque<Slot>>,
    committable: BTreeMap<i32, i64>,
}

impl Tracker {
    /// A batch covering `ranges` (partition → first, last offset) was cut.
    pub fn cut(&mut self, batch: u64, ranges: &BTreeMap<i32, (i64, i64)>) {
        for (&p, &(_, last)) in ranges {
            self.parts.entry(p).or_default().push_back(Slot {
                batch,
                next: last + 1,
                done: false,
            });
        }
    }

    /// The batch was stored (and its dead letters acknowledged). Returns the partitions whose
    /// commit point moved, with the new point (next offset to read).
    pub fn stored(&mut self, batch: u64, ranges: &BTreeMap<i32, (i64, i64)>) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for &p in ranges.keys() {
            let Some(slots) = self.parts.get_mut(&p) else {
                continue;
            };
            if let Some(slot) = slots.iter_mut().find(|s| s.batch == batch) {
                slot.done = true;
            }
            let mut point = None;
            while slots.front().is_some_and(|s| s.done) {
                point = slots.pop_front().map(|s| s.next);
            }
            if let Some(point) = point {
                self.committable.insert(p, point);
                moved.push((p, point));
            }
        }
        moved
    }

    /// Batches cut but not yet stored, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(VecDeque::len).sum()
    }

    /// The commit point of every partition that has one.
    pub fn committable(&self) -> &BTreeMap<i32, i64> {
        &self.committable
    }

    /// Forgets partitions (revoked).
    pub fn forget_all(&mut self) {
        self.parts.clear();
        self.committable.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: i32, a: i64, b: i64) -> BTreeMap<i32, (i64, i64)> {
        BTreeMap::from([(p, (a, b))])
    }

    #[test]
    fn out_of_order_acks_commit_only_the_stored_prefix() {
        let mut t = Tracker::default();
        t.cut(1, &r(0, 0, 9));
        t.cut(2, &BTreeMap::from([(0, (10, 19)), (1, (0, 4))]));
        t.cut(3, &r(0, 20, 29));
        assert_eq!(
            t.stored(2, &BTreeMap::from([(0, (10, 19)), (1, (0, 4))])),
            vec![(1, 5)]
        );
        assert_eq!(t.committable().get(&0), None);
        assert_eq!(t.stored(1, &r(0, 0, 9)), vec![(0, 20)]);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.stored(3, &r(0, 20, 29)), vec![(0, 30)]);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.committable()[&0], 30);
    }
}
