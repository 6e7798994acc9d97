//! What the senders report and what the collector makes of it: HDR histograms of latency (in
//! microseconds), counts by status, per-second timelines, the set of accepted sequences, and
//! the live progress line.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::{RunId, SeqSet};
use crate::plan::Model;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// The server answered with this status.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// The connection broke (reset, closed early, protocol error).
    Io,
}

impl RequestOutcome {
    /// Whether the server accepted the request (2xx).
    pub fn is_ok(self) -> bool {
        matches!(self, RequestOutcome::Status(s) if (200..300).contains(&s))
    }

    /// How it is counted: the status code, or `timeout`, `connect_error`, `io_error`.
    pub fn label(self) -> String {
        match self {
            RequestOutcome::Status(s) => s.to_string(),
            RequestOutcome::Timeout => "timeout".into(),
            RequestOutcome::Connect => "connect_error".into(),
            RequestOutcome::Io => "io_error".into(),
        }
    }
}

/// One finished request, as a sender reports it.
#[derive(Debug)]
pub struct Done {
    /// Latency in microseconds: from the scheduled start (open model) or the actual start
    /// (closed model) to the end of the response body.
    pub latency_us: u64,
    /// How it ended.
    pub outcome: RequestOutcome,
    /// Events in the request.
    pub events: u32,
    /// Of those, re-sends of earlier events.
    pub resent: u32,
    /// Sequence numbers the server accepted.
    pub accepted: Vec<u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl LatencyMs {
    /// Percentiles of a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run (by completion time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the start.
    pub t: u64,
    /// Requests finished in it.
    pub requests: u64,
    /// Of those, accepted (2xx).
    pub ok: u64,
    /// Of those, failed (non-2xx, timeouts, connection errors).
    pub failed: u64,
    /// Events accepted in it.
    pub events_ok: u64,
    /// Latency percentiles of the requests finished in it.
    pub latency: LatencyMs,
}

/// The result of a load run, k6-style.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Run id (also the events' `source`).
    pub run: RunId,
    /// Base URL loaded.
    pub target: String,
    /// Open or closed model.
    pub model: Model,
    /// How the load was described (rate or connections, stages).
    pub shape: String,
    /// Events per request (1: `POST /v1/events`; more: `/v1/events/batch`).
    pub batch: usize,
    /// Start, ms since the epoch.
    pub started_ms: i64,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// Requests finished.
    pub requests: u64,
    /// Requests answered 2xx.
    pub requests_ok: u64,
    /// Requests that failed: non-2xx, timeouts, connection errors.
    pub requests_failed: u64,
    /// Events sent, re-sends included.
    pub events_sent: u64,
    /// Distinct sequence numbers issued.
    pub unique_events: u64,
    /// Distinct events the server accepted (2xx).
    pub events_accepted: u64,
    /// Re-sends of earlier events.
    pub resent: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Accepted events per second over the run.
    pub events_per_s: f64,
    /// Share of requests answered 2xx, percent.
    pub success_pct: f64,
    /// Request latency percentiles.
    pub latency: LatencyMs,
    /// Whether latency is measured from the scheduled start (open model).
    pub corrected_for_coordinated_omission: bool,
    /// Requests by outcome: status code, `timeout`, `connect_error`, `io_error`.
    pub outcomes: BTreeMap<String, u64>,
    /// Whether the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// Per-second timeline.
    pub timeline: Vec<SecondStats>,
}

/// Counters the senders and the progress line share.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests in flight.
    pub inflight: AtomicU64,
}

/// What the progress line needs to say how much is left.
#[derive(Debug, Clone, Copy)]
pub struct RunLength {
    /// Planned length.
    pub duration: Option<Duration>,
    /// Event limit.
    pub events: Option<u64>,
}

