//! `ess stack`: a second, private stack on other ports, brought up, checked and torn down.

use ess_core::config::{Profile, StackConfig};
use ess_stack::Stack;
use ess_stack::process::PidFile;

/// A free block of ports: a random base where every port the stack needs is unused.
fn free_port_base() -> u16 {
    loop {
        let base = 30_000 + (rand_u16() % 300) * 100;
        let ports = [
            181, 92, 200, 201, 202, 203, 300, 301, 302, 303, 400, 401, 402, 403,
        ];
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", base + p)).is_ok())
        {
            return base;
        }
    }
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// A second stack in a temporary state dir; stopped and removed on drop, even when the test
/// fails half-way.
struct PrivateStack {
    stack: Stack,
    port_base: u16,
}

impl PrivateStack {
    fn new(name: &str, profile: Profile) -> Self {
        let port_base = free_port_base();
        let config = StackConfig {
            profile,
            state_dir: std::env::temp_dir().join(ess_testkit::unique(name)),
            zookeeper_port: port_base + 181,
            clickhouse_http_port: port_base + 200,
            clickhouse_tcp_port: port_base + 300,
            clickhouse_interserver_port: port_base + 400,
            broker_port: port_base + 92,
            ..StackConfig::default()
        };
        Self {
            stack: Stack::new(&config),
            port_base,
        }
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        self.stack.down_blocking();
        let _ = std::fs::remove_dir_all(self.stack.state_dir());
    }
}

#[tokio::test]
async fn up_is_idempotent_shows_two_shards_two_replicas_and_down_stops_everything() {
    let private = PrivateStack::new("stack", Profile::Cluster);
    let stack = &private.stack;
    let first = stack.up().await.expect("stack up");
    assert_eq!(first.len(), 6, "zookeeper, four ClickHouse servers, broker");
    assert!(first.iter().all(|s| s.running), "{first:?}");

    let replicas = stack.cluster_replicas().await.expect("system.clusters");
    let shape: Vec<(u32, u32)> = replicas
        .iter()
        .map(|r| (r.shard_num, r.replica_num))
        .collect();
    assert_eq!(shape, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
    let broker = format!("127.0.0.1:{}", private.port_base + 92);
    assert!(ess_stack::broker_answers(&broker));

    // A second `up` starts nothing: the same processes keep running.
    let second = stack.up().await.expect("second stack up");
    let pids = |s: &[ess_stack::ServiceStatus]| s.iter().map(|s| s.pid).collect::<Vec<_>>();
    assert_eq!(pids(&first), pids(&second));

    let pid_files: Vec<PidFile> = stack
        .services()
        .iter()
        .filter_map(|s| PidFile::read(&s.dir.join("pid")))
        .collect();
    assert_eq!(pid_files.len(), 6);
    let mut stopped = stack.down().await;
    stopped.sort();
    assert_eq!(stopped.len(), 6, "{stopped:?}");
    for pid in &pid_files {
        assert!(!pid.is_alive(), "pid {} still runs after down", pid.pid);
    }
    assert!(stack.status().iter().all(|s| !s.running));
    assert!(
        stack.down().await.is_empty(),
        "a second down finds nothing to stop"
    );
    let _ = std::fs::remove_dir_all(stack.state_dir());
}

#[tokio::test]
async fn up_names_a_port_taken_by_someone_else() {
    let private = PrivateStack::new("squat", Profile::Single);
    // Someone else holds the first ClickHouse node's HTTP port.
    let port = private.port_base + 200;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let err = private.stack.up().await.expect_err("port is taken");
    assert!(
        err.to_string().contains(&port.to_string()) && err.to_string().contains("clickhouse-1"),
        "{err}"
    );
}
