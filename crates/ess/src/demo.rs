//! `ess demo`: the whole pipeline on the local stack, with a verified report.
//!
//! Order matters (the original's lesson): broker and ClickHouse ready → tables → sinks in
//! their group → ingest → load → wait for the sinks to drain → verify → report → stop what
//! the demo started. A stack that was already running is used and left running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ess_core::config::{Config, Profile};
use ess_load::engine::LoadOptions;
use ess_load::generator::GenSettings;
use ess_load::lag::LagProbe;
use ess_load::plan::{Model, Plan};
use ess_load::report::{self, ReportData, Sample};
use ess_load::stats::group;
use ess_load::{RunId, RunRecord, Verifier};
use ess_stack::Stack;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `ess demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Distinct events to send (the original stored 1,952,643).
    #[arg(long, default_value_t = 1_952_643)]
    pub events: u64,
    /// Closed model: connections sending as fast as the pipeline answers (finds the rate this
    /// machine sustains).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Open model instead: requests started per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per request (1: single events, as the original sent).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sink processes in the consumer group.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub sinks: u32,
    /// Partitions of the events topic when the demo creates it (overrides `kafka.partitions`;
    /// an existing topic keeps its own) [default: one per sink]. On the local broker every
    /// partition's small produce batches are stored apart and serving fetches grows costlier
    /// with them, so fewer partitions sustain a higher rate there (bench/results/sink.md).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: Option<i32>,
    /// How long to wait for the sinks to store every accepted event after the load.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Leave ingest, the sinks and the stack running at the end.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the report [default: <stack.state_dir>/reports/<run>].
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Run id (12 hex digits) [default: random].
    #[arg(long)]
    pub run: Option<RunId>,
}

/// A child process of the demo, stopped with SIGTERM (then SIGKILL) unless kept.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Every process the demo started; stopped in reverse order when dropped.
struct Procs {
    list: Vec<Proc>,
    keep: bool,
}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.list.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("Procs").field("list", &names).finish()
    }
}

impl Procs {
    fn spawn(
        &mut self,
        name: &str,
        dir: &Path,
        config: &Path,
        args: &[String],
    ) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("find the ess executable")?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(exe)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let pid = child.id();
        self.list.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(pid)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Proc> {
        self.list.iter_mut().find(|p| p.name == name)
    }

    /// Stops one process: SIGTERM, then SIGKILL after `grace`.
    fn stop(proc: &mut Proc, grace: Duration) -> String {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return format!("{} had exited ({status})", proc.name);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &proc.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = proc.child.try_wait() {
                return format!("{} stopped ({status})", proc.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = proc.child.kill();
        let _ = proc.child.wait();
        format!("{} killed after {grace:?}", proc.name)
    }

    fn stop_all(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        // Ingest first (it flushes its producer), then the sinks (they finish their batch and
        // commit).
        while let Some(mut p) = self.list.pop() {
            done.push(Self::stop(&mut p, Duration::from_secs(30)));
        }
        done
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if !self.keep {
            self.stop_all();
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, if it answered.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// `GET /readyz` on 127.0.0.1:`port`; whether it answered 200.
async fn ready(port: u16) -> bool {
    http_get(port, "/readyz")
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// Partitions a sink says it holds (`ess_sink_assigned_partitions` on its `/metrics`).
async fn assigned_partitions(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("ess_sink_assigned_partitions"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Waits until the sinks together hold every partition, each sink some (when there are at
/// least as many partitions as sinks): the group has settled, so no event waits for a join.
async fn wait_group_settled(ports: &[u16], partitions: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut held = Vec::new();
        for &port in ports {
            held.push(assigned_partitions(port).await.unwrap_or(0.0));
        }
        let total: f64 = held.iter().sum();
        let each = partitions as usize >= ports.len();
        if total as i32 == partitions && (!each || held.iter().all(|h| *h > 0.0)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn wait_ready(
    procs: &mut Procs,
    name: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready(port).await {
            return Ok(());
        }
        let Some(p) = procs.get_mut(name) else {
            bail!("{name} is not running");
        };
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!(
                "{name} exited ({status}) before it was ready; last lines of {}:\n{}",
                p.log.display(),
                tail(&p.log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not answer /readyz with 200 on port {port} within {timeout:?}; last lines of {}:\n{}",
                p.log.display(),
                tail(&p.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// Runs the demo; returns whether the verification passed.
pub async fn run(mut config: Config, args: DemoArgs) -> anyhow::Result<bool> {
    let run = args.run.unwrap_or_else(RunId::random);
    // Each run's sinks form a consumer group of their own. Where a sink starts reading comes
    // from what ClickHouse holds (reconciliation), not from the group, so nothing is read
    // twice; and on the local broker a group whose members have all left cannot always be
    // joined again (the next run's sinks never got an assignment).
    config.sink.group_id = format!("{}-{run}", config.sink.group_id);
    config.kafka.partitions = args.partitions.unwrap_or(args.sinks as i32);
    config.stack.state_dir = ess_stack::process::absolute(&config.stack.state_dir);
    let state = config.stack.state_dir.clone();
    let dir = state.join("demo").join(run.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("==> [{:>5.1}s] {what}", t0.elapsed().as_secs_f64());

    // 1. The stack: use a running one, or bring it up and remember what we started.
    let mut started_services = Vec::new();
    let stack = Stack::new(&config.stack).with_profile(Profile::Cluster);
    if stack_answers(&config).await {
        step(
            "stack: ClickHouse and the broker already answer; using them (and leaving them running)",
        );
    } else {
        step("stack: starting ZooKeeper, 4 ClickHouse servers (2 shards × 2 replicas), broker");
        let before: Vec<String> = stack
            .status()
            .into_iter()
            .filter(|s| s.running)
            .map(|s| s.name)
            .collect();
        let after = stack.up().await.context("ess stack up")?;
        started_services = after
            .into_iter()
            .filter(|s| s.running && !before.contains(&s.name))
            .map(|s| s.name)
            .collect();
    }
    let result = pipeline(&config, &args, run, &dir, &step).await;
    if !started_services.is_empty() {
        if args.keep {
            step("keeping the stack running (ess stack down stops it)");
        } else {
            step(&format!(
                "stopping the stack services the demo started: {}",
                started_services.join(", ")
            ));
            for name in started_services.iter().rev() {
                let _ = stack.stop_service(name).await;
            }
        }
    }
    result
}

async fn pipeline(
    config: &Config,
    args: &DemoArgs,
    run: RunId,
    dir: &Path,
    step: &dyn Fn(&str),
) -> anyhow::Result<bool> {
    // 2. Tables and topics.
    let migrated = ess_core::migrate::run(config)
        .await
        .context("ess migrate")?;
    // A topic that existed keeps its partitions; the sinks' group and the report follow it.
    let mut config = config.clone();
    let kafka = config.kafka.clone();
    let actual =
        tokio::task::spawn_blocking(move || ess_core::kafka::partition_count(&kafka, &kafka.topic))
            .await?
            .context("read the topic's partitions")?;
    if actual > 0 && actual != config.kafka.partitions {
        step(&format!(
            "topic {} exists with {actual} partitions (asked for {}); using it as it is",
            config.kafka.topic, config.kafka.partitions
        ));
        config.kafka.partitions = actual;
    }
    let config = &config;
    step(&format!(
        "migrated: ClickHouse {}, {}.{}, topic {} ({} partitions)",
        migrated.version.text,
        config.clickhouse.database,
        config.clickhouse.table,
        config.kafka.topic,
        config.kafka.partitions
    ));
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config.to_toml_with_secrets())
        .with_context(|| format!("write {}", config_path.display()))?;

    // 3. Sinks first, each ready in the group, then ingest.
    let mut procs = Procs {
        list: Vec::new(),
        keep: args.keep,
    };
    let mut sink_ports = Vec::new();
    for i in 1..=args.sinks {
        let name = format!("sink-{i}");
        let port = free_port()?;
        sink_ports.push(port);
        let pid = procs.spawn(
            &name,
            dir,
            &config_path,
            &[
                "sink".into(),
                "--set".into(),
                format!("sink.listen=127.0.0.1:{port}"),
            ],
        )?;
        wait_ready(&mut procs, &name, port, Duration::from_secs(90)).await?;
        step(&format!(
            "{name} ready (pid {pid}, metrics on 127.0.0.1:{port})"
        ));
    }
    if wait_group_settled(
        &sink_ports,
        config.kafka.partitions,
        Duration::from_secs(90),
    )
    .await
    {
        step(&format!(
            "sink group {} settled: {} partitions over {} sinks",
            config.sink.group_id, config.kafka.partitions, args.sinks
        ));
    } else {
        step("the sinks' metrics do not show every partition assigned; going on");
    }
    let port = free_port()?;
    let pid = procs.spawn(
        "ingest",
        dir,
        &config_path,
        &[
            "ingest".into(),
            "--set".into(),
            format!("ingest.listen=127.0.0.1:{port}"),
            "--set".into(),
            "ingest.auth=off".into(),
        ],
    )?;
    wait_ready(&mut procs, "ingest", port, Duration::from_secs(60)).await?;
    step(&format!(
        "ingest ready (pid {pid}, http://127.0.0.1:{port})"
    ));

    // 4. Sample stored rows and consumer lag every second while the load runs and drains.
    let verifier = Arc::new(Verifier::connect(config).await?);
    let probe = Arc::new(LagProbe::new(
        &config.kafka,
        &config.sink.group_id,
        &config.kafka.topic,
    )?);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let load_start = Instant::now();
    // Two samplers, so a slow answer from one side does not thin out the other's samples.
    let stored_sampler = {
        let (verifier, samples) = (verifier.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t = load_start.elapsed().as_secs_f64();
                if let Ok(stored) = verifier.rows(run).await
                    && let Ok(mut s) = samples.lock()
                {
                    s.push(Sample {
                        t,
                        stored: Some(stored),
                        lag: None,
                    });
                }
            }
        })
    };
    let lag_sampler = {
        let (probe, samples) = (probe.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t = load_start.elapsed().as_secs_f64();
                let probe = probe.clone();
                let lag = tokio::task::spawn_blocking(move || probe.lag().ok())
                    .await
                    .ok()
                    .flatten();
                if let Some(lag) = lag
                    && let Ok(mut s) = samples.lock()
                {
                    s.push(Sample {
                        t,
                        stored: None,
                        lag: Some(lag),
                    });
                }
            }
        })
    };

    // 5. The load.
    let opts = LoadOptions {
        target: format!("http://127.0.0.1:{port}"),
        api_key: None,
        plan: Plan {
            model: if args.rate.is_some() {
                Model::Open
            } else {
                Model::Closed
            },
            start: args.rate.unwrap_or(args.connections.max(1) as f64),
            stages: Vec::new(),
        },
        batch: args.batch.max(1),
        timeout: config.load.timeout,
        max_events: Some(args.events),
        duration: None,
        max_inflight: 20_000,
        generator: GenSettings::default(),
        run,
        progress: true,
    };
    step(&format!(
        "load: run {run}, {} events, {}",
        group(args.events),
        match args.rate {
            Some(r) => format!("open model at {r} requests/s"),
            None => format!("closed model with {} connections", args.connections),
        }
    ));
    let (summary, accepted) = ess_load::run_load(opts, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    let load_end = Instant::now();
    let record = RunRecord::new(summary.clone(), &accepted);
    let record_path = ess_load::record::default_path(&config.stack.state_dir, run);
    record.write(&record_path)?;
    print!("{}", summary.render());

    // 6. Wait for the sinks to store every accepted event.
    step(&format!(
        "waiting for the sinks to store {} accepted events",
        group(accepted.len())
    ));
    let deadline = load_end + args.drain_timeout;
    let mut drain_s = None;
    loop {
        let rows = verifier.rows(run).await.unwrap_or(0);
        if rows >= accepted.len()
            && verifier
                .counts(run)
                .await
                .is_ok_and(|c| c.1 >= accepted.len())
        {
            drain_s = Some(load_end.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline || summary.interrupted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match drain_s {
        Some(d) => step(&format!("drained {d:.1}s after the load ended")),
        None => {
            step("the sinks did not store every accepted event in time; verifying what is there")
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stored_sampler.abort();
    lag_sampler.abort();

    // 7. Verify.
    let verification = verifier
        .verify(&record, Duration::from_secs(60), 10)
        .await?;
    print!("{}", verification.render());

    // 8. Report.
    let data = ReportData {
        title: format!(
            "ess demo: {} events, {} sink{}, batch {}, {} {}",
            group(args.events),
            args.sinks,
            if args.sinks == 1 { "" } else { "s" },
            args.batch,
            ess_load::stats::clock(load_start.elapsed()),
            "total"
        ),
        machine: machine(),
        setup: format!(
            "1 ess ingest → broker {} (topic {}, {} partitions) → {} ess sink → ClickHouse {} ({})",
            config.kafka.brokers,
            config.kafka.topic,
            config.kafka.partitions,
            args.sinks,
            migrated.version.text,
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
        load: summary,
        verification: Some(verification),
        samples: {
            let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
            all.sort_by(|a, b| a.t.total_cmp(&b.t));
            all
        },
        drain_s,
    };
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| config.stack.state_dir.join("reports").join(run.to_string()));
    let paths = report::write(&report_dir, &data)?;
    println!();
    print!("{}", report::table(&data));
    println!("  report: {}", paths.html.display());
    println!("  chart:  {}", paths.png.display());
    println!("  data:   {}", paths.json.display());

    // 9. Stop what the demo started.
    if args.keep {
        let pids: Vec<String> = procs
            .list
            .iter()
            .map(|p| format!("{} pid {}", p.name, p.child.id()))
            .collect();
        step(&format!(
            "keeping {} running (stop with kill -TERM)",
            pids.join(", ")
        ));
    } else {
        for line in procs.stop_all() {
            step(&line);
        }
    }
    Ok(data.passed() && data.load.events_accepted >= args.events)
}
