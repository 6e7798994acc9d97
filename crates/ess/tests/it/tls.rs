//! ess against secured servers: a ClickHouse 18.16 node that serves only HTTPS (certificate of
//! a CA made for the test) to a password-protected user, and the broker behind a TLS
//! terminator (stunnel) that the broker advertises, so every Kafka connection negotiates TLS.
//! The `ess` binary runs migrate, sink, ingest, load and verify through them; one wrong
//! setting must stop migrate, ingest and sink within seconds with an error that names the key.
//!
//! SASL: a second broker requires authentication (`--authentication`), but no login to it can
//! succeed. The local broker (tansu, PyPI wheel) offers only SCRAM-SHA-256/512 and OAUTHBEARER,
//! its memory storage keeps no SCRAM credentials, and creating a user is itself refused as
//! unauthenticated. So this broker checks only that refused logins, a missing login and a
//! mechanism it does not offer stop ess with `kafka.sasl.*` named (see docs/deploy.md). A
//! working SCRAM login runs against the durable broker build (SQLite storage keeps the
//! credentials), when it is installed.
//!
//! Private servers on ports 28000–28999; the broker binary is the stack's (installed by
//! `ess stack up`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::{BrokerBuild, StackConfig};
use ess_testkit::process::run;

const PASSWORD: &str = "s3cret-for-ess";

/// Ten free ports in 28000–28999.
fn free_ports() -> u16 {
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let base = 28_000 + (u16::from_le_bytes([bytes[0], bytes[1]]) % 99) * 10;
        if (0..10).all(|p| std::net::TcpListener::bind(("127.0.0.1", base + p)).is_ok()) {
            return base;
        }
    }
}

