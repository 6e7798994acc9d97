//! The local stack: ZooKeeper, ClickHouse (2 shards × 2 replicas, or one server) and a
//! Kafka-compatible broker, as native processes under one state directory.
//!
//! # Layout
//! - [`install`]: Debian packages and the pinned, checksummed broker binary.
//! - [`render`]: the servers' config files.
//! - [`process`]: detached processes, pid files, stopping by pid (never by name), log tails.
//! - this module: [`Stack`], which brings services up in order, waits until each really
//!   serves, reports what runs where, and stops what it started.
//!
//! Errors: every fallible operation returns [`StackError`] (thiserror), not `anyhow`: its
//! callers tell an unknown service name from a failed install or a service that never became
//! ready, and the message of the last one carries the service's log tail.

pub mod install;
pub mod process;
pub mod render;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ess_core::config::{BrokerBuild, Profile, StackConfig};
use serde::{Deserialize, Serialize};

use crate::process::{PidFile, absolute, log_tail, port_in_use};
use crate::render::Node;

/// Why the stack could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A package or the broker could not be installed.
    #[error("cannot install {what}: {reason}")]
    Install {
        /// What was being installed.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A command failed.
    #[error("{what} failed: {reason}")]
    Command {
        /// The command.
        what: String,
        /// Its failure.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A port the stack needs is used by a process it did not start.
    #[error("port {port} needed by {service} is taken by another process")]
    PortTaken {
        /// The service.
        service: String,
        /// The port.
        port: u16,
    },
    /// A service started but did not answer in time.
    #[error("{service} did not become ready within {timeout:?}; last lines of {log}:\n{tail}")]
    NotReady {
        /// The service.
        service: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// No service of that name in this stack.
    #[error("no service named {0:?} in this stack")]
    UnknownService(String),
}

/// What a service is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The standalone ZooKeeper ClickHouse replication needs.
    ZooKeeper,
    /// One ClickHouse server.
    ClickHouse(Node),
    /// The Kafka-compatible broker.
    Broker,
}

/// One process of the stack.
#[derive(Debug, Clone)]
pub struct Service {
    /// `zookeeper`, `clickhouse-N` or `broker`.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its directory (config, data, log, pid file).
    pub dir: PathBuf,
}

impl Service {
    fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn log_path(&self) -> PathBuf {
        match self.kind {
            Kind::ClickHouse(_) => self.dir.join("log").join("stdout.log"),
            _ => self.dir.join("stdout.log"),
        }
    }

    /// The ports it listens on (the first is the one clients use).
    pub fn ports(&self, config: &StackConfig) -> Vec<u16> {
        match &self.kind {
            Kind::ZooKeeper => vec![config.zookeeper_port],
            Kind::ClickHouse(n) => vec![n.http_port, n.tcp_port, n.interserver_port],
            Kind::Broker => vec![config.broker_port],
        }
    }
}

/// A service's state as `ess stack status` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Whether it runs (and is ours).
    pub running: bool,
    /// Its pid when running.
    pub pid: Option<u32>,
    /// Its ports.
    pub ports: Vec<u16>,
    /// Where it keeps config, data and logs.
    pub dir: PathBuf,
    /// Resident memory in bytes, when running.
    pub rss_bytes: Option<u64>,
    /// Role detail, e.g. `shard 1 replica node1`.
    pub detail: String,
}

/// One row of `system.clusters` for the stack's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct ClusterReplica {
    /// Shard number (1-based).
    pub shard_num: u32,
    /// Replica number within the shard (1-based).
    pub replica_num: u32,
    /// Host.
    pub host_name: String,
    /// Native-protocol port.
    pub port: u16,
}

/// The cluster name the stack configures in `remote_servers`.
pub const CLUSTER_NAME: &str = "ess";

/// The local stack under one state directory.
#[derive(Debug, Clone)]
pub struct Stack {
    config: StackConfig,
    state_dir: PathBuf,
}

impl Stack {
    /// The stack `config` describes. If a stack already runs in its state dir, its profile
    /// (recorded by `up`) wins over the configured one.
    pub fn new(config: &StackConfig) -> Self {
        let state_dir = absolute(&config.state_dir);
        let mut config = config.clone();
        config.cache_dir = absolute(&config.cache_dir);
        Self { config, state_dir }
    }

