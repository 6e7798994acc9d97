//! The pipeline sampled once a second while the load runs and drains: rows and distinct ids
//! of the run in ClickHouse and the sinks' consumer lag, read side by side in one loop. The
//! row counts are also the duplicate samples of the verification ([`RawCount`]): merges of
//! the ReplacingMergeTree run during the demo (stopping them would reach
//! `parts_to_throw_insert` on a full-size run), so a duplicate is counted while it is there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ess_load::lag::LagProbe;
use ess_load::report::Sample;
use ess_load::{RawCount, RunId, Verifier};
use tokio::task::JoinHandle;

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
                loop {
                    tick.tick().await;
                    let t = started.elapsed().as_secs_f64();
                    let probe = probe.clone();
                    let lag = async {
                        tokio::task::spawn_blocking(move || probe.lag().ok())
                            .await
                            .ok()
                            .flatten()
                    };
                    let (counts, lag) = tokio::join!(verifier.counts(run), lag);
                    let counts = counts.ok();
                    let sample = Sample {
                        t,
                        stored: counts.map(|c| c.0),
                        lag,
                    };
                    if let Ok(mut s) = samples.lock() {
                        if let Some((rows, unique)) = counts {
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