/// A CA, a server certificate it signed for 127.0.0.1, and an unrelated second CA.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-subj",
            &format!("/CN=ess {ca}"),
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "30",
        "-extfile",
        "san.cnf",
    ]);
}

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.0.push((name.to_owned(), child));
    }

    /// SIGTERM to `name` and wait for it.
    fn stop(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.0.remove(i);
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The servers of one test: HTTPS ClickHouse, the broker with stunnel in front of it, and a
/// second broker that requires SASL.
struct Secured {
    dir: tempfile::TempDir,
    procs: Procs,
    https_port: u16,
    /// stunnel: TLS, forwarded to the broker, which advertises it.
    kafka_tls_port: u16,
    /// The broker's own plaintext listener.
    kafka_plain_port: u16,
    /// A second broker (plaintext) that requires SASL authentication.
    kafka_sasl_port: u16,
}

impl Secured {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = free_ports();
        let mut secured = Self {
            dir,
            procs: Procs::default(),
            https_port: base,
            kafka_tls_port: base + 3,
            kafka_plain_port: base + 4,
            kafka_sasl_port: base + 6,
        };
        make_certificates(secured.path());
        secured.start_clickhouse(base + 1, base + 2);
        secured.start_broker();
        secured.wait_ready().await;
        secured
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn start_clickhouse(&mut self, tcp_port: u16, interserver_port: u16) {
        let ch = self.file("clickhouse");
        for sub in ["data", "tmp", "log", "user_files", "format_schemas"] {
            std::fs::create_dir_all(ch.join(sub)).unwrap();
        }
        let d = ch.display();
        let tls = self.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <https_port>{https}</https_port>
    <tcp_port>{tcp_port}</tcp_port>
    <interserver_http_port>{interserver_port}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <openSSL>
        <server>
            <certificateFile>{tls}/server.pem</certificateFile>
            <privateKeyFile>{tls}/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <disableProtocols>sslv2,sslv3</disableProtocols>
        </server>
    </openSSL>
</yandex>
"#,
            https = self.https_port,
        );
        std::fs::write(ch.join("config.xml"), config).unwrap();
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <ess>
            <password>{PASSWORD}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </ess>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"#
        );
        std::fs::write(ch.join("users.xml"), users).unwrap();
        let log = ch.join("stdout.log");
        self.procs.spawn(
            "clickhouse",
            Command::new("clickhouse-server")
                .arg(format!("--config-file={d}/config.xml"))
                .current_dir(&ch),
            &log,
        );
    }

    fn start_broker(&mut self) {
        let stack = StackConfig::default();
        let tansu = ess_stack::install::broker_path(&stack.cache_dir, BrokerBuild::Wheel);
        assert!(
            tansu.is_file(),
            "{} missing: run `ess stack up` first",
            tansu.display()
        );
        let (plain, sasl, tls) = (
            self.kafka_plain_port,
            self.kafka_sasl_port,
            self.kafka_tls_port,
        );
        let mut broker = |name: &str, port: u16, advertised: u16, authenticate: bool| {
            let mut cmd = Command::new(&tansu);
            cmd.arg("broker")
                .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
                // Clients learn the brokers' address from metadata.
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{advertised}"),
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn");
            if authenticate {
                cmd.arg("--authentication");
            }
            let log = self.file(&format!("{name}.log"));
            self.procs.spawn(name, &mut cmd, &log);
        };
        broker("broker", plain, tls, false);
        broker("broker-sasl", sasl, sasl, true);
        let conf = self.file("stunnel.conf");
        let dir = self.path().display();
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = warning\n[kafka]\naccept = 127.0.0.1:{}\n\
                 connect = 127.0.0.1:{}\ncert = {dir}/server.pem\nkey = {dir}/server.key\n",
                self.kafka_tls_port, self.kafka_plain_port
            ),
        )
        .unwrap();
        let log = self.file("stunnel.log");
        self.procs
            .spawn("stunnel", Command::new("stunnel4").arg(&conf), &log);
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in [
            self.https_port,
            self.kafka_plain_port,
            self.kafka_tls_port,
            self.kafka_sasl_port,
        ] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "port {port} not listening; logs in {}",
                    self.path().display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The config file every command of the test uses: TLS to the broker with the test's CA,
    /// HTTPS to ClickHouse with the test's CA, the password from a file.
    fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        std::fs::write(self.file("ch-password"), format!("{PASSWORD}\n")).unwrap();
        let id = ess_testkit::unique("tls");
        let dir = self.path().display();
        let text = format!(
            r#"[kafka]
brokers = "127.0.0.1:{kafka}"
topic = "{id}"
dlq_topic = "{id}.dlq"
partitions = 2

[kafka.tls]
enabled = true
ca_file = "{dir}/ca.pem"

[clickhouse]
url = "https://127.0.0.1:{https}"
nodes = []
user = "ess"
password_file = "{dir}/ch-password"
ca_file = "{dir}/ca.pem"
database = "ess_tls"
cluster = ""
table = "events"

[ingest]
listen = "127.0.0.1:{ingest}"
auth = "off"

[sink]
group_id = "{id}"
listen = ""
session_timeout_ms = 3000
heartbeat_interval_ms = 500

[stack]
state_dir = "{dir}/state"
{extra}"#,
            kafka = self.kafka_tls_port,
            https = self.https_port,
            ingest = self.https_port + 5,
        );
        let path = self.file(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ingest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.https_port + 5)
    }
}

fn ess(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ess"));
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    cmd
}

