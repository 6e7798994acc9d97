//! `ess demo`: the whole pipeline on the local stack, with a verified report.
//!
//! [`run`] reads as its steps, in the order that matters (the original's lesson): the stack
//! (a running one is used and left running) → migrate (tables and topic) → the sinks, each
//! ready in their group → ingest → the load (`ess load`'s entry) → drain (wait until the
//! sinks stored every accepted event) → verify (`ess verify`'s entry) → report → stop what
//! the demo started.
//!
//! # Layout
//! - this module: the steps, each a function.
//! - [`children`]: the `ess sink` and `ess ingest` processes the demo starts, probed over
//!   HTTP and stopped by pid.
//! - [`sampler`]: stored rows, distinct ids and consumer lag, sampled once a second for the
//!   report and as the verification's duplicate samples.

mod children;
mod sampler;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ess_core::config::{Config, Profile};
use ess_load::lag::LagProbe;
use ess_load::plan::{Model, Plan};
use ess_load::report::{self, ReportData, Sample};
use ess_load::stats::group;
use ess_load::{
    LoadCommand, LoadOptions, Loaded, RawCount, RunId, Verification, Verifier, VerifyCommand,
};
use ess_stack::Stack;

use children::{Children, wait_group_settled};
use sampler::Sampler;

/// What one demo run does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Distinct events to send.
    pub events: u64,
    /// Closed model: connections sending as fast as the pipeline answers.
    pub connections: usize,
    /// Open model instead: requests started per second.
    pub rate: Option<f64>,
    /// Events per request.
    pub batch: usize,
    /// Sink processes in the consumer group.
    pub sinks: u32,
    /// Partitions of the events topic when the demo creates it [default: one per sink].
    pub partitions: Option<i32>,
    /// How long to wait for the sinks to store every accepted event after the load.
    pub drain_timeout: Duration,
    /// Leave ingest, the sinks and the stack running at the end.
    pub keep: bool,
    /// Where to write the report [default: <stack.state_dir>/reports/<run>].
    pub report_dir: Option<PathBuf>,
    /// Run id [default: random].
    pub run: Option<RunId>,
}

/// Prints each step with the seconds since the demo started.
struct Steps(Instant);

