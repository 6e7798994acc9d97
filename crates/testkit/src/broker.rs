//! A private broker (tansu, storing in memory) for tests that stop or freeze it, so the
//! shared one is never touched.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ess_core::config::{KafkaConfig, StackConfig};

use crate::process::signal;

/// A tansu broker of the test's own on a port of its own; killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
}

impl Broker {
    /// Starts one on `port`, waits until it answers and creates `config`'s topic with 2
    /// partitions (memory storage: the topic is created again after every start).
    pub async fn start(port: u16, config: &KafkaConfig) -> Self {
        let binary = ess_stack::install::ensure_broker(&StackConfig::default()).expect("tansu");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = Self { child };
        let brokers = format!("127.0.0.1:{port}");
        crate::eventually(Duration::from_secs(30), "private broker answers", || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || ess_stack::broker_answers(&brokers))
                    .await
                    .ok()
                    .filter(|up| *up)
            }
        })
        .await;
        ess_core::kafka::ensure_topic(config, &config.topic, 2)
            .await
            .expect("create topic");
        broker
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the broker process.
    pub fn signal(&self, name: &str) {
        assert!(signal(&self.child, name), "kill -{name}");
    }

    /// Kills the broker and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, "CONT");
        }
        self.kill();
    }
}
