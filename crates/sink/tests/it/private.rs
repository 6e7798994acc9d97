//! Private stacks for the tests that stop or freeze servers: each its own ZooKeeper, four
//! ClickHouse servers and broker on ports of its own, taken down when the test ends.

use std::time::Duration;

use ess_core::config::{Config, Profile, StackConfig};
use ess_stack::Stack;

use crate::support::*;

/// A private stack on ports from `base`, a configuration with names of the test's own on it
/// (merges of its table stopped), and the guard that takes the stack down.
pub async fn private_stack(base: u16, name: &str, partitions: i32) -> (Stack, Config, DownOnDrop) {
    let dir = std::env::temp_dir().join(ess_testkit::unique(name));
    let stack = Stack::new(&StackConfig {
        profile: Profile::Cluster,
        state_dir: dir.clone(),
        zookeeper_port: base + 181,
        clickhouse_http_port: base + 200,
        clickhouse_tcp_port: base + 300,
        clickhouse_interserver_port: base + 400,
        broker_port: base + 92,
        ..StackConfig::default()
    });
    init_logs();
    let down = DownOnDrop(stack.clone(), dir.clone());
    // `up` is idempotent; a second call covers a service wrongly seen as exited right after
    // its start (see `start_node` below).
    let mut up = stack.up().await;
    for _ in 0..3 {
        if up.is_ok() {
            break;
        }
        up = stack.up().await;
    }
    up.expect("private stack up");
    let config = private_config(base, name, partitions).await;
    (stack, config, down)
}

/// Names of the test's own on the private stack at `base`, migrated, merges stopped.
pub async fn private_config(base: u16, name: &str, partitions: i32) -> Config {
    let mut config = ess_testkit::stack_config();
    let name = ess_testkit::unique(&name.replace('-', "_"));
    config.kafka.brokers = format!("127.0.0.1:{}", base + 92);
    config.kafka.topic = format!("{name}.events");
    config.kafka.dlq_topic = format!("{name}.dlq");
    config.kafka.partitions = partitions;
    config.clickhouse.url = format!("http://127.0.0.1:{}", base + 200);
    config.clickhouse.nodes = (0..4)
        .map(|i| format!("http://127.0.0.1:{}", base + 200 + i))
        .collect();
    config.clickhouse.database = name.clone();
    config.sink.group_id = format!("{name}.sink");
    let config = test_config(config);
    ess_core::migrate::run(&config).await.expect("migrate");
    stop_merges(&config).await;
    config
}

/// The pid of a running service of the stack.
pub fn pid_of(stack: &Stack, name: &str) -> u32 {
    stack
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .and_then(|s| s.pid)
        .unwrap_or_else(|| panic!("{name} runs"))
}

/// Raw rows in the local table of node `index` (1-based).
pub async fn rows_on(config: &Config, index: usize) -> u64 {
    let url = &config.clickhouse.nodes[index - 1];
    let client = ess_core::clickhouse::client(&config.clickhouse, url)
        .with_validation(false)
        .with_database(&config.clickhouse.database);
    client
        .query(&format!(
            "SELECT count() FROM {}",
            config.clickhouse.local_table()
        ))
        .fetch_one::<u64>()
        .await
        .expect("local count")
}

/// Freezes a service of the stack (SIGSTOP): it keeps its connections and answers nothing,
/// as a hung machine does. Thawed when the returned guard drops.
pub fn freeze(stack: &Stack, name: &str) -> Thaw {
    let pid = pid_of(stack, name);
    signal_pid(pid, "STOP");
    Thaw(pid)
}

/// Whether a connection to `port` on this machine holds bytes its server has not read (a
/// request waiting at a frozen server). Reads `/proc/net/tcp`.
pub fn unread_bytes_at(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields
            .get(1)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let unread = fields
            .get(4)
            .and_then(|q| q.rsplit(':').next())
            .and_then(|q| u64::from_str_radix(q, 16).ok());
        local_port == Some(port) && unread.is_some_and(|n| n > 0)
    })
}

/// SIGCONT for a frozen server however the test ends.
pub struct Thaw(pub u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

/// Starts a stopped ClickHouse server and waits until it answers. `start_service` can report
/// a server that is in fact starting as exited (its liveness check reads the command line
/// of a child that has not exec'd yet), so on an error wait for the port instead of starting
/// a second instance.
pub async fn start_node(stack: &Stack, name: &str) {
    let Err(e) = stack.start_service(name).await else {
        return;
    };
    let index: u16 = name
        .trim_start_matches("clickhouse-")
        .parse()
        .expect("clickhouse-N");
    let url = format!(
        "http://127.0.0.1:{}",
        stack.config().clickhouse_http_port + index - 1
    );
    ess_testkit::eventually(
        Duration::from_secs(60),
        &format!("{name} answers ({e})"),
        || {
            let url = url.clone();
            async move {
                clickhouse::Client::default()
                    .with_url(url)
                    .with_validation(false)
                    .query("SELECT 1")
                    .fetch_one::<u8>()
                    .await
                    .ok()
            }
        },
    )
    .await;
}

/// Stops the private stack and removes its directory however the test ends (a panic
/// included).
pub struct DownOnDrop(Stack, std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let stack = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(stack.down());
            }
        })
        .join();
        // Keep the servers' logs when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}
