//! The deployment files under `deploy/`: they parse, use only configuration keys ess knows,
//! describe the ClickHouse cluster the way the local stack does, their alert rules pass
//! `promtool`, and the dashboard and alerts name only metrics a running ingest and sink
//! export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::Config;
use ess_stack::render::{Node, clickhouse_config};
use ess_testkit::Ephemeral;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Every document of a YAML file, with `<<:` merge keys applied.
fn yaml(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("deploy/{path}: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("deploy/{path}: {e}"));
            value
        })
        .collect()
}

/// The dotted keys of the configuration (`kafka.sasl.password`, …), from the defaults.
fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let toml::Value::Table(t) = value {
                walk(&path, t, out);
            }
            out.insert(path);
        }
    }
    let table: toml::Table = Config::default().to_toml().parse().unwrap();
    let mut keys = BTreeSet::new();
    walk("", &table, &mut keys);
    keys
}

/// The config key an `ESS_SECTION__KEY` variable sets, if it is one.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("ESS_")?;
    rest.contains("__").then(|| {
        rest.split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// Every `ESS_*` variable name set anywhere in `value` (compose `environment` maps,
/// Kubernetes `env` lists and Secret `stringData`).
fn ess_variables(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(k) = k.as_str() {
                    if k.starts_with("ESS_") {
                        out.insert(k.to_owned());
                    }
                    if k == "name"
                        && let Some(name) = v.as_str()
                        && name.starts_with("ESS_")
                    {
                        out.insert(name.to_owned());
                    }
                }
                ess_variables(v, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| ess_variables(v, out)),
        _ => {}
    }
}

fn check_variables(file: &str, docs: &[Value], known: &BTreeSet<String>) -> usize {
    let mut vars = BTreeSet::new();
    docs.iter().for_each(|d| ess_variables(d, &mut vars));
    for var in &vars {
        if let Some(key) = env_key(var) {
            assert!(
                known.contains(&key),
                "deploy/{file}: {var} sets `{key}`, which ess does not know"
            );
        }
    }
    vars.len()
}

/// A throwaway PEM certificate for config files that name CA files of the target machine.
fn some_certificate(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
        ])
        .args(["-keyout", "/dev/null", "-out"])
        .arg(dir.join("ca.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ca.pem")
}

