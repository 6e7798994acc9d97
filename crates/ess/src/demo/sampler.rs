//! The pipeline sampled once a second while the load runs and drains: rows of the run in
//! ClickHouse and the sinks' consumer lag, read side by side in one loop. Every
//! [`DUPLICATE_SAMPLE_EVERY`]th sample also counts the run's distinct ids: those are the
//! duplicate samples of the verification ([`RawCount`]): merges of the ReplacingMergeTree run
//! during the demo (stopping them would reach `parts_to_throw_insert` on a full-size run), so
//! a duplicate is counted while it is there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ess_load::lag::LagProbe;
use ess_load::report::Sample;
use ess_load::{RawCount, RunId, Verifier};
use tokio::task::JoinHandle;

/// How many samples apart the run's distinct ids are counted. A row count is an index read
/// (~10 ms at two million rows); `uniqExact` reads and hashes every id of the run (~0.5 s of
/// both cores at the demo's 1.95 M rows on ClickHouse 18.16), so counting it every second
/// took a growing share of the machine from the pipeline it measures, and the load's rate
/// fell with it over the run.
pub const DUPLICATE_SAMPLE_EVERY: u64 = 10;

/// A running sampler; [`Sampler::stop`] returns what it saw.
#[derive(Debug)]
pub struct Sampler {
    started: Instant,
    task: JoinHandle<()>,
    samples: Arc<std::sync::Mutex<(Vec<Sample>, RawCount)>>,
}

impl Sampler {
    /// Starts sampling `run` now; sample times count from this moment.
    pub fn start(verifier: Arc<Verifier>, probe: LagProbe, run: RunId) -> Self {
        let started = Instant::now();
        let samples = Arc::new(std::sync::Mutex::new((Vec::new(), RawCount::sampled())));
        let probe = Arc::new(probe);
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for n in 0u64.. {
                    tick.tick().await;
                    let t = started.elapsed().as_secs_f64();
                    let probe = probe.clone();
                    let lag = async {
                        tokio::task::spawn_blocking(move || probe.lag().ok())
                            .await
                            .ok()
                            .flatten()
                    };
                    let counts = async {
                        if n % DUPLICATE_SAMPLE_EVERY == 0 {
                            verifier.counts(run).await.ok().map(|(r, u)| (r, Some(u)))
                        } else {
                            verifier.rows(run).await.ok().map(|r| (r, None))
                        }
                    };
                    let (counts, lag) = tokio::join!(counts, lag);
                    let sample = Sample {
                        t,
                        stored: counts.map(|c| c.0),
                        lag,
                    };
                    if let Ok(mut s) = samples.lock() {
                        if let Some((rows, Some(unique))) = counts {
                            s.1.add(rows, unique);
                        }
                        if sample.stored.is_some() || sample.lag.is_some() {
                            s.0.push(sample);
                        }
                    }
                }
            })
        };
        Self {
            started,
            task,
            samples,
        }
    }

    /// When sampling (and the load) started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops sampling; the samples in time order, and the duplicates they saw.
    pub fn stop(self) -> (Vec<Sample>, RawCount) {
        self.task.abort();
        let (mut all, raw_count) = self
            .samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| (Vec::new(), RawCount::sampled()));
        all.sort_by(|a, b| a.t.total_cmp(&b.t));
        (all, raw_count)
    }
}
