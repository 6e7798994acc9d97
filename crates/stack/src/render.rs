//! Config files for the servers the stack runs.

use std::fmt::Write as _;
use std::path::Path;

/// One ClickHouse node of the local stack.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1-based node number.
    pub index: u16,
    /// 1-based shard number.
    pub shard: u16,
    /// HTTP port.
    pub http_port: u16,
    /// Native-protocol port.
    pub tcp_port: u16,
    /// Interserver (replication) port.
    pub interserver_port: u16,
}

impl Node {
    /// The replica name used in the `{replica}` macro.
    pub fn replica(&self) -> String {
        format!("node{}", self.index)
    }
}

/// `zoo.cfg` for a standalone ZooKeeper.
pub fn zoo_cfg(data_dir: &Path, port: u16) -> String {
    format!(
        "tickTime=2000\n\
         initLimit=10\n\
         syncLimit=5\n\
         dataDir={}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=srvr,ruok\n\
         autopurge.purgeInterval=1\n",
        data_dir.display()
    )
}

/// A complete `config.xml` for one ClickHouse node. `cluster` lists every node (empty for a
/// single server, which gets no cluster, macros or ZooKeeper).
pub fn clickhouse_config(
    dir: &Path,
    node: &Node,
    cluster_name: &str,
    cluster: &[Node],
    zookeeper_port: u16,
) -> String {
    let dir = dir.display();
    let mut xml = String::new();
    let _ = write!(
        xml,
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/error.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{inter}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <max_connections>4096</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>200</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
"#,
        http = node.http_port,
        tcp = node.tcp_port,
        inter = node.interserver_port,
    );
    if !cluster.is_empty() {
        let _ = write!(xml, "    <remote_servers>\n        <{cluster_name}>\n");
        let mut shards: Vec<u16> = cluster.iter().map(|n| n.shard).collect();
        shards.dedup();
        for shard in shards {
            xml.push_str("            <shard>\n                <internal_replication>true</internal_replication>\n");
            for replica in cluster.iter().filter(|n| n.shard == shard) {
                let _ = writeln!(
                    xml,
                    "                <replica><host>127.0.0.1</host><port>{}</port></replica>",
                    replica.tcp_port
                );
            }
            xml.push_str("            </shard>\n");
        }
        let _ = write!(
            xml,
            r#"        </{cluster_name}>
    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{zookeeper_port}</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>{shard:02}</shard>
        <replica>{replica}</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
"#,
            shard = node.shard,
            replica = node.replica(),
        );
    }
    xml.push_str("</yandex>\n");
    xml
}

/// `users.xml`: the passwordless `default` user, loopback only.
pub fn clickhouse_users() -> &'static str {
    r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#
}
