//! Subcommands and how they wire the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ess_core::config::{BrokerBuild, Config, Profile};
use ess_stack::Stack;

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
    /// Create the Kafka topics and the ClickHouse database and tables (idempotent).
    Migrate {
        /// Print the DDL instead of applying it (no server is contacted).
        #[arg(long)]
        print: bool,
        /// With --print: the ClickHouse version to write the DDL for.
        #[arg(long, default_value = "18.16.1", requires = "print")]
        server_version: String,
    },
    /// Serve the HTTP ingest API (events → Kafka).
    Ingest,
    /// Consume events from Kafka into ClickHouse.
    Sink,
    /// Generate load against an ingest endpoint.
    Load(ess_load::LoadArgs),
    /// Check a load run against ClickHouse: lost, duplicated, latency.
    Verify(ess_load::VerifyArgs),
    /// The whole pipeline on the local stack with a verified report.
    Demo(crate::demo::DemoArgs),
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

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref(), &cli.set)?;
    match cli.command {
        Command::Stack { action } => stack(&mut config, action).await,
        Command::Migrate {
            print: true,
            server_version,
        } => {
            let version = ess_core::clickhouse::ServerVersion::parse(&server_version)
                .with_context(|| {
                    format!("--server-version {server_version:?} is not major.minor")
                })?;
            let schema = ess_core::schema::Schema::new(&config.clickhouse, version.flavor());
            for statement in schema.ddl() {
                println!("{statement};");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { print: false, .. } => {
            check_kafka(&config, true).await?;
            check_clickhouse(&config, true).await?;
            let done = ess_core::migrate::run(&config).await?;
            println!(
                "migrated: ClickHouse {} ({:?} schema), database {}, table {}{}",
                done.version.text,
                done.schema.flavor,
                done.schema.database,
                done.schema.table,
                if done.created_topics.is_empty() {
                    String::new()
                } else {
                    format!(", created topics {}", done.created_topics.join(", "))
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest => {
            check_kafka(&config, false).await?;
            ess_ingest::run(config, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink => {
            check_kafka(&config, false).await?;
            check_clickhouse(&config, false).await?;
            ess_sink::run(config, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => Ok(exit(ess_load::load(&config, args).await?)),
        Command::Verify(args) => {
            check_clickhouse(&config, true).await?;
            Ok(exit(ess_load::verify(&config, args).await?))
        }
        Command::Demo(args) => Ok(exit(crate::demo::run(config, args).await?)),
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
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn stack(config: &mut Config, action: StackAction) -> anyhow::Result<ExitCode> {
    let mut stack = Stack::new(&config.stack);
    if let Some(profile) = stack.recorded_profile() {
        stack = stack.with_profile(profile);
    }
    match action {
        StackAction::Up { profile, broker } => {
            if let Some(broker) = broker {
                config.stack.broker = match broker {
                    BrokerArg::Wheel => BrokerBuild::Wheel,
                    BrokerArg::Durable => BrokerBuild::Durable,
                };
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
