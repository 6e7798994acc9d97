//! `ess load`, `ess verify` and the run report: the load generator that proves a deployment,
//! the verifier that checks what it stored, and the report that shows both.
//!
//! Both commands are library entries of one shape, like `ess ingest` and `ess sink`: a plain
//! options struct ([`LoadCommand`], [`VerifyCommand`]) and a shutdown future. The flags that
//! fill them live in the binary (`crates/ess/src/cli.rs`); `ess demo` calls the same entries.
//!
//! Errors: the entries return `anyhow::Error`, because what they report is a chain of
//! unrelated failures (a file, ClickHouse, the broker, an HTTP target) read by a person at a
//! terminal, never matched on. The one error a caller may act on, a load that cannot start,
//! is the typed [`engine::LoadError`].
//!
//! # Layout
//! - [`ids`]: run ids, event ids that encode (run, sequence), compact sequence sets.
//! - [`generator`]: the realistic event generator (types, property sizes, re-sends, the
//!   events' `source`: the run id, or an API key's id).
//! - [`plan`]: open and closed models, k6-like stages.
//! - [`engine`]: the load options, the HTTP client, the open-model scheduler and the
//!   closed-model connections.
//! - [`http`]: a plain `GET` with the same client (readiness and metrics probes).
//! - [`stats`]: HDR latency histograms, per-second timeline, progress line, the summary.
//! - [`record`]: the run record `ess load` writes for `ess verify`.
//! - [`verify`]: which rows are a run's (its source, and its run id in the event ids),
//!   accepted vs stored vs unique, lost ids, replicas, end-to-end latency, and how duplicates
//!   were counted in raw rows (merges stopped, or sampled while merges ran).
//! - [`lag`]: consumer lag of the sink's group, from the broker.
//! - [`report`]: the comparison table, the HTML report and the PNG chart.

pub mod engine;
pub mod generator;
pub mod http;
pub mod ids;
pub mod lag;
pub mod plan;
pub mod record;
pub mod report;
pub mod stats;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use ess_core::config::Config;

pub use engine::{LoadOptions, run as run_load};
pub use ids::RunId;
pub use record::RunRecord;
pub use stats::LoadSummary;
pub use verify::{RawCount, Verification, Verifier};

/// What `ess load` does: send the load, write the run record, report.
#[derive(Debug, Clone)]
pub struct LoadCommand {
    /// The run itself.
    pub options: LoadOptions,
    /// Run the generator on this many threads of its own (`None`: the caller's runtime).
    pub threads: Option<usize>,
    /// Where to write the run record.
    pub record: PathBuf,
    /// The run fails when more than this percentage of requests fail.
    pub max_error_pct: f64,
    /// Print the summary as JSON on stdout instead of the text summary.
    pub json: bool,
}

/// What a load run left: its record (summary and accepted events), where that was written,
/// and whether the run met its error limit.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The summary and the accepted sequence numbers.
    pub record: RunRecord,
    /// Where the record was written.
    pub path: PathBuf,
    /// Requests were sent, at most `max_error_pct` failed, and nothing interrupted the run.
    pub ok: bool,
}

/// Runs the load until its plan ends or `shutdown` resolves; writes and prints the result.
pub async fn load(
    command: LoadCommand,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Loaded> {
    let LoadCommand {
        options,
        threads,
        record: path,
        max_error_pct,
        json,
    } = command;
    let run = options.run;
    let source = options.generator.source.clone();
    if !json {
        match &source {
            Some(source) => eprintln!("ess load: run {run} (source {source}) → {}", options.target),
            None => eprintln!("ess load: run {run} → {}", options.target),
        }
    }
    let (summary, accepted) = match threads {
        None => run_load(options, shutdown).await?,
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
            tokio::task::spawn_blocking(move || runtime.block_on(run_load(options, shutdown)))
                .await??
        }
    };
    let mut record = RunRecord::new(summary, &accepted);
    record.source = source.filter(|s| *s != run.to_string());
    record.write(&path)?;
    let summary = &record.summary;
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{}", summary.render());
        println!("  record ..........................: {}", path.display());
        println!("  verify with ....................: ess verify --run {run}");
    }
    let failed_pct = 100.0 - summary.success_pct;
    let ok = summary.requests > 0 && failed_pct <= max_error_pct && !summary.interrupted;
    Ok(Loaded { record, path, ok })
}

/// What `ess verify` does: check one run record against ClickHouse.
#[derive(Debug, Clone)]
pub struct VerifyCommand {
    /// The run record written by `ess load`.
    pub record: PathBuf,
    /// Wait up to this long for every accepted event to be stored and the replicas to agree.
    pub wait: Duration,
    /// How many lost ids to list.
    pub list: usize,
    /// Print the verification as JSON on stdout instead of the text report.
    pub json: bool,
    /// How duplicates were kept from merges before this check: merges stopped for the run,
    /// or the caller's samples taken while it ran ([`RawCount::sampled`] when there are none:
    /// the counts taken while waiting are the samples).
    pub raw_count: RawCount,
}

/// Verifies a run and prints the verdict (its `ok` says whether nothing was lost or
/// duplicated). Stops with an error when `shutdown` resolves first.
pub async fn verify(
    config: &Config,
    command: VerifyCommand,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Verification> {
    let work = async {
        let record = RunRecord::read(&command.record)?;
        let verifier = Verifier::connect(config).await?;
        verifier
            .verify(&record, command.wait, command.list, command.raw_count)
            .await
    };
    let v = tokio::select! {
        v = work => v?,
        _ = shutdown => anyhow::bail!("interrupted before the verification finished"),
    };
    if command.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", v.render());
    }
    Ok(v)
}
