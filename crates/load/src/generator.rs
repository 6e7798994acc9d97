//! The event generator: several event types with realistic weights, property sizes drawn from
//! a log-normal distribution, ids derived from the run id and a sequence number, and an
//! optional share of re-sent events (same id, same content) to exercise deduplication.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use ess_core::wire::Millis;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::ids::RunId;

/// Event types and their weights (out of 100), roughly a web shop's mix.
pub const TYPES: [(&str, u32); 6] = [
    ("page_view", 50),
    ("click", 22),
    ("search", 10),
    ("add_to_cart", 9),
    ("purchase", 5),
    ("signup", 4),
];

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

const PATHS: [&str; 8] = [
    "/",
    "/catalog",
    "/catalog/shoes",
    "/product/1843",
    "/product/27",
    "/cart",
    "/checkout",
    "/account",
];

/// How the generator sizes properties and how often it re-sends.
#[derive(Debug, Clone)]
pub struct GenSettings {
    /// Median size of the `properties` object, in bytes of JSON.
    pub median_props_bytes: u32,
    /// Spread of the log-normal size distribution (sigma of the underlying normal).
    pub props_sigma: f64,
    /// Largest `properties` object, in bytes (the ingest default accepts 32 KiB).
    pub max_props_bytes: u32,
    /// Share of events (0..1) that re-send an earlier event of the run instead of a new one.
    pub dup_ratio: f64,
    /// The events' `source`; `None`: the run id. With auth on, ingest takes only events whose
    /// source is the API key's id.
    pub source: Option<String>,
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            median_props_bytes: 160,
            props_sigma: 0.6,
            max_props_bytes: 8 * 1024,
            dup_ratio: 0.0,
            source: None,
        }
    }
}

/// One request's worth of events.
#[derive(Debug, Clone, Default)]
pub struct Body {
    /// The JSON text (one object, or an array for batches).
    pub json: String,
    /// Sequence numbers of the events in it, fresh and re-sent.
    pub seqs: Vec<u64>,
    /// How many of them are re-sends.
    pub resent: u32,
}

/// Hands out sequence numbers and writes events; shared by every sender of a run.
#[derive(Debug)]
pub struct Generator {
    run: RunId,
    /// The events' `source`, as a JSON string literal.
    source: String,
    settings: GenSettings,
    next: AtomicU64,
    limit: u64,
}

impl Generator {
    /// A generator for `run`, issuing at most `limit` new sequence numbers.
    pub fn new(run: RunId, settings: GenSettings, limit: Option<u64>) -> Self {
        Self {
            run,
            // As a JSON string literal (a `--source` may hold any character).
            source: serde_json::Value::from(
                settings.source.clone().unwrap_or_else(|| run.to_string()),
            )
            .to_string(),
            settings,
            next: AtomicU64::new(0),
            limit: limit.unwrap_or(crate::ids::MAX_SEQ),
        }
    }