fn load_toml(text: &str, dir: &Path, env: &[(&str, &str)]) -> Config {
    let path = dir.join("ess.toml");
    std::fs::write(&path, text).unwrap();
    let ca = some_certificate(dir);
    let mut overrides = Vec::new();
    let parsed: toml::Table = text.parse().unwrap();
    if parsed["kafka"].get("tls").is_some() {
        overrides.push(format!("kafka.tls.ca_file={}", ca.display()));
    }
    if parsed["clickhouse"].get("ca_file").is_some() {
        overrides.push(format!("clickhouse.ca_file={}", ca.display()));
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load_from(Some(&path), &env, &overrides)
        .unwrap_or_else(|e| panic!("{text}\nis refused: {e}"))
}

#[test]
fn compose_and_manifests_parse_and_set_only_keys_ess_knows() {
    let known = known_keys();
    let dir = tempfile::tempdir().unwrap();

    // The config file the compose services mount.
    let config = load_toml(&read("ess.toml"), dir.path(), &[]);
    assert_eq!(config.clickhouse.all_nodes().len(), 4);
    assert_eq!(config.clickhouse.cluster, "ess");

    let compose = yaml("compose.yaml");
    let services = compose[0]["services"].as_mapping().expect("services");
    for name in [
        "kafka",
        "keeper",
        "ch-1",
        "ch-2",
        "ch-3",
        "ch-4",
        "migrate",
        "ingest",
        "sink",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "compose has no {name} service");
    }
    for (name, args) in [
        ("migrate", "migrate"),
        ("ingest", "ingest"),
        ("sink", "sink"),
    ] {
        let s = &services[name];
        assert_eq!(s["command"][0].as_str(), Some(args), "{name}");
        assert_eq!(
            s["environment"]["ESS_CONFIG"].as_str(),
            Some("/etc/ess/ess.toml")
        );
        let mount = s["volumes"][0].as_str().unwrap();
        assert!(mount.starts_with("./ess.toml:/etc/ess/ess.toml"), "{mount}");
    }
    assert!(check_variables("compose.yaml", &compose, &known) >= 3);

    // Kubernetes: the ConfigMap's file loads, every ESS_ variable is a known key.
    let configmap = yaml("k8s/configmap.yaml");
    let text = configmap[0]["data"]["ess.toml"]
        .as_str()
        .expect("data.ess.toml");
    let config = load_toml(
        text,
        dir.path(),
        &[
            ("ESS_KAFKA__SASL__PASSWORD", "x"),
            ("ESS_CLICKHOUSE__PASSWORD", "y"),
        ],
    );
    assert!(config.kafka.tls.enabled);
    let mut workloads = Vec::new();
    for file in [
        "k8s/secret.yaml",
        "k8s/migrate-job.yaml",
        "k8s/ingest.yaml",
        "k8s/sink.yaml",
    ] {
        let docs = yaml(file);
        check_variables(file, &docs, &known);
        workloads.extend(docs);
    }
    let kind = |k: &'static str| {
        workloads
            .iter()
            .filter(move |d| d["kind"].as_str() == Some(k))
    };
    let deployments: Vec<&Value> = kind("Deployment").collect();
    assert_eq!(deployments.len(), 2);
    for d in &deployments {
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert!(
            container["resources"]["limits"]["memory"]
                .as_str()
                .is_some()
        );
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let covered = kind("PodDisruptionBudget").any(|p| {
            p["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .unwrap()
                .iter()
                .all(|(k, v)| &labels[k.as_str().unwrap()] == v)
        });
        assert!(
            covered,
            "no PodDisruptionBudget selects {:?}",
            d["metadata"]["name"]
        );
    }
    let job = kind("Job").next().expect("migrate Job");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str(),
        Some("migrate")
    );

    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/ess\"]"));
    assert!(dockerfile.contains("/readyz"));
    assert!(dockerfile.contains("USER 10001"));
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
}

/// Whether one `.dockerignore` pattern component matches one path component (`*` any run of
/// characters, `?` one character).
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            (0..=name.len()).any(|skip| component_matches(rest, &name[skip..]))
        }
        (Some((b'?', rest)), Some((_, tail))) => component_matches(rest, tail),
        (Some((p, rest)), Some((n, tail))) => p == n && component_matches(rest, tail),
        _ => false,
    }
}

/// Whether `pattern` (components, `**` for any number of them) matches `path` exactly.
fn pattern_matches(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), _) => {
            (0..=path.len()).any(|skip| pattern_matches(rest, &path[skip..]))
        }
        (Some((p, rest)), Some((n, tail))) => {
            component_matches(p.as_bytes(), n.as_bytes()) && pattern_matches(rest, tail)
        }
        _ => false,
    }
}

/// Whether Docker leaves `path` (relative to the build context) out of the context: a
/// pattern excludes a path when it matches the path or one of its directories, and the last
/// matching pattern wins (`!` re-includes).
fn docker_ignores(ignore_file: &str, path: &str) -> bool {
    let path: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for line in ignore_file.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keep, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern: Vec<&str> = pattern
            .trim_matches('/')
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if (1..=path.len()).any(|n| pattern_matches(&pattern, &path[..n])) {
            ignored = !keep;
        }
    }
    ignored
}

