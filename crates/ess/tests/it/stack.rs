//! `ess stack`: a second, private stack on other ports, brought up, checked and torn down.

use ess_core::config::{Profile, StackConfig};
use ess_stack::Stack;
use ess_stack::process::PidFile;

fn private_stack(name: &str, port_base: u16) -> Stack {
    let dir = std::env::temp_dir().join(ess_testkit::unique(name));
    let config = StackConfig {
        profile: Profile::Cluster,
        state_dir: dir,
        zookeeper_port: port_base + 181,
        clickhouse_http_port: port_base + 200,
        clickhouse_tcp_port: port_base + 300,
        clickhouse_interserver_port: port_base + 400,
        broker_port: port_base + 92,
        ..StackConfig::default()
    };
    Stack::new(&config)
}

#[tokio::test]
async fn up_is_idempotent_shows_two_shards_two_replicas_and_down_stops_everything() {
    let stack = private_stack("stack", 21000);
    let first = stack.up().await.expect("stack up");
    assert_eq!(first.len(), 6, "zookeeper, four ClickHouse servers, broker");
    assert!(first.iter().all(|s| s.running), "{first:?}");

    let replicas = stack.cluster_replicas().await.expect("system.clusters");
    let shape: Vec<(u32, u32)> = replicas
        .iter()
        .map(|r| (r.shard_num, r.replica_num))
        .collect();
    assert_eq!(shape, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
    assert!(ess_stack::broker_answers("127.0.0.1:21092"));

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
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let dir = std::env::temp_dir().join(ess_testkit::unique("squat"));
    let config = StackConfig {
        profile: Profile::Single,
        state_dir: dir.clone(),
        clickhouse_http_port: port,
        clickhouse_tcp_port: 23300,
        clickhouse_interserver_port: 23400,
        broker_port: 23092,
        ..StackConfig::default()
    };
    let stack = Stack::new(&config);
    let err = stack.up().await.expect_err("port is taken");
    assert!(
        err.to_string().contains(&port.to_string()) && err.to_string().contains("clickhouse-1"),
        "{err}"
    );
    stack.down().await;
    let _ = std::fs::remove_dir_all(dir);
}
