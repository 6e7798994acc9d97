//! The pipeline sampled once a second while the load runs and drains: rows of the run in
//! ClickHouse and the sinks' consumer lag, read side by side in one loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ess_load::lag::LagProbe;
use ess_load::report::Sample;
use ess_load::{RunId, Verifier};
use tokio::task::JoinHandle;

/// A running sampler; [`Sampler::stop`] returns what it saw.
#[derive(Debug)]
pub struct Sampler {
    started: Instant,
    task: JoinHandle<()>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
}

impl Sampler {
    /// Starts sampling `run` now; sample times count from this moment.
    pub fn start(verifier: Arc<Verifier>, probe: LagProbe, run: RunId) -> Self {
        let started = Instant::now();
        let samples: Arc<std::sync::Mutex<Vec<Sample>>> = Arc::default();
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
                    let (stored, lag) = tokio::join!(verifier.rows(run), lag);
                    let sample = Sample {
                        t,
                        stored: stored.ok(),
                        lag,
                    };
                    if (sample.stored.is_some() || sample.lag.is_some())
                        && let Ok(mut s) = samples.lock()
                    {
                        s.push(sample);
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

    /// Stops sampling; the samples in time order.
    pub fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let mut all = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        all.sort_by(|a, b| a.t.total_cmp(&b.t));
        all
    }
}
