//! Run ids, event ids that encode (run, sequence), and compact sets of sequence numbers.
//!
//! An event id is a UUID version 8 (custom layout, RFC 9562):
//!
//! ```text
//! bytes 0..6   run id (48 bits, big-endian)
//! byte  6      0x80 (version 8)
//! byte  7      0x00
//! bytes 8..16  sequence number (62 bits, big-endian) with the variant bits `10` on top
//! ```
//!
//! so the verifier can tell from a stored id which run sent it and which sequence it was.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest sequence number an id can hold.
pub const MAX_SEQ: u64 = (1 << 62) - 1;

/// A load run's id: 48 random bits, printed as 12 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(u64);

impl RunId {
    /// A fresh random run id (never zero).
    pub fn random() -> Self {
        loop {
            let v = rand::random::<u64>() & 0xffff_ffff_ffff;
            if v != 0 {
                return Self(v);
            }
        }
    }

    /// The id from its 48-bit value; `None` when it does not fit.
    pub fn from_u64(v: u64) -> Option<Self> {
        (v <= 0xffff_ffff_ffff).then_some(Self(v))
    }

    /// The 48-bit value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id of event `seq` of this run.
    pub fn event_id(self, seq: u64) -> Uuid {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&self.0.to_be_bytes()[2..]);
        b[6] = 0x80;
        b[7] = 0;
        let low = (seq & MAX_SEQ) | (0b10 << 62);
        b[8..].copy_from_slice(&low.to_be_bytes());
        Uuid::from_bytes(b)
    }
}

/// Reads `(run, sequence)` back from an event id made by [`RunId::event_id`].
pub fn decode(id: &Uuid) -> Option<(RunId, u64)> {
    let b = id.as_bytes();
    if b[6] != 0x80 || b[7] != 0 || b[8] >> 6 != 0b10 {
        return None;
    }
    let mut run = [0u8; 8];
    run[2..].copy_from_slice(&b[..6]);
    let mut low = [0u8; 8];
    low.copy_from_slice(&b[8..]);
    Some((
        RunId(u64::from_be_bytes(run)),
        u64::from_be_bytes(low) & MAX_SEQ,
    ))
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// Why a run id could not be read.
#[derive(Debug, thiserror::Error)]
#[error("a run id is 1 to 12 hex digits, got {0:?}")]
pub struct BadRunId(String);

impl FromStr for RunId {
    type Err = BadRunId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || t.len() > 12 {
            return Err(BadRunId(s.to_owned()));
        }
        u64::from_str_radix(t, 16)
            .ok()
            .and_then(Self::from_u64)
            .ok_or_else(|| BadRunId(s.to_owned()))
    }
}

impl Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of sequence numbers `0..len` as a bitmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    count: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`; returns whether it was new.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let new = self.words[word] & bit == 0;
        if new {
            self.words[word] |= bit;
            self.count += 1;
        }
        new
    }

    /// Adds `start..end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        for seq in start..end {
            self.insert(seq);
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// How many sequence numbers it holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + bit)
            })
        })
    }

    /// Members of `self` missing from `other`, in increasing order.
    pub fn difference<'a>(&'a self, other: &'a SeqSet) -> impl Iterator<Item = u64> + 'a {
        self.iter().filter(move |s| !other.contains(*s))
    }

    /// The set as half-open ranges `[start, end)`, in increasing order: compact when the
    /// members are mostly contiguous, as accepted sequences of a healthy run are.
    pub fn to_ranges(&self) -> Vec<[u64; 2]> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for seq in self.iter() {
            match out.last_mut() {
                Some(last) if last[1] == seq => last[1] = seq + 1,
                _ => out.push([seq, seq + 1]),
            }
        }
        out
    }

    /// The set from ranges made by [`SeqSet::to_ranges`].
    pub fn from_ranges(ranges: &[[u64; 2]]) -> Self {
        let mut set = Self::new();
        for [start, end] in ranges {
            set.insert_range(*start, *end);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_are_valid_v8_uuids() {
        let run = RunId::from_u64(0xabcd_ef01_2345).unwrap();
        for seq in [0, 1, 63, 64, 1_952_642, MAX_SEQ] {
            let id = run.event_id(seq);
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(decode(&id), Some((run, seq)));
        }
        assert_eq!(run.to_string(), "abcdef012345");
        assert_eq!("abcdef012345".parse::<RunId>().unwrap(), run);
        assert!("xyz".parse::<RunId>().is_err());
        assert!("1234567890abc".parse::<RunId>().is_err());
        assert_eq!(decode(&Uuid::new_v4()), None);
    }

    #[test]
    fn different_runs_never_share_ids() {
        let a = RunId::from_u64(1).unwrap();
        let b = RunId::from_u64(2).unwrap();
        assert_ne!(a.event_id(7), b.event_id(7));
    }

    #[test]
    fn seq_set_ranges_round_trip() {
        let mut set = SeqSet::new();
        set.insert_range(0, 100);
        set.insert(150);
        set.insert_range(200, 300);
        assert!(!set.insert(5));
        assert_eq!(set.len(), 201);
        let ranges = set.to_ranges();
        assert_eq!(ranges, vec![[0, 100], [150, 151], [200, 300]]);
        assert_eq!(SeqSet::from_ranges(&ranges), set);
        let mut stored = SeqSet::new();
        stored.insert_range(0, 300);
        assert_eq!(set.difference(&stored).count(), 0);
        let lost: Vec<u64> = stored.difference(&set).take(3).collect();
        assert_eq!(lost, vec![100, 101, 102]);
    }
}