#[test]
fn dockerignore_keeps_what_the_image_build_needs_and_leaves_out_output_and_state() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    // The Dockerfile builds from the whole context (`COPY . .`, then cargo): every tracked
    // file of the workspace's manifests and crates must reach it.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("COPY . ."), "{dockerfile}");
    let tracked = Command::new("git")
        .args(["ls-files", "Cargo.toml", "Cargo.lock", "crates"])
        .current_dir(&root)
        .output()
        .expect("git");
    let tracked = String::from_utf8(tracked.stdout).unwrap();
    assert!(tracked.lines().count() > 50, "{tracked}");
    for file in tracked.lines() {
        assert!(
            !docker_ignores(&ignore, file),
            ".dockerignore leaves out {file}, which the build needs"
        );
    }
    for out in [
        "target/release/ess",
        "target/sdk/node/node_modules/x/index.js",
        ".ess/clickhouse/1/data/x.bin",
        "crates/sink/.ess/broker.log",
        ".git/HEAD",
        "bench/out/wrk.txt",
        "bench/.venv/bin/python",
        "deploy/tls/server.key",
    ] {
        assert!(
            docker_ignores(&ignore, out),
            "{out} goes into the image's build context"
        );
    }
}

/// (cluster name, shards as (internal_replication, replica count)) of `remote_servers`.
fn cluster_shape(xml: &str) -> (String, Vec<(String, usize)>) {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let servers = doc
        .descendants()
        .find(|n| n.has_tag_name("remote_servers"))
        .expect("remote_servers");
    let cluster = servers
        .children()
        .find(|n| n.is_element())
        .expect("a cluster");
    let shards = cluster
        .children()
        .filter(|n| n.has_tag_name("shard"))
        .map(|shard| {
            let internal = shard
                .children()
                .find(|n| n.has_tag_name("internal_replication"))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_owned();
            (
                internal,
                shard
                    .children()
                    .filter(|n| n.has_tag_name("replica"))
                    .count(),
            )
        })
        .collect();
    (cluster.tag_name().name().to_owned(), shards)
}

/// (shard, replica) macros.
fn macros(xml: &str) -> (String, String) {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let text = |tag: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name("macros"))
            .and_then(|m| m.children().find(|n| n.has_tag_name(tag)))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_owned()
    };
    (text("shard"), text("replica"))
}

