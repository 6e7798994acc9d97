//! ClickHouse failures on a private stack (its own ZooKeeper, four servers and broker on other
//! ports): one replica away for 30 s, then the whole cluster away for 30 s. The sink keeps its
//! group membership throughout and stores every event exactly once after recovery.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ess_core::config::{Profile, StackConfig};
use ess_stack::Stack;

use crate::support::*;

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn replica_and_whole_cluster_outages_lose_nothing_and_keep_the_group() {
    let base = 24000;
    let dir = std::env::temp_dir().join(ess_testkit::unique("sink-faults"));
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
    let _down = DownOnDrop(stack.clone(), dir.clone());
    // `up` is idempotent; a second call covers a service wrongly seen as exited right after
    // its start (see `start` below).
    let mut up = stack.up().await;
    for _ in 0..3 {
        if up.is_ok() {
            break;
        }
        up = stack.up().await;
    }
    up.expect("private stack up");

    let mut config = ess_testkit::stack_config();
    let name = ess_testkit::unique("faults");
    config.kafka.brokers = format!("127.0.0.1:{}", base + 92);
    config.kafka.topic = format!("{name}.events");
    config.kafka.dlq_topic = format!("{name}.dlq");
    config.kafka.partitions = 4;
    config.clickhouse.url = format!("http://127.0.0.1:{}", base + 200);
    config.clickhouse.nodes = (0..4)
        .map(|i| format!("http://127.0.0.1:{}", base + 200 + i))
        .collect();
    config.clickhouse.database = name.clone();
    config.sink.group_id = format!("{name}.sink");
    let config = test_config(config);
    ess_core::migrate::run(&config).await.expect("migrate");

    let producer = producer(&config);
    let sink = InProcess::start(&config).await;
    produce(&config, &producer, 5_000, 0).await;
    assert_eq!(
        wait_for_rows(&config, 5_000, Duration::from_secs(60)).await,
        (5_000, 5_000)
    );

    // One replica of shard 2 away while events keep coming.
    assert!(stack.stop_service("clickhouse-3").await.expect("stop"));
    produce(&config, &producer, 5_000, 5_000).await;
    tokio::time::sleep(OUTAGE).await;
    start(&stack, "clickhouse-3").await;
    assert_eq!(
        wait_for_rows(&config, 10_000, Duration::from_secs(90)).await,
        (10_000, 10_000)
    );

    // The whole cluster away.
    let names = [
        "clickhouse-1",
        "clickhouse-2",
        "clickhouse-3",
        "clickhouse-4",
    ];
    futures::future::join_all(names.iter().map(|n| stack.stop_service(n))).await;
    produce(&config, &producer, 5_000, 10_000).await;
    tokio::time::sleep(OUTAGE).await;
    assert!(
        sink.health().polled_at.load(Ordering::Relaxed) > 0,
        "the poll loop kept going"
    );
    for n in names {
        start(&stack, n).await;
    }
    assert_eq!(
        wait_for_rows(&config, 15_000, Duration::from_secs(120)).await,
        (15_000, 15_000)
    );
    // Every replica ends with its shard's rows.
    for url in config.clickhouse.all_nodes() {
        let (local, _) = ess_testkit::eventually(Duration::from_secs(60), "replicas", || {
            let config = config.clone();
            let url = url.clone();
            async move {
                let client = ess_core::clickhouse::client(&config.clickhouse, &url)
                    .with_validation(false)
                    .with_database(&config.clickhouse.database);
                client
                    .query("SELECT count(), uniqExact(id) FROM events_local")
                    .fetch_one::<(u64, u64)>()
                    .await
                    .ok()
                    .filter(|(c, u)| c == u && *c > 0)
            }
        })
        .await;
        assert!(local > 0);
    }

    assert_eq!(
        sink.health().revocations.load(Ordering::Relaxed),
        0,
        "group membership kept: no partition was ever revoked"
    );
    assert_eq!(sink.health().assignments.load(Ordering::Relaxed), 1);
    sink.stop().await.expect("stop");
    assert_eq!(counts(&config).await, (15_000, 15_000));
    assert_eq!(committed_total(&config, 4), 15_000);
}

/// Starts a stopped ClickHouse server and waits until it answers. `start_service` can report
/// a server that is in fact starting as exited (its liveness check reads the command line
/// of a child that has not exec'd yet), so on an error wait for the port instead of starting
/// a second instance.
async fn start(stack: &Stack, name: &str) {
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
struct DownOnDrop(Stack, std::path::PathBuf);

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