impl Steps {
    fn say(&self, what: &str) {
        eprintln!("==> [{:>5.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// One demo run: its options, id, configuration and directory.
struct Demo {
    opts: DemoOptions,
    run: RunId,
    config: Config,
    dir: PathBuf,
    steps: Steps,
}

/// Runs the demo; returns whether the verification passed. `shutdown` ends the load early
/// (what was accepted until then is still drained, verified and reported).
pub async fn run(
    mut config: Config,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<bool> {
    let run = opts.run.unwrap_or_else(RunId::random);
    // Each run's sinks form a consumer group of their own. Where a sink starts reading comes
    // from what ClickHouse holds (reconciliation), not from the group, so nothing is read
    // twice; and on the local broker a group whose members have all left cannot always be
    // joined again (the next run's sinks never got an assignment).
    config.sink.group_id = format!("{}-{run}", config.sink.group_id);
    config.kafka.partitions = opts.partitions.unwrap_or(opts.sinks as i32);
    config.stack.state_dir = ess_stack::process::absolute(&config.stack.state_dir);
    let dir = config.stack.state_dir.join("demo").join(run.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut demo = Demo {
        opts,
        run,
        config,
        dir,
        steps: Steps(Instant::now()),
    };
    let (stack, started) = demo.stack().await?;
    let result = demo.pipeline(shutdown).await;
    demo.stop_stack(&stack, &started).await;
    result
}

impl Demo {
    /// Everything between bringing the stack up and stopping it.
    async fn pipeline(
        &mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<bool> {
        let server = self.migrate().await?;
        let config_path = self.dir.join("config.toml");
        std::fs::write(&config_path, self.config.to_toml_with_secrets())
            .with_context(|| format!("write {}", config_path.display()))?;
        let mut children = Children::new(&self.dir, &config_path, self.opts.keep);
        self.start_sinks(&mut children).await?;
        let target = self.start_ingest(&mut children).await?;
        let verifier = Arc::new(Verifier::connect(&self.config).await?);
        let probe = LagProbe::new(
            &self.config.kafka,
            &self.config.sink.group_id,
            &self.config.kafka.topic,
        )?;
        let sampler = Sampler::start(verifier.clone(), probe, self.run);
        let loaded = self.load(target, shutdown).await?;
        let drain_s = self.drain(&verifier, &loaded).await;
        let load_started = sampler.started();
        let (samples, raw_count) = sampler.stop();
        let verification = self.verify(&loaded, raw_count).await?;
        let data = self.report(
            &server,
            load_started,
            loaded,
            verification,
            samples,
            drain_s,
        )?;
        self.stop_children(children);
        Ok(data.passed() && data.load.events_accepted >= self.opts.events)
    }

    /// Uses a stack that answers, or brings one up. Returns the stack and the services the
    /// demo started (only those are stopped at the end).
    async fn stack(&self) -> anyhow::Result<(Stack, Vec<String>)> {
        let stack = Stack::new(&self.config.stack).with_profile(Profile::Cluster);
        if stack_answers(&self.config).await {
            self.steps.say(
                "stack: ClickHouse and the broker already answer; using them (and leaving them running)",
            );
            return Ok((stack, Vec::new()));
        }
        self.steps
            .say("stack: starting ZooKeeper, 4 ClickHouse servers (2 shards × 2 replicas), broker");
        let before: Vec<String> = stack
            .status()
            .into_iter()
            .filter(|s| s.running)
            .map(|s| s.name)
            .collect();
        let after = stack.up().await.context("ess stack up")?;
        let started = after
            .into_iter()
            .filter(|s| s.running && !before.contains(&s.name))
            .map(|s| s.name)
            .collect();
        Ok((stack, started))
    }

    /// Stops the stack services the demo started, unless kept.
    async fn stop_stack(&self, stack: &Stack, started: &[String]) {
        if started.is_empty() {
            return;
        }
        if self.opts.keep {
            self.steps
                .say("keeping the stack running (ess stack down stops it)");
            return;
        }
        self.steps.say(&format!(
            "stopping the stack services the demo started: {}",
            started.join(", ")
        ));
        for name in started.iter().rev() {
            let _ = stack.stop_service(name).await;
        }
    }

    /// Creates the tables and the topic; a topic that existed keeps its partitions, and the
    /// sinks' group and the report follow it. Returns the ClickHouse version.
    async fn migrate(&mut self) -> anyhow::Result<String> {
        let migrated = ess_core::migrate::run(&self.config)
            .await
            .context("ess migrate")?;
        let kafka = self.config.kafka.clone();
        let actual = tokio::task::spawn_blocking(move || {
            ess_core::kafka::partition_count(&kafka, &kafka.topic)
        })
        .await?
        .context("read the topic's partitions")?;
        let config = &mut self.config;
        if actual > 0 && actual != config.kafka.partitions {
            self.steps.say(&format!(
                "topic {} exists with {actual} partitions (asked for {}); using it as it is",
                config.kafka.topic, config.kafka.partitions
            ));
            config.kafka.partitions = actual;
        }
        self.steps.say(&format!(
            "migrated: ClickHouse {}, {}.{}, topic {} ({} partitions)",
            migrated.version.text,
            config.clickhouse.database,
            config.clickhouse.table,
            config.kafka.topic,
            config.kafka.partitions
        ));
        Ok(migrated.version.text)
    }

    /// Starts the sinks one by one, each ready before the next, then waits until their group
    /// has settled.
    async fn start_sinks(&self, children: &mut Children) -> anyhow::Result<()> {
        let mut ports = Vec::new();
        for i in 1..=self.opts.sinks {
            let name = format!("sink-{i}");
            let port = free_port()?;
            ports.push(port);
            let listen = format!("sink.listen=127.0.0.1:{port}");
            let pid = children.spawn(
                &name,
                &["sink".into(), "--set".into(), listen.clone()],
                &listen,
            )?;
            children
                .wait_ready(&name, port, Duration::from_secs(90))
                .await?;
            self.steps.say(&format!(
                "{name} ready (pid {pid}, metrics on 127.0.0.1:{port})"
            ));
        }
        let partitions = self.config.kafka.partitions;
        if wait_group_settled(&ports, partitions, Duration::from_secs(90)).await {
            self.steps.say(&format!(
                "sink group {} settled: {partitions} partitions over {} sinks",
                self.config.sink.group_id, self.opts.sinks
            ));
        } else {
            self.steps
                .say("the sinks' metrics do not show every partition assigned; going on");
        }
        Ok(())
    }

    /// Starts ingest (without authentication) and returns its base URL.
    async fn start_ingest(&self, children: &mut Children) -> anyhow::Result<String> {
        let port = free_port()?;
        let listen = format!("ingest.listen=127.0.0.1:{port}");
        let args = [
            "ingest".into(),
            "--set".into(),
            listen.clone(),
            "--set".into(),
            "ingest.auth=off".into(),
        ];
        let pid = children.spawn("ingest", &args, &listen)?;
        children
            .wait_ready("ingest", port, Duration::from_secs(60))
            .await?;
        let target = format!("http://127.0.0.1:{port}");
        self.steps
            .say(&format!("ingest ready (pid {pid}, {target})"));
        Ok(target)
    }

    /// The load, through `ess load`'s entry.
    async fn load(
        &self,
        target: String,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Loaded> {
        let opts = &self.opts;
        let plan = Plan {
            model: if opts.rate.is_some() {
                Model::Open
            } else {
                Model::Closed
            },
            start: opts.rate.unwrap_or(opts.connections.max(1) as f64),
            stages: Vec::new(),
        };
        let mut options = LoadOptions::new(&self.config.load, plan, self.run);
        options.target = target;
        options.api_key = None;
        options.batch = opts.batch.max(1);
        options.max_events = Some(opts.events);
        self.steps.say(&format!(
            "load: run {}, {} events, {}",
            self.run,
            group(opts.events),
            match opts.rate {
                Some(r) => format!("open model at {r} requests/s"),
                None => format!("closed model with {} connections", opts.connections),
            }
        ));
        let command = LoadCommand {
            options,
            threads: None,
            record: ess_load::record::default_path(&self.config.stack.state_dir, self.run),
            max_error_pct: 0.0,
            json: false,
        };
        ess_load::load(command, shutdown).await
    }

    /// Waits until the sinks stored every accepted event (or the drain timeout passes, or
    /// the load was interrupted). Returns the seconds it took after the load, if they did.
    async fn drain(&self, verifier: &Verifier, loaded: &Loaded) -> Option<f64> {
        let accepted = loaded.record.accepted_set().len();
        self.steps.say(&format!(
            "waiting for the sinks to store {} accepted events",
            group(accepted)
        ));
        let load_end = Instant::now();
        let deadline = load_end + self.opts.drain_timeout;
        let mut drain_s = None;
        loop {
            let rows = verifier.rows(self.run).await.unwrap_or(0);
            if rows >= accepted
                && verifier
                    .counts(self.run)
                    .await
                    .is_ok_and(|c| c.1 >= accepted)
            {
                drain_s = Some(load_end.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline || loaded.record.summary.interrupted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match drain_s {
            Some(d) => self
                .steps
                .say(&format!("drained {d:.1}s after the load ended")),
            None => self.steps.say(
                "the sinks did not store every accepted event in time; verifying what is there",
            ),
        }
        // One more second of samples after the drain, for the charts' tail.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drain_s
    }

    /// The verification, through `ess verify`'s entry, with the duplicates the sampler saw
    /// while merges ran. An interrupted load is verified too.
    async fn verify(&self, loaded: &Loaded, raw_count: RawCount) -> anyhow::Result<Verification> {
        let command = VerifyCommand {
            record: loaded.path.clone(),
            wait: Duration::from_secs(60),
            list: 10,
            json: false,
            raw_count,
        };
        ess_load::verify(&self.config, command, std::future::pending()).await
    }

    /// Writes the report and prints the comparison table.
    fn report(
        &self,
        server: &str,
        load_started: Instant,
        loaded: Loaded,
        verification: Verification,
        samples: Vec<Sample>,
        drain_s: Option<f64>,
    ) -> anyhow::Result<ReportData> {
        let (config, opts) = (&self.config, &self.opts);
        let data = ReportData {
            title: format!(
                "ess demo: {} events, {} sink{}, batch {}, {} total",
                group(opts.events),
                opts.sinks,
                if opts.sinks == 1 { "" } else { "s" },
                opts.batch,
                ess_load::stats::clock(load_started.elapsed()),
            ),
            machine: machine(),
            setup: format!(
                "1 ess ingest → broker {} (topic {}, {} partitions) → {} ess sink → ClickHouse {server} ({})",
                config.kafka.brokers,
                config.kafka.topic,
                config.kafka.partitions,
                opts.sinks,
                if config.clickhouse.cluster.is_empty() {
                    "single server".to_owned()
                } else {
                    format!(
                        "cluster {}: {} nodes",
                        config.clickhouse.cluster,
                        config.clickhouse.all_nodes().len()
                    )
                }
            ),
            load: loaded.record.summary,
            verification: Some(verification),
            samples,
            drain_s,
        };
        let dir = opts.report_dir.clone().unwrap_or_else(|| {
            config
                .stack
                .state_dir
                .join("reports")
                .join(self.run.to_string())
        });
        let paths = report::write(&dir, &data)?;
        println!();
        print!("{}", report::table(&data));
        println!("  report: {}", paths.html.display());
        println!("  chart:  {}", paths.png.display());
        println!("  data:   {}", paths.json.display());
        Ok(data)
    }

    /// Stops ingest and the sinks, or says how to when they are kept.
    fn stop_children(&self, mut children: Children) {
        if self.opts.keep {
            self.steps.say(&format!(
                "keeping {} running (stop with kill -TERM)",
                children.describe().join(", ")
            ));
        } else {
            for line in children.stop_all() {
                self.steps.say(&line);
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether ClickHouse (every node) and the broker the configuration names already answer.
async fn stack_answers(config: &Config) -> bool {
    for url in config.clickhouse.all_nodes() {
        if ess_core::clickhouse::connect(&config.clickhouse, &url)
            .await
            .is_err()
        {
            return false;
        }
    }
    let brokers = config.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || ess_stack::broker_answers(&brokers))
        .await
        .unwrap_or(false)
}

/// Cores, CPU model, memory and OS, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb as f64 / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| std::env::consts::OS.into());
    format!("{cores} cores ({model}), {mem_gib:.0} GiB memory, {os}")
}