#[test]
fn clickhouse_xml_has_the_cluster_layout_of_the_local_stack() {
    let nodes: Vec<Node> = (0..4u16)
        .map(|i| Node {
            index: i + 1,
            shard: i / 2 + 1,
            http_port: 8123 + i,
            tcp_port: 9000 + i,
            interserver_port: 9009 + i,
        })
        .collect();
    let local: Vec<String> = nodes
        .iter()
        .map(|n| clickhouse_config(Path::new("/x"), n, "ess", &nodes, 2181))
        .collect();
    let deployed = read("clickhouse/config.d/cluster.xml");
    assert_eq!(cluster_shape(&deployed), cluster_shape(&local[0]));
    assert_eq!(cluster_shape(&deployed).0, "ess");
    let doc = roxmltree::Document::parse(&deployed).unwrap();
    assert!(doc.descendants().any(|n| n.has_tag_name("zookeeper")));
    // Node i of the compose file carries the macros node i of the local stack carries, and
    // sits in that shard of remote_servers.
    let servers = doc
        .descendants()
        .find(|n| n.has_tag_name("remote_servers"))
        .unwrap();
    let hosts: Vec<String> = servers
        .descendants()
        .filter(|n| n.has_tag_name("host"))
        .filter_map(|n| n.text().map(str::to_owned))
        .collect();
    assert_eq!(hosts, ["ch-1", "ch-2", "ch-3", "ch-4"]);
    for (i, local) in local.iter().enumerate() {
        let file = format!("clickhouse/macros/ch-{}.xml", i + 1);
        assert_eq!(macros(&read(&file)), macros(local), "{file}");
    }
    let compose = yaml("compose.yaml");
    for i in 1..=4 {
        let volumes = &compose[0]["services"][format!("ch-{i}").as_str()]["volumes"];
        let mounts: Vec<&str> = volumes
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("./clickhouse/macros/ch-{i}.xml:"))),
            "{mounts:?}"
        );
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with("./clickhouse/config.d/cluster.xml:")),
            "{mounts:?}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus) is installed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names (`ess_…`) in a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ess_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// Names of the samples in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn scrape(url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-fsS", url])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_a_running_ingest_and_sink_export() {
    let mut used = BTreeSet::new();
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana/ess.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            metric_names(target["expr"].as_str().unwrap(), &mut used);
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    // Alerts may also watch counters that only appear once something goes wrong (insert
    // retries, a paused sink, a fence that waited or skipped a node); those must at least be
    // names the code records.
    let mut alerts = BTreeSet::new();
    for group in yaml("prometheus/alerts.yml")[0]["groups"]
        .as_sequence()
        .unwrap()
    {
        for rule in group["rules"].as_sequence().unwrap() {
            metric_names(rule["expr"].as_str().unwrap(), &mut alerts);
        }
    }
    let sources: String = [
        "ingest/src/metrics.rs",
        "sink/src/monitoring.rs",
        "sink/src/reconcile.rs",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(f)).unwrap()
    })
    .collect();
    let rare: BTreeSet<String> = [
        "ess_sink_insert_retries_total",
        "ess_sink_paused",
        "ess_sink_fence_waits_total",
        "ess_sink_fence_unreachable_total",
    ]
    .map(str::to_owned)
    .into();
    for name in &alerts {
        // A histogram is recorded under its own name and exported as _bucket/_sum/_count.
        let recorded = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            sources.contains(&format!("\"{recorded}\"")),
            "alert on {name}, which ess does not record"
        );
    }
    used.extend(alerts.difference(&rare).cloned());

    // An ingest and a sink on the running stack, in a topic and database of their own.
    let eph = Ephemeral::new(2).await;
    let c = &eph.config;
    let port = 28_900 + u16::from(uuid::Uuid::new_v4().as_bytes()[0] % 40) * 2;
    let (ingest_addr, sink_addr) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    );
    let sets = [
        format!("clickhouse.database={}", c.clickhouse.database),
        format!("kafka.topic={}", c.kafka.topic),
        format!("kafka.dlq_topic={}", c.kafka.dlq_topic),
        format!("sink.group_id={}", c.sink.group_id),
        "sink.session_timeout_ms=3000".to_owned(),
        "sink.heartbeat_interval_ms=500".to_owned(),
        "sink.batch_max_wait=100ms".to_owned(),
        format!("sink.listen={sink_addr}"),
        format!("ingest.listen={ingest_addr}"),
        "ingest.auth=off".to_owned(),
    ];
    let ess = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ess"));
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        for s in &sets {
            cmd.args(["--set", s]);
        }
        cmd
    };
    let mut procs = Killed(Vec::new());
    procs.0.push(ess(&["sink"]).spawn().unwrap());
    procs.0.push(ess(&["ingest"]).spawn().unwrap());
    let target = format!("http://{ingest_addr}");
    crate::tls::wait_http(&target, Duration::from_secs(60)).await;
    let load = ess(&[
        "load",
        "--events",
        "500",
        "--connections",
        "4",
        "--json",
        "--target",
        &target,
    ])
    .output()
    .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stdout)
    );
    // A message no event parser accepts goes to the dead-letter topic.
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ess_core::kafka::client_config(&c.kafka).create().unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(&c.kafka.topic).payload("not json"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let mut missing = used.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !missing.is_empty() && Instant::now() < deadline {
        let mut names = exported(&scrape(&format!("http://{ingest_addr}/metrics")).await);
        names.extend(exported(
            &scrape(&format!("http://{sink_addr}/metrics")).await,
        ));
        missing.retain(|m| !names.contains(m));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(procs);
    eph.cleanup().await;
    assert!(
        missing.is_empty(),
        "the dashboard or alerts use metrics nothing exports: {missing:?}"
    );
}