    /// How many new sequence numbers were handed out.
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.limit)
    }

    /// Whether the event limit is reached.
    pub fn exhausted(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= self.limit
    }

    /// The next request body with up to `events` events (`batch` writes a JSON array even for
    /// one event); `None` once the limit is reached.
    pub fn body(&self, events: usize, batch: bool, rng: &mut SmallRng) -> Option<Body> {
        let mut body = Body {
            json: String::with_capacity(events * (self.settings.median_props_bytes as usize + 160)),
            seqs: Vec::with_capacity(events),
            resent: 0,
        };
        if batch {
            body.json.push('[');
        }
        let now = Millis::now().to_rfc3339();
        for _ in 0..events {
            let issued = self.next.load(Ordering::Relaxed);
            let seq = if self.settings.dup_ratio > 0.0
                && issued > 0
                && rng.random::<f64>() < self.settings.dup_ratio
            {
                body.resent += 1;
                // A recent event, as a client retrying after a lost response would.
                let max = issued.min(self.limit);
                max - 1 - rng.random_range(0..max.min(10_000))
            } else {
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                if seq >= self.limit {
                    break;
                }
                seq
            };
            if !body.seqs.is_empty() {
                body.json.push(',');
            }
            self.write_event(&mut body.json, seq, &now);
            body.seqs.push(seq);
        }
        if body.seqs.is_empty() {
            return None;
        }
        if batch {
            body.json.push(']');
        }
        Some(body)
    }

    /// Writes event `seq`. Everything but the timestamp follows from (run, seq), so a re-sent
    /// event carries the same id, type and properties.
    pub fn write_event(&self, out: &mut String, seq: u64, timestamp: &str) {
        let mut rng = SmallRng::seed_from_u64(self.run.as_u64().rotate_left(17) ^ seq);
        let kind = pick_type(rng.random_range(0..100));
        let id = self.run.event_id(seq);
        let _ = write!(
            out,
            r#"{{"id":"{id}","type":"{kind}","timestamp":"{timestamp}","source":{src},"properties":{{"seq":{seq},"session":"{session:016x}","user":"u{user}","path":"{path}""#,
            src = self.source,
            session = rng.random::<u64>(),
            user = rng.random_range(0..1_000_000u32),
            path = PATHS[rng.random_range(0..PATHS.len())],
        );
        match kind {
            "purchase" | "add_to_cart" => {
                let _ = write!(
                    out,
                    r#","sku":"SKU-{}","qty":{},"price_cents":{}"#,
                    rng.random_range(1000..99_999u32),
                    rng.random_range(1..5u32),
                    rng.random_range(199..99_999u32)
                );
            }
            "search" => {
                let _ = write!(out, r#","query":"q{}""#, rng.random_range(0..50_000u32));
            }
            _ => {}
        }
        // Pad to the drawn size with a string property.
        let target = self.props_size(&mut rng);
        let props_so_far = out.len() - out.rfind(r#""properties":"#).unwrap_or(out.len());
        if target > props_so_far + 12 {
            out.push_str(r#","pad":""#);
            let mut pad = target - props_so_far - 12;
            while pad > 0 {
                let n = pad.min(ALPHABET.len());
                out.push_str(&ALPHABET[..n]);
                pad -= n;
            }
            out.push('"');
        }
        out.push_str("}}");
    }

    fn props_size(&self, rng: &mut SmallRng) -> usize {
        // Box–Muller: one standard normal draw.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let size =
            f64::from(self.settings.median_props_bytes) * (self.settings.props_sigma * z).exp();
        size.clamp(32.0, f64::from(self.settings.max_props_bytes)) as usize
    }
}

fn pick_type(mut roll: u32) -> &'static str {
    for (name, weight) in TYPES {
        if roll < weight {
            return name;
        }
        roll -= weight;
    }
    TYPES[0].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::decode;

    fn generator(dup_ratio: f64, limit: Option<u64>) -> Generator {
        let settings = GenSettings {
            dup_ratio,
            ..GenSettings::default()
        };
        Generator::new(RunId::from_u64(0x42).unwrap(), settings, limit)
    }

    #[test]
    fn events_are_valid_json_with_decodable_ids() {
        let g = generator(0.0, None);
        let mut rng = SmallRng::seed_from_u64(1);
        let body = g.body(50, true, &mut rng).unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_str(&body.json).unwrap();
        assert_eq!(events.len(), 50);
        for (i, e) in events.iter().enumerate() {
            let id: uuid::Uuid = e["id"].as_str().unwrap().parse().unwrap();
            assert_eq!(decode(&id).unwrap().1, i as u64);
            assert_eq!(e["source"], "000000000042");
            assert!(e["properties"].is_object());
            assert!(TYPES.iter().any(|(t, _)| e["type"] == *t));
        }
        let single = g.body(1, false, &mut rng).unwrap();
        let one: serde_json::Value = serde_json::from_str(&single.json).unwrap();
        assert!(one.is_object());
        assert_eq!(single.seqs, vec![50]);
    }

    #[test]
    fn property_sizes_vary_around_the_median() {
        let g = generator(0.0, None);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut sizes: Vec<usize> = (0..2000)
            .map(|_| {
                let b = g.body(1, false, &mut rng).unwrap();
                let v: serde_json::Value = serde_json::from_str(&b.json).unwrap();
                v["properties"].to_string().len()
            })
            .collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        assert!((110..230).contains(&median), "median {median}");
        assert!(sizes[sizes.len() - 1] > 2 * median);
    }

    #[test]
    fn the_limit_and_resends_are_honoured() {
        let g = generator(0.3, Some(1000));
        let mut rng = SmallRng::seed_from_u64(3);
        let mut fresh = std::collections::HashSet::new();
        let mut resent = 0;
        while let Some(b) = g.body(10, true, &mut rng) {
            resent += b.resent;
            for s in &b.seqs {
                assert!(*s < 1000);
                fresh.insert(*s);
            }
        }
        assert_eq!(fresh.len(), 1000);
        assert!(resent > 200, "resent {resent}");
        assert!(g.exhausted());
    }

    #[test]
    fn a_resent_event_has_the_same_content() {
        let g = generator(0.0, None);
        let (mut a, mut b) = (String::new(), String::new());
        g.write_event(&mut a, 7, "2026-11-24T08:00:00.000Z");
        g.write_event(&mut b, 7, "2026-11-24T08:00:00.000Z");
        assert_eq!(a, b);
    }
}