    /// Overrides the profile (`ess stack up --profile …`).
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.config.profile = profile;
        self
    }

    /// The profile recorded by the last `up`, if any.
    pub fn recorded_profile(&self) -> Option<Profile> {
        let text = std::fs::read_to_string(self.state_dir.join("profile")).ok()?;
        match text.trim() {
            "cluster" => Some(Profile::Cluster),
            "single" => Some(Profile::Single),
            _ => None,
        }
    }

    /// The broker build recorded by the last `up`, if any: `ess stack start broker` restarts
    /// the build that stored the data, whatever the configuration says now.
    pub fn recorded_broker(&self) -> Option<BrokerBuild> {
        let text = std::fs::read_to_string(self.state_dir.join(BROKER_BUILD_FILE)).ok()?;
        [BrokerBuild::Wheel, BrokerBuild::Durable]
            .into_iter()
            .find(|b| broker_name(*b) == text.trim())
    }

    /// The broker build in effect: the recorded one if the stack was brought up, else the
    /// configured one.
    fn broker(&self) -> BrokerBuild {
        self.recorded_broker().unwrap_or(self.config.broker)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The configuration in effect.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// The ClickHouse nodes of the profile.
    pub fn nodes(&self) -> Vec<Node> {
        let count = match self.config.profile {
            Profile::Cluster => 4,
            Profile::Single => 1,
        };
        (0..count)
            .map(|i| Node {
                index: i + 1,
                shard: i / 2 + 1,
                http_port: self.config.clickhouse_http_port + i,
                tcp_port: self.config.clickhouse_tcp_port + i,
                interserver_port: self.config.clickhouse_interserver_port + i,
            })
            .collect()
    }

    /// The services of the profile, in start order.
    pub fn services(&self) -> Vec<Service> {
        let mut services = Vec::new();
        if self.config.profile == Profile::Cluster {
            services.push(Service {
                name: "zookeeper".into(),
                kind: Kind::ZooKeeper,
                dir: self.state_dir.join("zookeeper"),
            });
        }
        for node in self.nodes() {
            services.push(Service {
                name: format!("clickhouse-{}", node.index),
                dir: self.state_dir.join(format!("clickhouse-{}", node.index)),
                kind: Kind::ClickHouse(node),
            });
        }
        services.push(Service {
            name: "broker".into(),
            kind: Kind::Broker,
            dir: self.state_dir.join("broker"),
        });
        services
    }

    fn service(&self, name: &str) -> Result<Service, StackError> {
        self.services()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StackError::UnknownService(name.to_owned()))
    }

    /// Installs what the profile and the broker build need and is missing (cached: a second
    /// call installs nothing). Returns the broker binary.
    pub async fn install(&self) -> Result<PathBuf, StackError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            install::ensure_packages(this.config.profile == Profile::Cluster)?;
            install::ensure_broker(&this.config)
        })
        .await
        .map_err(|e| StackError::Command {
            what: "install".into(),
            reason: e.to_string(),
        })?
    }

    /// Installs what is missing, writes configs, starts every service that is not running and
    /// waits until each serves. Running it twice starts nothing the second time.
    pub async fn up(&self) -> Result<Vec<ServiceStatus>, StackError> {
        self.install().await?;
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| install::io_error(&self.state_dir, e))?;
        let profile = match self.config.profile {
            Profile::Cluster => "cluster",
            Profile::Single => "single",
        };
        let profile_path = self.state_dir.join("profile");
        std::fs::write(&profile_path, profile).map_err(|e| install::io_error(&profile_path, e))?;
        // The build that starts now is the one `start broker` restarts later (a running
        // broker keeps the build it was started with).
        let broker_running = self
            .service("broker")
            .ok()
            .and_then(|s| PidFile::read(&s.pid_path()))
            .is_some_and(|p| p.is_alive());
        if !broker_running {
            let path = self.state_dir.join(BROKER_BUILD_FILE);
            std::fs::write(&path, broker_name(self.config.broker))
                .map_err(|e| install::io_error(&path, e))?;
        }

        let services = self.services();
        // ZooKeeper first and really serving: ClickHouse 18.16 that started before it crashes
        // on its first ON CLUSTER query.
        for service in services
            .iter()
            .filter(|s| matches!(s.kind, Kind::ZooKeeper))
        {
            self.start(service)?;
            self.wait_ready(service).await?;
        }
        let clickhouse: Vec<&Service> = services
            .iter()
            .filter(|s| matches!(s.kind, Kind::ClickHouse(_)))
            .collect();
        for service in &clickhouse {
            self.start(service)?;
        }
        for service in &clickhouse {
            self.wait_ready(service).await?;
        }
        for service in services.iter().filter(|s| matches!(s.kind, Kind::Broker)) {
            self.start(service)?;
            self.wait_ready(service).await?;
        }
        Ok(self.status())
    }

    /// Starts one stopped service and waits until it serves (for fault tests and recovery).
    pub async fn start_service(&self, name: &str) -> Result<(), StackError> {
        let service = self.service(name)?;
        self.start(&service)?;
        self.wait_ready(&service).await
    }

    /// Stops one service gracefully. Returns whether it was running.
    pub async fn stop_service(&self, name: &str) -> Result<bool, StackError> {
        let service = self.service(name)?;
        Ok(stop_blocking(service.pid_path()).await)
    }

    /// Stops every service this stack started, in reverse start order. Returns the names of
    /// those that were running.
    pub async fn down(&self) -> Vec<String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.down_blocking())
            .await
            .unwrap_or_default()
    }

    /// [`Stack::down`] for synchronous callers (e.g. a guard's `Drop`).
    pub fn down_blocking(&self) -> Vec<String> {
        // Stop the services of both profiles: `down` must not leave anything behind even if
        // the profile changed since `up`.
        let mut all = self.clone().with_profile(Profile::Cluster).services();
        all.reverse();
        all.into_iter()
            .filter(|s| process::stop(&s.pid_path(), STOP_GRACE))
            .map(|s| s.name)
            .collect()
    }

    /// The state of every service of the profile.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services()
            .into_iter()
            .map(|s| {
                let pid = PidFile::read(&s.pid_path()).filter(PidFile::is_alive);
                let detail = match &s.kind {
                    Kind::ZooKeeper => "coordination for replicated tables".to_owned(),
                    Kind::ClickHouse(n) if self.config.profile == Profile::Cluster => {
                        format!("shard {} replica {}", n.shard, n.replica())
                    }
                    Kind::ClickHouse(_) => "single server".to_owned(),
                    Kind::Broker => match self.broker() {
                        BrokerBuild::Wheel => "tansu, memory storage (lost on stop)".to_owned(),
                        BrokerBuild::Durable => "tansu, sqlite storage (kept on stop)".to_owned(),
                    },
                };
                ServiceStatus {
                    running: pid.is_some(),
                    pid: pid.as_ref().map(|p| p.pid),
                    rss_bytes: pid.as_ref().and_then(|p| process::rss_bytes(p.pid)),
                    ports: s.ports(&self.config),
                    dir: s.dir.clone(),
                    name: s.name,
                    detail,
                }
            })
            .collect()
    }

    /// The cluster as ClickHouse node 1 sees it in `system.clusters`.
    pub async fn cluster_replicas(&self) -> Result<Vec<ClusterReplica>, StackError> {
        let url = format!("http://127.0.0.1:{}", self.config.clickhouse_http_port);
        local_client(&url)
            .with_validation(false)
            .query(
                "SELECT shard_num, replica_num, host_name, port FROM system.clusters \
                 WHERE cluster = ? ORDER BY shard_num, replica_num",
            )
            .bind(CLUSTER_NAME)
            .fetch_all()
            .await
            .map_err(|e| StackError::Command {
                what: format!("query system.clusters at {url}"),
                reason: e.to_string(),
            })
    }

    fn start(&self, service: &Service) -> Result<(), StackError> {
        if PidFile::read(&service.pid_path()).is_some_and(|p| p.is_alive()) {
            return Ok(());
        }
        for port in service.ports(&self.config) {
            if port_in_use(port) {
                return Err(StackError::PortTaken {
                    service: service.name.clone(),
                    port,
                });
            }
        }
        let dir = &service.dir;
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| install::io_error(p, e));
        let write =
            |p: &Path, text: &str| std::fs::write(p, text).map_err(|e| install::io_error(p, e));
        mkdir(dir)?;
        let (cmd, marker) = match &service.kind {
            Kind::ZooKeeper => {
                let data = dir.join("data");
                mkdir(&data)?;
                let cfg = dir.join("zoo.cfg");
                write(&cfg, &render::zoo_cfg(&data, self.config.zookeeper_port))?;
                let mut cmd = Command::new(install::JAVA);
                cmd.arg("-Xmx256m")
                    .arg("-cp")
                    .arg(format!("/etc/zookeeper/conf:{}", install::ZOOKEEPER_JAR))
                    .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
                    .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
                    .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                    .arg(&cfg);
                (cmd, cfg.display().to_string())
            }
            Kind::ClickHouse(node) => {
                for sub in ["data", "tmp", "log", "user_files", "format_schemas"] {
                    mkdir(&dir.join(sub))?;
                }
                let cluster = match self.config.profile {
                    Profile::Cluster => self.nodes(),
                    Profile::Single => Vec::new(),
                };
                let cfg = dir.join("config.xml");
                write(
                    &cfg,
                    &render::clickhouse_config(
                        dir,
                        node,
                        CLUSTER_NAME,
                        &cluster,
                        self.config.zookeeper_port,
                    ),
                )?;
                write(&dir.join("users.xml"), render::clickhouse_users())?;
                let mut cmd = Command::new(install::CLICKHOUSE_SERVER);
                cmd.arg(format!("--config-file={}", cfg.display()))
                    .current_dir(dir);
                (cmd, cfg.display().to_string())
            }
            Kind::Broker => {
                let build = self.broker();
                let binary = install::broker_path(&self.config.cache_dir, build);
                let url = format!("tcp://127.0.0.1:{}", self.config.broker_port);
                let storage = match build {
                    BrokerBuild::Wheel => "memory://tansu/".to_owned(),
                    // tansu resolves a sqlite URL against its working directory, even an
                    // absolute one: `tansu.db` in the broker's own directory.
                    BrokerBuild::Durable => "sqlite://tansu.db".to_owned(),
                };
                let mut cmd = Command::new(binary);
                cmd.arg("broker")
                    .args(["--listener-url", &url])
                    .args(["--advertised-listener-url", &url])
                    .args(["--storage-engine", &storage])
                    .env("RUST_LOG", "warn")
                    .current_dir(dir);
                (cmd, url)
            }
        };
        let pid = process::spawn(cmd, &service.log_path(), &service.pid_path(), &marker)?;
        tracing::info!(service = %service.name, pid = pid.pid, "started");
        Ok(())
    }

    async fn wait_ready(&self, service: &Service) -> Result<(), StackError> {
        let timeout = self.config.start_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready(service).await {
                return Ok(());
            }
            let alive = PidFile::read(&service.pid_path()).is_some_and(|p| p.is_running());
            if !alive || Instant::now() > deadline {
                let log = service.log_path();
                let mut tail = log_tail(&log, 15);
                if let Kind::ClickHouse(_) = service.kind {
                    tail.push_str(&log_tail(&service.dir.join("log").join("error.log"), 15));
                }
                return Err(StackError::NotReady {
                    service: format!("{}{}", service.name, if alive { "" } else { " (exited)" }),
                    timeout,
                    log: log.display().to_string(),
                    tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_ready(&self, service: &Service) -> bool {
        match &service.kind {
            Kind::ZooKeeper => {
                let port = self.config.zookeeper_port;
                tokio::task::spawn_blocking(move || zookeeper_mode(port))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|mode| mode == "standalone")
            }
            Kind::ClickHouse(node) => {
                let url = format!("http://127.0.0.1:{}", node.http_port);
                local_client(&url)
                    .with_validation(false)
                    .query("SELECT 1")
                    .fetch_one::<u8>()
                    .await
                    .is_ok()
            }
            Kind::Broker => {
                let brokers = format!("127.0.0.1:{}", self.config.broker_port);
                tokio::task::spawn_blocking(move || broker_answers(&brokers))
                    .await
                    .unwrap_or(false)
            }
        }
    }
}

/// Where `up` records the broker build it started (beside `profile`; `broker/` is the
/// broker's own directory).
const BROKER_BUILD_FILE: &str = "broker-build";

fn broker_name(build: BrokerBuild) -> &'static str {
    match build {
        BrokerBuild::Wheel => "wheel",
        BrokerBuild::Durable => "durable",
    }
}

/// A client for one of the stack's own nodes (plain HTTP, the passwordless `default` user),
/// made like every other ClickHouse client of ess.
fn local_client(url: &str) -> clickhouse::Client {
    ess_core::clickhouse::client(&ess_core::config::ClickHouseConfig::default(), url)
}

/// How long a service gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

async fn stop_blocking(pid_path: PathBuf) -> bool {
    tokio::task::spawn_blocking(move || process::stop(&pid_path, STOP_GRACE))
        .await
        .unwrap_or(false)
}

/// ZooKeeper's `Mode:` from the `srvr` four-letter command.
pub fn zookeeper_mode(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"srvr").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(str::to_owned)
}

/// Whether a Kafka broker at `brokers` answers a metadata request.
pub fn broker_answers(brokers: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: Result<BaseConsumer, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "0")
        .create();
    consumer
        .and_then(|c| c.fetch_metadata(None, Duration::from_secs(2)))
        .is_ok_and(|m| !m.brokers().is_empty())
}