/// Everything the collector accumulated.
#[derive(Debug)]
pub struct Collected {
    /// Latency of all requests, µs.
    pub total: Histogram<u64>,
    /// Per second.
    pub timeline: Vec<SecondStats>,
    /// By outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests.
    pub requests: u64,
    /// 2xx requests.
    pub ok: u64,
    /// Events sent.
    pub events_sent: u64,
    /// Re-sends.
    pub resent: u64,
    /// Accepted sequences.
    pub accepted: SeqSet,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits; values beyond are clamped (saturating record).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

/// Receives [`Done`] messages until every sender is gone; draws the progress line each second.
pub async fn collect(
    mut rx: mpsc::Receiver<Vec<Done>>,
    live: Arc<Live>,
    limits: RunLength,
    progress: bool,
    run: RunId,
) -> Collected {
    let start = Instant::now();
    let mut c = Collected {
        total: histogram(),
        timeline: Vec::new(),
        outcomes: BTreeMap::new(),
        requests: 0,
        ok: 0,
        events_sent: 0,
        resent: 0,
        accepted: SeqSet::new(),
    };
    let mut outcomes: std::collections::HashMap<RequestOutcome, u64> = Default::default();
    let mut second = SecondStats::default();
    let mut second_hist = histogram();
    let mut recent = histogram();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let plain = progress && !std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(batch) = msg else { break };
                let t = start.elapsed().as_secs();
                while t > second.t {
                    finish_second(&mut c, &mut second, &mut second_hist);
                }
                for done in batch {
                    c.requests += 1;
                    c.events_sent += u64::from(done.events);
                    c.resent += u64::from(done.resent);
                    second.requests += 1;
                    c.total.saturating_record(done.latency_us.max(1));
                    second_hist.saturating_record(done.latency_us.max(1));
                    recent.saturating_record(done.latency_us.max(1));
                    if done.outcome.is_ok() {
                        c.ok += 1;
                        second.ok += 1;
                        second.events_ok += done.accepted.len() as u64;
                        for seq in done.accepted {
                            c.accepted.insert(seq);
                        }
                    } else {
                        second.failed += 1;
                    }
                    *outcomes.entry(done.outcome).or_default() += 1;
                }
            }
            _ = tick.tick() => {
                let elapsed = start.elapsed();
                let line = progress_line(&c, &recent, &live, limits, elapsed, run);
                recent.reset();
                if let Some(bar) = &bar {
                    if plain {
                        if elapsed.as_secs().is_multiple_of(10) {
                            eprintln!("{line}");
                        }
                    } else {
                        bar.set_message(line);
                        bar.tick();
                    }
                }
            }
        }
    }
    if second.requests > 0 {
        finish_second(&mut c, &mut second, &mut second_hist);
    }
    for (outcome, n) in outcomes {
        *c.outcomes.entry(outcome.label()).or_default() += n;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    c
}

fn finish_second(c: &mut Collected, second: &mut SecondStats, hist: &mut Histogram<u64>) {
    second.latency = LatencyMs::of(hist);
    let next = second.t + 1;
    c.timeline.push(std::mem::take(second));
    second.t = next;
    hist.reset();
}

fn progress_line(
    c: &Collected,
    recent: &Histogram<u64>,
    live: &Live,
    limits: RunLength,
    elapsed: Duration,
    run: RunId,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let last = c.timeline.last().map(|s| s.requests).unwrap_or(0);
    let failed = c.requests - c.ok;
    let success = if c.requests == 0 {
        100.0
    } else {
        100.0 * c.ok as f64 / c.requests as f64
    };
    let remaining = match (limits.duration, limits.events) {
        (Some(d), _) => format!(" / {}", clock(d)),
        (None, Some(n)) => {
            let rate = c.accepted.len() as f64 / secs;
            let left = n.saturating_sub(c.accepted.len());
            if rate > 0.0 {
                format!(
                    " (~{} left)",
                    clock(Duration::from_secs_f64(left as f64 / rate))
                )
            } else {
                String::new()
            }
        }
        (None, None) => String::new(),
    };
    format!(
        "run {run}  {}{remaining}  {} req/s (avg {})  events ok {}  success {:.2}%  errors {}  p95 {:.1} ms  in flight {}",
        clock(elapsed),
        group(last),
        group((c.requests as f64 / secs) as u64),
        group(c.accepted.len()),
        success,
        group(failed),
        recent.value_at_quantile(0.95) as f64 / 1000.0,
        live.inflight.load(Ordering::Relaxed),
    )
}

