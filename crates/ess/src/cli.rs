//! Subcommands and how they wire the library crates.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ess_core::config::{BrokerBuild, Config, Profile};
use ess_load::engine::DEFAULT_MAX_INFLIGHT;
use ess_load::generator::GenSettings;
use ess_load::plan::{self, Model, Plan};
use ess_load::{LoadCommand, LoadOptions, RawCount, RunId, VerifyCommand};
use ess_stack::Stack;

use crate::demo::DemoOptions;

/// HTTP events → Kafka → ClickHouse, exactly once.
#[derive(Debug, Parser)]
#[command(name = "ess", version, about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "ESS_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set kafka.partitions=16` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local stack: ZooKeeper, ClickHouse and the broker.
    Stack {
        #[command(subcommand)]
        action: StackAction,
    },
    /// Create the Kafka topics and the ClickHouse database and tables, or move the tables from
    /// an earlier layout to the current one (idempotent; stop the sinks while it moves rows).
    Migrate {
        /// Print what would be done instead of doing it (reads the server's tables, changes
        /// nothing).
        #[arg(long)]
        print: bool,
        /// With --print: write the DDL creating the tables from nothing for this ClickHouse
        /// version, without contacting any server.
        #[arg(long, requires = "print")]
        server_version: Option<String>,
    },
    /// Serve the HTTP ingest API (events → Kafka).
    Ingest,
    /// Consume events from Kafka into ClickHouse.
    Sink,
    /// Generate load against an ingest endpoint.
    Load(LoadArgs),
    /// Check a load run against ClickHouse: lost, duplicated, latency.
    Verify(VerifyArgs),
    /// The whole pipeline on the local stack with a verified report.
    Demo(DemoArgs),
    /// Print the effective configuration as TOML.
    Config,
}

#[derive(Debug, Subcommand)]
enum StackAction {
    /// Install what is missing, start everything and wait until it serves.
    Up {
        /// Cluster (2 shards × 2 replicas with ZooKeeper) or a single server.
        #[arg(long, value_enum)]
        profile: Option<ProfileArg>,
        /// Broker build: the prebuilt wheel (memory storage) or the durable cargo build.
        #[arg(long, value_enum)]
        broker: Option<BrokerArg>,
    },
    /// Install what `up` needs (Debian packages, the broker) without starting anything;
    /// what is installed already is left as it is.
    Install {
        /// Broker build to install.
        #[arg(long, value_enum)]
        broker: Option<BrokerArg>,
    },
    /// Show what runs where.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the stack started.
    Down,
    /// Start one stopped service (e.g. `clickhouse-3`).
    Start {
        /// Service name as `status` prints it.
        name: String,
    },
    /// Stop one service gracefully.
    Stop {
        /// Service name as `status` prints it.
        name: String,
    },
}

/// `ess load` flags.
#[derive(Debug, Clone, clap::Args)]
struct LoadArgs {
    /// Base URL of the ingest server [default: load.target].
    #[arg(long)]
    target: Option<String>,
    /// API key sent as `Authorization: Bearer …` [default: load.api_key].
    #[arg(long, env = "ESS_LOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The events' `source` [default: with an API key, that key's id in ingest.api_keys;
    /// otherwise the run id]. With auth on, ingest takes only the key's own id.
    #[arg(long)]
    source: Option<String>,
    /// Open model: requests started per second, whatever the responses do.
    #[arg(long, conflicts_with = "connections")]
    rate: Option<f64>,
    /// Closed model: connections, each sending its next request when the last one ends
    /// [default: load.connections].
    #[arg(long)]
    connections: Option<usize>,
    /// k6-like stages `DURATION:TARGET,…` (target = requests/s with --rate or --open,
    /// connections otherwise), ramped linearly from the previous target.
    #[arg(long)]
    stages: Option<String>,
    /// Use the open model with --stages (the start rate is 0 unless --rate gives one).
    #[arg(long)]
    open: bool,
    /// Stop after this long, e.g. `3m30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many distinct events.
    #[arg(long)]
    events: Option<u64>,
    /// Events per request: 1 posts single events to /v1/events, more posts arrays to
    /// /v1/events/batch [default: load.batch].
    #[arg(long)]
    batch: Option<usize>,
    /// Per-request timeout [default: load.timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Open model: most requests in flight.
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT)]
    max_inflight: usize,
    /// Share of events (0..1) that re-send an earlier event (same id) to exercise dedup.
    #[arg(long, default_value_t = 0.0)]
    dup_ratio: f64,
    /// Median size of an event's properties, bytes.
    #[arg(long, default_value_t = GenSettings::default().median_props_bytes)]
    props_bytes: u32,
    /// Run id (12 hex digits) [default: random].
    #[arg(long)]
    run: Option<RunId>,
    /// Where to write the run record [default: <stack.state_dir>/runs/<run>.json].
    #[arg(long)]
    record: Option<PathBuf>,
    /// Fail (exit 1) when more than this percentage of requests fail.
    #[arg(long, default_value_t = 0.0)]
    max_error_pct: f64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Run the generator on this many threads of its own [default: the shared runtime, one
    /// thread per core]. `--threads 1` compares fairly with `wrk -t1`.
    #[arg(long)]
    threads: Option<usize>,
}

