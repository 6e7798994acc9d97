//! The processes the demo starts (`ess sink` ×N, `ess ingest`): spawned and stopped by pid
//! file with the stack's own process handling, probed over HTTP with the load generator's
//! client, stopped in reverse order (ingest first, then the sinks) unless kept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ess_stack::process::{self, PidFile};

/// How long a child may take to stop on SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// One process the demo started.
#[derive(Debug)]
struct Child {
    name: String,
    pid: PidFile,
    pid_path: PathBuf,
    log: PathBuf,
}

/// Every process the demo started; stopped in reverse order when dropped, unless kept.
#[derive(Debug)]
pub struct Children {
    dir: PathBuf,
    config: PathBuf,
    list: Vec<Child>,
    keep: bool,
}

impl Children {
    /// None yet; each will run `ess --config <config>` with its log and pid file in `dir`.
    pub fn new(dir: &Path, config: &Path, keep: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            list: Vec::new(),
            keep,
        }
    }

    /// Starts `ess --config <config> <args>`. `marker` must be one of `args` (it tells this
    /// process from any other that later reuses its pid). Returns the pid.
    pub fn spawn(&mut self, name: &str, args: &[String], marker: &str) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("find the ess executable")?;
        let log = self.dir.join(format!("{name}.log"));
        let pid_path = self.dir.join(format!("{name}.pid"));
        let mut cmd = Command::new(exe);
        cmd.arg("--config").arg(&self.config).args(args);
        let pid = process::spawn(cmd, &log, &pid_path, marker)
            .with_context(|| format!("start {name}"))?;
        let id = pid.pid;
        self.list.push(Child {
            name: name.to_owned(),
            pid,
            pid_path,
            log,
        });
        Ok(id)
    }

    /// Waits until `name` answers `GET /readyz` on `port` with 200; fails with the end of its
    /// log when it exits first or `timeout` passes.
    pub async fn wait_ready(&self, name: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let Some(child) = self.list.iter().find(|c| c.name == name) else {
            bail!("{name} is not running");
        };
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + timeout;
        loop {
            if get(&url).await.is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            let tail = || process::log_tail(&child.log, 20);
            if !child.pid.is_running() {
                bail!(
                    "{name} exited before it was ready; last lines of {}:\n{}",
                    child.log.display(),
                    tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not answer /readyz with 200 on port {port} within {timeout:?}; \
                     last lines of {}:\n{}",
                    child.log.display(),
                    tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `name pid N` of each, for the message that says what was left running.
    pub fn describe(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|c| format!("{} pid {}", c.name, c.pid.pid))
            .collect()
    }

    /// Stops every child, last started first (ingest flushes its producer before the sinks
    /// finish their batch and commit): SIGTERM, then SIGKILL after a grace period. One line
    /// per child says what happened.
    pub fn stop_all(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        while let Some(child) = self.list.pop() {
            let stopped = process::stop(&child.pid_path, STOP_GRACE);
            done.push(if stopped {
                format!("{} stopped", child.name)
            } else {
                format!("{} had exited", child.name)
            });
        }
        done
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if !self.keep {
            self.stop_all();
        }
    }
}

/// `GET url` with a short timeout: the status and body, if it answered.
async fn get(url: &str) -> Option<(u16, String)> {
    ess_load::http::get(url, Duration::from_secs(2)).await
}

/// Partitions a sink says it holds (`ess_sink_assigned_partitions` on its `/metrics`).
async fn assigned_partitions(port: u16) -> Option<f64> {
    let (_, body) = get(&format!("http://127.0.0.1:{port}/metrics")).await?;
    body.lines()
        .find(|l| l.starts_with("ess_sink_assigned_partitions"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Waits until the sinks together hold every partition, each sink some (when there are at
/// least as many partitions as sinks): the group has settled, so no event waits for a join.
pub async fn wait_group_settled(ports: &[u16], partitions: i32, timeout: Duration) -> bool {
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