/// `m:ss`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// `1952643` → `1,952,643`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl LoadSummary {
    /// The k6-style text summary.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let row = |s: &mut String, name: &str, value: String| {
            let dots = ".".repeat(30usize.saturating_sub(name.len()));
            let _ = writeln!(s, "  {name} {dots}: {value}");
        };
        row(
            &mut s,
            "run",
            format!("{}  ({}, {})", self.run, self.target, self.shape),
        );
        row(
            &mut s,
            "http_reqs",
            format!("{}  {:.1}/s", group(self.requests), self.rps),
        );
        row(
            &mut s,
            "http_req_failed",
            format!(
                "{:.2}%  ✓ {}  ✗ {}",
                100.0 - self.success_pct,
                group(self.requests_ok),
                group(self.requests_failed)
            ),
        );
        let l = &self.latency;
        row(
            &mut s,
            "http_req_duration",
            format!(
                "avg={:.2}ms min={:.2}ms p50={:.2}ms p90={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms{}",
                l.mean,
                l.min,
                l.p50,
                l.p90,
                l.p95,
                l.p99,
                l.max,
                if self.corrected_for_coordinated_omission {
                    "  (from scheduled start)"
                } else {
                    ""
                }
            ),
        );
        row(
            &mut s,
            "events",
            format!(
                "{} accepted of {} unique ({} sent, {} re-sent)  {:.1}/s",
                group(self.events_accepted),
                group(self.unique_events),
                group(self.events_sent),
                group(self.resent),
                self.events_per_s
            ),
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={}", group(*v)))
            .collect();
        row(&mut s, "outcomes", outcomes.join("  "));
        row(
            &mut s,
            "duration",
            format!(
                "{:.1}s{}",
                self.duration_s,
                if self.interrupted {
                    "  (interrupted)"
                } else {
                    ""
                }
            ),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_952_643), "1,952,643");
        assert_eq!(clock(Duration::from_secs(210)), "3:30");
    }

    #[tokio::test]
    async fn the_collector_counts_every_outcome() {
        let (tx, rx) = mpsc::channel(16);
        let live = Arc::new(Live::default());
        let limits = RunLength {
            duration: None,
            events: None,
        };
        let handle = tokio::spawn(collect(rx, live, limits, false, RunId::random()));
        for (i, outcome) in [
            RequestOutcome::Status(202),
            RequestOutcome::Status(202),
            RequestOutcome::Status(429),
            RequestOutcome::Timeout,
            RequestOutcome::Connect,
        ]
        .into_iter()
        .enumerate()
        {
            let accepted = if outcome.is_ok() {
                vec![i as u64]
            } else {
                vec![]
            };
            tx.send(vec![Done {
                latency_us: 1000 * (i as u64 + 1),
                outcome,
                events: 1,
                resent: 0,
                accepted,
            }])
            .await
            .unwrap();
        }
        drop(tx);
        let c = handle.await.unwrap();
        assert_eq!(c.requests, 5);
        assert_eq!(c.ok, 2);
        assert_eq!(c.accepted.len(), 2);
        assert_eq!(c.outcomes["202"], 2);
        assert_eq!(c.outcomes["429"], 1);
        assert_eq!(c.outcomes["timeout"], 1);
        assert_eq!(c.outcomes["connect_error"], 1);
        let sum: u64 = c.timeline.iter().map(|s| s.requests).sum();
        assert_eq!(sum, 5);
        assert!(c.total.max().abs_diff(5000) <= 5, "max {}", c.total.max());
    }
}