/// Waits until `url`'s `/readyz` answers 200 (listening is not enough: ingest answers 503
/// until its producer has reached the broker).
pub(crate) async fn wait_http(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let readyz = format!("{url}/readyz");
    while ess_load::http::get(&readyz, Duration::from_secs(1))
        .await
        .is_none_or(|(status, _)| status != 200)
    {
        assert!(Instant::now() < deadline, "{url} is not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ess migrate`, then a sink and an ingest with `config`: 3,000 events sent through them are
/// stored exactly once.
async fn carry_events(s: &mut Secured, config: &Path) {
    let out = run(ess(config).arg("migrate"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ClickHouse 18.16"), "{said}");
    assert!(said.contains("created topics"), "{said}");

    let log = s.file("sink.log");
    s.procs.spawn("sink", ess(config).arg("sink"), &log);
    let log = s.file("ingest.log");
    s.procs.spawn("ingest", ess(config).arg("ingest"), &log);
    wait_http(&s.ingest_url(), Duration::from_secs(30)).await;

    let record = s.file("run.json");
    let load = run(ess(config)
        .args(["load", "--events", "3000", "--connections", "8", "--json"])
        .args(["--target", &s.ingest_url()])
        .arg("--record")
        .arg(&record));
    let summary: serde_json::Value = serde_json::from_slice(&load.stdout).expect("load JSON");
    assert_eq!(summary["requests_failed"], 0, "{summary:#}");

    let verify = ess(config)
        .args(["verify", "--wait", "90s", "--json", "--record"])
        .arg(&record)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap_or_else(|e| {
        panic!(
            "verify output {e}: {}\nsink log:\n{}",
            String::from_utf8_lossy(&verify.stdout),
            std::fs::read_to_string(s.file("sink.log")).unwrap_or_default()
        )
    });
    assert_eq!(v["accepted"], 3000, "{v:#}");
    assert_eq!(v["stored_rows"], 3000, "{v:#}");
    assert_eq!(v["unique_ids"], 3000, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(verify.status.success());
    s.procs.stop("ingest");
    s.procs.stop("sink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_ingest_sink_and_verify_over_kafka_tls_and_clickhouse_https_with_a_password() {
    let mut s = Secured::start().await;
    let config = s.write_config("ess", "");
    carry_events(&mut s, &config).await;
}

/// SCRAM-SHA-512 for real, against the broker built from crates.io with SQLite storage (the
/// only local broker that keeps SCRAM credentials): the user is created before the broker
/// requires authentication (creating one is refused afterwards), then ess logs in. Runs
/// where the durable build is installed, as the broker restart test does (always in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_to_the_durable_broker_carries_events_and_a_wrong_password_is_named() {
    if !crate::broker::durable_broker_installed(
        "scram_login_to_the_durable_broker_carries_events_and_a_wrong_password_is_named",
    ) {
        return;
    }
    let stack = StackConfig::default();
    let tansu = ess_stack::install::broker_path(&stack.cache_dir, BrokerBuild::Durable);
    assert!(tansu.is_file(), "{} missing", tansu.display());
    let mut s = Secured::start().await;
    let port = s.https_port + 7;
    let url = format!("tcp://127.0.0.1:{port}");
    // The storage URL's path is taken relative to the working directory.
    let dir = s.path().to_owned();
    let broker = |authenticate: bool| {
        let mut cmd = Command::new(&tansu);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://scram.db"])
            .current_dir(&dir)
            .env("RUST_LOG", "warn");
        if authenticate {
            cmd.arg("--authentication");
        }
        cmd
    };
    let listening = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "durable broker not listening");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let log = s.file("durable-setup.log");
    s.procs.spawn("durable", &mut broker(false), &log);
    listening().await;
    run(Command::new(&tansu)
        .args([
            "user",
            "create",
            "ess",
            "scram-s3cret",
            "--mechanism",
            "scram512",
        ])
        .args(["--broker", &url]));
    s.procs.stop("durable");
    let log = s.file("durable.log");
    s.procs.spawn("durable", &mut broker(true), &log);
    listening().await;

    let config = s.write_config("scram", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let tls = format!(
        "[kafka.tls]\nenabled = true\nca_file = \"{}\"\n",
        s.file("ca.pem").display()
    );
    assert!(text.contains(&tls), "{text}");
    let text = text
        .replace(
            &format!("brokers = \"127.0.0.1:{}\"", s.kafka_tls_port),
            &format!("brokers = \"127.0.0.1:{port}\""),
        )
        .replace(
            &tls,
            "[kafka.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"ess\"\npassword = \"scram-s3cret\"\n",
        );
    std::fs::write(&config, text).unwrap();
    refused(
        &config,
        "migrate",
        &["kafka.sasl.password=not-it"],
        "kafka.sasl.password",
        Duration::from_secs(8),
    );
    carry_events(&mut s, &config).await;
}

/// Runs `ess <command>` with `sets`: it must exit unsuccessfully within `within` (it is
/// killed then), and its error must name `key`.
fn refused(config: &Path, command: &str, sets: &[&str], key: &str, within: Duration) -> String {
    let started = Instant::now();
    let mut cmd = ess(config);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .arg(command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let mut err = String::new();
    use std::io::Read as _;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let what = format!("ess {command} {sets:?}");
    let status = status.unwrap_or_else(|| panic!("{what}: still running after {took:?}: {err}"));
    assert!(!status.success(), "{what} was accepted: {err}");
    assert!(
        err.contains(key),
        "{what}: the error does not name {key}: {err}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_wrong_security_setting_stops_migrate_ingest_and_sink_within_seconds_naming_it() {
    let s = Secured::start().await;
    // The config the working test runs with; each case below changes one thing.
    let config = s.write_config("ess", "");
    let quick = Duration::from_secs(8);
    let https = format!("https://127.0.0.1:{}", s.https_port);
    let other_ca = s.file("other-ca.pem");
    let other_ca = other_ca.display();

    // ClickHouse (Kafka settings right, so the ClickHouse check is what fails).
    std::fs::write(s.file("bad-password"), "not-it\n").unwrap();
    let bad = format!(
        "clickhouse.password_file={}",
        s.file("bad-password").display()
    );
    let plain = format!("clickhouse.url={}", https.replace("https://", "http://"));
    let other = format!("clickhouse.ca_file={other_ca}");
    for command in ["migrate", "sink"] {
        refused(&config, command, &[&bad], "clickhouse.password", quick);
        refused(&config, command, &[&other], "clickhouse.ca_file", quick);
    }
    // A reset connection may be a network fault: the sink logs it and retries.
    refused(&config, "migrate", &[&plain], "clickhouse.url", quick);

    // Kafka.
    let plain_broker = format!("kafka.brokers=127.0.0.1:{}", s.kafka_plain_port);
    // The broker that requires SASL, reached without TLS.
    let sasl_broker = [
        format!("kafka.brokers=127.0.0.1:{}", s.kafka_sasl_port),
        "kafka.tls.enabled=false".to_owned(),
        "kafka.tls.ca_file=".to_owned(),
    ];
    let sasl = |mechanism: &str| {
        [
            format!("kafka.sasl.mechanism={mechanism}"),
            "kafka.sasl.username=ess".to_owned(),
            "kafka.sasl.password=wrong".to_owned(),
        ]
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        // TLS to the broker's own listener, which does not speak it.
        (
            "TLS to a plaintext listener",
            vec![plain_broker],
            "kafka.tls.enabled",
        ),
        // No TLS to stunnel.
        (
            "plaintext to a TLS listener",
            sasl_broker[1..].to_vec(),
            "kafka.tls.enabled",
        ),
        (
            "another CA",
            vec![format!("kafka.tls.ca_file={other_ca}")],
            "kafka.tls.ca_file",
        ),
        // The broker that requires SASL knows no user: refused like a wrong password.
        (
            "credentials refused",
            [&sasl_broker[..], &sasl("scram-sha-512")].concat(),
            "kafka.sasl.password",
        ),
        (
            "no SASL where it is required",
            sasl_broker.to_vec(),
            "kafka.sasl.mechanism",
        ),
        (
            "a mechanism the broker does not offer",
            [&sasl_broker[..], &sasl("plain")].concat(),
            "kafka.sasl.mechanism",
        ),
        (
            "SASL where the broker has none",
            sasl("scram-sha-256").to_vec(),
            "kafka.sasl.mechanism",
        ),
    ];
    for (case, sets, key) in &cases {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        for command in ["migrate", "ingest", "sink"] {
            let err = refused(&config, command, &sets, key, quick);
            eprintln!(
                "{case}, ess {command}: {}",
                err.lines().last().unwrap_or("")
            );
        }
    }
}