impl LoadArgs {
    /// The load these flags describe, with `config`'s defaults.
    fn command(self, config: &Config) -> anyhow::Result<LoadCommand> {
        let stages = match &self.stages {
            Some(text) => plan::parse_stages(text)?,
            None => Vec::new(),
        };
        let model = if self.rate.is_some() || self.open {
            Model::Open
        } else {
            Model::Closed
        };
        let start = match model {
            Model::Open => self.rate.unwrap_or(0.0),
            Model::Closed if stages.is_empty() => {
                self.connections.unwrap_or(config.load.connections) as f64
            }
            Model::Closed => self.connections.unwrap_or(0) as f64,
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
        let plan = Plan {
            model,
            start,
            stages,
        };
        let run = self.run.unwrap_or_else(RunId::random);
        let mut options = LoadOptions::new(&config.load, plan, run);
        if let Some(target) = self.target {
            options.target = target;
        }
        if let Some(key) = self.api_key {
            options.api_key = Some(key).filter(|k| !k.is_empty());
        }
        options.batch = self.batch.unwrap_or(options.batch).max(1);
        options.timeout = self.timeout.unwrap_or(options.timeout);
        options.max_events = self.events;
        options.duration = duration;
        options.max_inflight = self.max_inflight;
        options.generator.median_props_bytes = self.props_bytes.max(16);
        options.generator.dup_ratio = self.dup_ratio;
        options.generator.source = self.source.or_else(|| {
            let key = options.api_key.as_deref()?;
            let found = config.ingest.api_keys.iter().find(|k| k.key == key);
            if found.is_none() {
                eprintln!(
                    "ess load: the API key is not in ingest.api_keys, so its id is unknown: the \
                     events carry the run id as source; with auth on, give --source <key id>"
                );
            }
            found.map(|k| k.id.clone())
        });
        options.progress = !self.quiet && !self.json;
        Ok(LoadCommand {
            options,
            threads: self.threads,
            record: self
                .record
                .unwrap_or_else(|| ess_load::record::default_path(&config.stack.state_dir, run)),
            max_error_pct: self.max_error_pct,
            json: self.json,
        })
    }
}

/// `ess verify` flags.
#[derive(Debug, Clone, clap::Args)]
struct VerifyArgs {
    /// Run id printed by `ess load`.
    #[arg(long, required_unless_present = "record")]
    run: Option<RunId>,
    /// The run record to check [default: <stack.state_dir>/runs/<run>.json].
    #[arg(long)]
    record: Option<PathBuf>,
    /// Wait up to this long for every accepted event to be stored and the replicas to agree.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// How many lost ids to list.
    #[arg(long, default_value_t = 10)]
    list: usize,
    /// Print the verification as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl VerifyArgs {
    fn command(self, config: &Config) -> anyhow::Result<VerifyCommand> {
        let record = match (self.record, self.run) {
            (Some(path), _) => path,
            (None, Some(run)) => ess_load::record::default_path(&config.stack.state_dir, run),
            (None, None) => anyhow::bail!("give --run or --record"),
        };
        Ok(VerifyCommand {
            record,
            wait: self.wait,
            list: self.list,
            json: self.json,
            // `ess verify` does not control the run: it cannot stop merges before the rows
            // arrive, so the counts it takes while waiting are its samples, and it says so.
            raw_count: RawCount::sampled(),
        })
    }
}

/// `ess demo` flags.
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Distinct events to send (the original stored 1,952,643).
    #[arg(long, default_value_t = 1_952_643)]
    events: u64,
    /// Closed model: connections sending as fast as the pipeline answers (finds the rate this
    /// machine sustains).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Open model instead: requests started per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Events per request (1: single events, as the original sent).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Sink processes in the consumer group.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    sinks: u32,
    /// Partitions of the events topic when the demo creates it (overrides `kafka.partitions`;
    /// an existing topic keeps its own) [default: one per sink]. On the local broker every
    /// partition's small produce batches are stored apart and serving fetches grows costlier
    /// with them, so fewer partitions sustain a higher rate there (bench/results/sink.md).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: Option<i32>,
    /// How long to wait for the sinks to store every accepted event after the load.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Leave ingest, the sinks and the stack running at the end.
    #[arg(long)]
    keep: bool,
    /// Where to write the report [default: <stack.state_dir>/reports/<run>].
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Run id (12 hex digits) [default: random].
    #[arg(long)]
    run: Option<RunId>,
}

