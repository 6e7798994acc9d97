//! `ess load`, `ess verify` and the run report: the load generator that proves a deployment,
//! the verifier that checks what it stored, and the report that shows both.
//!
//! # Layout
//! - [`ids`]: run ids, event ids that encode (run, sequence), compact sequence sets.
//! - [`generator`]: the realistic event generator (types, property sizes, re-sends).
//! - [`plan`]: open and closed models, k6-like stages.
//! - [`engine`]: the HTTP client, the open-model scheduler and the closed-model connections.
//! - [`stats`]: HDR latency histograms, per-second timeline, progress line, the summary.
//! - [`record`]: the run record `ess load` writes for `ess verify`.
//! - [`verify`]: accepted vs stored vs unique, lost ids, replicas, end-to-end latency.
//! - [`lag`]: consumer lag of the sink's group, from the broker.
//! - [`report`]: the comparison table, the HTML report and the PNG chart.

pub mod engine;
pub mod generator;
pub mod ids;
pub mod lag;
pub mod plan;
pub mod record;
pub mod report;
pub mod stats;
pub mod verify;

use std::path::PathBuf;
use std::time::Duration;

use ess_core::config::Config;

pub use engine::{LoadOptions, run as run_load};
pub use ids::RunId;
pub use record::RunRecord;
pub use stats::LoadSummary;
pub use verify::{Verification, Verifier};

/// `ess load` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the ingest server [default: load.target].
    #[arg(long)]
    pub target: Option<String>,
    /// API key sent as `Authorization: Bearer …` [default: load.api_key].
    #[arg(long, env = "ESS_LOAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Open model: requests started per second, whatever the responses do.
    #[arg(long, conflicts_with = "connections")]
    pub rate: Option<f64>,
    /// Closed model: connections, each sending its next request when the last one ends
    /// [default: load.connections].
    #[arg(long)]
    pub connections: Option<usize>,
    /// k6-like stages `DURATION:TARGET,…` (target = requests/s with --rate or --open,
    /// connections otherwise), ramped linearly from the previous target.
    #[arg(long)]
    pub stages: Option<String>,
    /// Use the open model with --stages (the start rate is 0 unless --rate gives one).
    #[arg(long)]
    pub open: bool,
    /// Stop after this long, e.g. `3m30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many distinct events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per request: 1 posts single events to /v1/events, more posts arrays to
    /// /v1/events/batch [default: load.batch].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Per-request timeout [default: load.timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Open model: most requests in flight.
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: usize,
    /// Share of events (0..1) that re-send an earlier event (same id) to exercise dedup.
    #[arg(long, default_value_t = 0.0)]
    pub dup_ratio: f64,
    /// Median size of an event's properties, bytes.
    #[arg(long, default_value_t = 160)]
    pub props_bytes: u32,
    /// Run id (12 hex digits) [default: random].
    #[arg(long)]
    pub run: Option<RunId>,
    /// Where to write the run record [default: <stack.state_dir>/runs/<run>.json].
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Fail (exit 1) when more than this percentage of requests fail.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_pct: f64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Run the generator on this many threads of its own [default: the shared runtime, one
    /// thread per core]. `--threads 1` compares fairly with `wrk -t1`.
    #[arg(long)]
    pub threads: Option<usize>,
}

impl LoadArgs {
    /// The load options these flags describe, with `config`'s defaults.
    pub fn options(&self, config: &Config) -> anyhow::Result<LoadOptions> {
        let stages = match &self.stages {
            Some(text) => plan::parse_stages(text)?,
            None => Vec::new(),
        };
        let open = self.rate.is_some() || self.open;
        let model = if open {
            plan::Model::Open
        } else {
            plan::Model::Closed
        };
        let start = match model {
            plan::Model::Open if stages.is_empty() => self.rate.unwrap_or(0.0),
            plan::Model::Open => self.rate.unwrap_or(0.0),
            plan::Model::Closed if stages.is_empty() => {
                self.connections.unwrap_or(config.load.connections) as f64
            }
            plan::Model::Closed => self.connections.unwrap_or(0) as f64,
        };
        if stages.is_empty() && start <= 0.0 {
            anyhow::bail!("nothing to send: give --rate, --connections or --stages");
        }
        if !(0.0..1.0).contains(&self.dup_ratio) {
            anyhow::bail!("--dup-ratio must be in [0, 1)");
        }
        let duration = match (self.duration, self.events, stages.is_empty()) {
            (None, None, true) => Some(Duration::from_secs(30)),
            (d, _, _) => d,
        };
        Ok(LoadOptions {
            target: self
                .target
                .clone()
                .unwrap_or_else(|| config.load.target.clone()),
            api_key: self
                .api_key
                .clone()
                .or_else(|| Some(config.load.api_key.clone()))
                .filter(|k| !k.is_empty()),
            plan: plan::Plan {
                model,
                start,
                stages,
            },
            batch: self.batch.unwrap_or(config.load.batch).max(1),
            timeout: self.timeout.unwrap_or(config.load.timeout),
            max_events: self.events,
            duration,
            max_inflight: self.max_inflight,
            generator: generator::GenSettings {
                median_props_bytes: self.props_bytes.max(16),
                dup_ratio: self.dup_ratio,
                ..generator::GenSettings::default()
            },
            run: self.run.unwrap_or_else(RunId::random),
            progress: !self.quiet && !self.json,
        })
    }
}

/// `ess verify` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Run id printed by `ess load`.
    #[arg(long, required_unless_present = "record")]
    pub run: Option<RunId>,
    /// The run record to check [default: <stack.state_dir>/runs/<run>.json].
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Wait up to this long for every accepted event to be stored and the replicas to agree.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// How many lost ids to list.
    #[arg(long, default_value_t = 10)]
    pub list: usize,
    /// Print the verification as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the load; returns whether the share of failed requests stayed within the limit.
pub async fn load(config: &Config, args: LoadArgs) -> anyhow::Result<bool> {
    let opts = args.options(config)?;
    let run = opts.run;
    if !args.json {
        eprintln!("ess load: run {run} → {}", opts.target);
    }
    let (summary, accepted) = match args.threads {
        None => run_load(opts, ctrl_c()).await?,
        Some(threads) => {
            let runtime = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()?
            };
            tokio::task::spawn_blocking(move || runtime.block_on(run_load(opts, ctrl_c())))
                .await??
        }
    };
    let path = args
        .record
        .clone()
        .unwrap_or_else(|| record::default_path(&config.stack.state_dir, run));
    RunRecord::new(summary.clone(), &accepted).write(&path)?;
    let failed_pct = 100.0 - summary.success_pct;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
        println!("  record ..........................: {}", path.display());
        println!("  verify with ....................: ess verify --run {run}");
    }
    Ok(summary.requests > 0 && failed_pct <= args.max_error_pct && !summary.interrupted)
}

/// Verifies a run; returns whether nothing was lost or duplicated.
pub async fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<bool> {
    let path = match (&args.record, args.run) {
        (Some(p), _) => p.clone(),
        (None, Some(run)) => record::default_path(&config.stack.state_dir, run),
        (None, None) => anyhow::bail!("give --run or --record"),
    };
    let record = RunRecord::read(&path)?;
    let verifier = Verifier::connect(config).await?;
    let v = verifier.verify(&record, args.wait, args.list).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", v.render());
    }
    Ok(v.ok)
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
