//! Processes the stack started: spawned detached, remembered by pid file, stopped by pid.
//!
//! A pid file holds the pid and the service's marker, a string that appears in the process's
//! command line (its config path under the state dir). A pid whose command line lacks the
//! marker is someone else's process that reused the number, and is never signalled.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::StackError;
use crate::install::io_error;

/// A started process as its pid file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Process id.
    pub pid: u32,
    /// Text that must appear in `/proc/PID/cmdline`.
    pub marker: String,
}

impl PidFile {
    /// Reads `path`; `None` when absent or unreadable.
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let marker = lines.next()?.to_owned();
        Some(Self { pid, marker })
    }

    fn write(&self, path: &Path) -> Result<(), StackError> {
        std::fs::write(path, format!("{}\n{}\n", self.pid, self.marker))
            .map_err(|e| io_error(path, e))
    }

    /// Whether the process runs and is ours.
    pub fn is_alive(&self) -> bool {
        self.is_running()
            && std::fs::read(format!("/proc/{}/cmdline", self.pid))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&self.marker))
    }

    /// Whether the pid runs at all (not exited, not a zombie), whatever its command line.
    /// Right after a spawn the command line can still be mid-exec, so waiting for a process
    /// we just started uses this rather than [`PidFile::is_alive`].
    pub fn is_running(&self) -> bool {
        // A zombie has exited; only its parent's wait is missing.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    }
}

/// Starts `cmd` detached (own process group, output to `log`) and records it in `pid_path`.
pub fn spawn(
    mut cmd: Command,
    log: &Path,
    pid_path: &Path,
    marker: &str,
) -> Result<PidFile, StackError> {
    use std::os::unix::process::CommandExt;
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| io_error(log, e))?;
    let err = out.try_clone().map_err(|e| io_error(log, e))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd.spawn().map_err(|e| StackError::Command {
        what: format!("start {:?}", cmd.get_program()),
        reason: e.to_string(),
    })?;
    let pid = PidFile {
        pid: child.id(),
        marker: marker.to_owned(),
    };
    pid.write(pid_path)?;
    // The child is reaped by init once this process exits; dropping the handle does not kill it.
    drop(child);
    Ok(pid)
}

/// Sends `signal` to `pid` with the system's `kill`.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops the process in `pid_path` if it is ours: SIGTERM, then SIGKILL after `grace`.
/// Removes the pid file. Returns whether a process was stopped.
pub fn stop(pid_path: &Path, grace: Duration) -> bool {
    let Some(pid) = PidFile::read(pid_path) else {
        return false;
    };
    let mut stopped = false;
    if pid.is_alive() {
        signal(pid.pid, "TERM");
        let deadline = Instant::now() + grace;
        while pid.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if pid.is_alive() {
            tracing::warn!(pid = pid.pid, "did not stop on SIGTERM; sending SIGKILL");
            signal(pid.pid, "KILL");
            while pid.is_alive() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        stopped = true;
    }
    let _ = std::fs::remove_file(pid_path);
    stopped
}

/// The last `lines` lines of a process's log (empty when it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Whether something listens on `127.0.0.1:port`.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Resident set size of `pid` in bytes, when it runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Makes `path` absolute against the current directory.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}