impl DemoArgs {
    fn options(self) -> DemoOptions {
        DemoOptions {
            events: self.events,
            connections: self.connections,
            rate: self.rate,
            batch: self.batch,
            sinks: self.sinks,
            partitions: self.partitions,
            drain_timeout: self.drain_timeout,
            keep: self.keep,
            report_dir: self.report_dir,
            run: self.run,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Cluster,
    Single,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BrokerArg {
    Wheel,
    Durable,
}

impl BrokerArg {
    fn build(self) -> BrokerBuild {
        match self {
            Self::Wheel => BrokerBuild::Wheel,
            Self::Durable => BrokerBuild::Durable,
        }
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref(), &cli.set)?;
    match cli.command {
        Command::Stack { action } => stack(&mut config, action).await,
        Command::Migrate {
            print: true,
            server_version: Some(server_version),
        } => {
            let version = ess_core::clickhouse::ServerVersion::parse(&server_version)
                .with_context(|| {
                    format!("--server-version {server_version:?} is not major.minor")
                })?;
            let schema = ess_core::schema::Schema::new(&config.clickhouse, version.flavor());
            ess_core::migrate::check_server(&schema, &version)?;
            for statement in schema.ddl() {
                println!("{statement};");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            print: true,
            server_version: None,
        } => {
            let plan = ess_core::migrate::plan(&config).await?;
            println!(
                "-- ClickHouse {}: found {}; {} step(s)",
                plan.version.text,
                plan.found,
                plan.steps.len()
            );
            for step in &plan.steps {
                println!("{step}");
            }
            for note in &plan.notes {
                println!("-- {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { print: false, .. } => {
            check_kafka(&config, true).await?;
            check_clickhouse(&config, true).await?;
            let done = ess_core::migrate::run(&config).await?;
            println!(
                "migrated: ClickHouse {} ({:?} schema), database {}, table {}: found {}, {}{}",
                done.version.text,
                done.schema.flavor,
                done.schema.database,
                done.schema.table,
                done.found,
                if done.steps.is_empty() {
                    "nothing to do".to_owned()
                } else {
                    format!("{} step(s) applied", done.steps.len())
                },
                if done.created_topics.is_empty() {
                    String::new()
                } else {
                    format!(", created topics {}", done.created_topics.join(", "))
                }
            );
            for note in &done.notes {
                println!("note: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest => {
            let shutdown = shutdown_signal();
            check_kafka(&config, false).await?;
            ess_ingest::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink => {
            let shutdown = shutdown_signal();
            check_kafka(&config, false).await?;
            check_clickhouse(&config, false).await?;
            ess_sink::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => {
            let command = args.command(&config)?;
            Ok(exit(ess_load::load(command, shutdown_signal()).await?.ok))
        }
        Command::Verify(args) => {
            let command = args.command(&config)?;
            check_clickhouse(&config, true).await?;
            Ok(exit(
                ess_load::verify(&config, command, shutdown_signal())
                    .await?
                    .ok,
            ))
        }
        Command::Demo(args) => {
            let options = args.options();
            Ok(exit(
                crate::demo::run(config, options, shutdown_signal()).await?,
            ))
        }
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long the start-up check waits for a broker to answer.
const KAFKA_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Refuses to start when the brokers reject the TLS or SASL settings, naming the keys, instead
/// of retrying forever. No answer at all stops only commands that cannot wait (`required`);
/// long-running services log it and keep retrying.
async fn check_kafka(config: &Config, required: bool) -> anyhow::Result<()> {
    let kafka = config.kafka.clone();
    let checked = tokio::task::spawn_blocking(move || {
        ess_core::kafka::check_connection(&kafka, KAFKA_CHECK_TIMEOUT)
    })
    .await
    .context("Kafka check")?;
    match checked {
        Err(e @ ess_core::kafka::ConnectError::Unreachable { .. }) if !required => {
            tracing::warn!("{e}; retrying in the background");
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Refuses to start when a ClickHouse node rejects the credentials or the TLS settings,
/// naming the keys. A `clickhouse.url` that does not answer stops only commands that need it
/// now (`required`); other nodes that do not answer are logged.
async fn check_clickhouse(config: &Config, required: bool) -> anyhow::Result<()> {
    let ch = &config.clickhouse;
    let mut urls = vec![ch.url.clone()];
    urls.extend(ch.all_nodes().into_iter().filter(|u| *u != ch.url));
    for (i, url) in urls.iter().enumerate() {
        match ess_core::clickhouse::connect(ch, url).await {
            Ok(_) => {}
            Err(e) if (required && i == 0) || e.is_setting_error() => return Err(e.into()),
            Err(e) => tracing::warn!("{e}; retrying in the background"),
        }
    }
    Ok(())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Resolves on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed here, before the caller's start-up work, so a signal that
    // arrives while a command is still starting ends it cleanly instead of killing it.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = signal(SignalKind::terminate())
            .and_then(|term| signal(SignalKind::interrupt()).map(|interrupt| (term, interrupt)));
        async move {
            match signals {
                Ok((mut term, mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn stack(config: &mut Config, action: StackAction) -> anyhow::Result<ExitCode> {
    let mut stack = Stack::new(&config.stack);
    if let Some(profile) = stack.recorded_profile() {
        stack = stack.with_profile(profile);
    }
    match action {
        StackAction::Up { profile, broker } => {
            if let Some(broker) = broker {
                config.stack.broker = broker.build();
                stack = Stack::new(&config.stack).with_profile(stack.config().profile);
            }
            if let Some(profile) = profile {
                stack = stack.with_profile(match profile {
                    ProfileArg::Cluster => Profile::Cluster,
                    ProfileArg::Single => Profile::Single,
                });
            }
            stack.up().await.context("ess stack up")?;
            print_status(&stack, false).await;
            if stack.config().profile == Profile::Single {
                println!(
                    "single profile: run other commands with --set clickhouse.cluster= \
                     --set 'clickhouse.nodes=[]'"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StackAction::Install { broker } => {
            if let Some(broker) = broker {
                config.stack.broker = broker.build();
                stack = Stack::new(&config.stack).with_profile(stack.config().profile);
            }
            stack.install().await.context("ess stack install")?;
            println!(
                "installed: {} and the broker ({})",
                match stack.config().profile {
                    Profile::Cluster => "ClickHouse, ZooKeeper",
                    Profile::Single => "ClickHouse",
                },
                stack.config().cache_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        StackAction::Status { json } => {
            let all_up = print_status(&stack, json).await;
            Ok(if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        StackAction::Down => {
            let stopped = stack.down().await;
            if stopped.is_empty() {
                println!("nothing was running");
            } else {
                println!("stopped: {}", stopped.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        StackAction::Start { name } => {
            stack.start_service(&name).await?;
            println!("{name} is up");
            Ok(ExitCode::SUCCESS)
        }
        StackAction::Stop { name } => {
            let was = stack.stop_service(&name).await?;
            println!("{name} {}", if was { "stopped" } else { "was not running" });
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the status table (or JSON); returns whether every service runs.
async fn print_status(stack: &Stack, json: bool) -> bool {
    let status = stack.status();
    let all_up = status.iter().all(|s| s.running);
    let cluster = if stack.config().profile == Profile::Cluster && all_up {
        stack.cluster_replicas().await.ok()
    } else {
        None
    };
    if json {
        let value = serde_json::json!({
            "profile": format!("{:?}", stack.config().profile).to_lowercase(),
            "services": status,
            "cluster": cluster,
        });
        println!("{value:#}");
        return all_up;
    }
    println!(
        "{:<13} {:<8} {:>8} {:>8}  {:<18} {:<36} dir",
        "service", "state", "pid", "rss", "ports", "role"
    );
    for s in &status {
        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
        println!(
            "{:<13} {:<8} {:>8} {:>8}  {:<18} {:<36} {}",
            s.name,
            if s.running { "running" } else { "stopped" },
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.rss_bytes
                .map(|b| format!("{}M", b / (1024 * 1024)))
                .unwrap_or_else(|| "-".into()),
            ports.join(","),
            s.detail,
            s.dir.display()
        );
    }
    if let Some(replicas) = cluster {
        let shards = replicas.iter().map(|r| r.shard_num).max().unwrap_or(0);
        println!(
            "cluster {}: {} shards, {} replicas in all (system.clusters)",
            ess_stack::CLUSTER_NAME,
            shards,
            replicas.len()
        );
    }
    all_up
}
