//! The ClickHouse tables, and the row the sink writes into them.
//!
//! On a cluster, `{table}_local` is a `ReplicatedReplacingMergeTree` on every node and
//! `{table}` is a `Distributed` table over it, sharded by `cityHash64(toString(id))` so every
//! copy of one event id lands on the same shard (where the replacing merge can see it). On a
//! single server `{table}` is a plain `ReplacingMergeTree`.
//!
//! Millisecond times are `DateTime64(3, 'UTC')` on current servers and `UInt64` milliseconds
//! since the epoch on servers without DateTime64 (before 20.1). Both are eight little-endian
//! bytes of milliseconds in RowBinary, so one [`EventRow`] serves both.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::Flavor;
use crate::config::ClickHouseConfig;

/// One stored event, in the table's column order (the order of [`COLUMNS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, ::clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Event id: with `source`, the dedup key.
    #[serde(with = "::clickhouse::serde::uuid")]
    pub id: Uuid,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sender (the API key id with auth on, else what the client said).
    pub source: String,
    /// The known user; empty when anonymous.
    pub user_id: String,
    /// The device or browser id; empty when absent.
    pub anonymous_id: String,
    /// The client's address as ingest determined it; empty when unknown.
    pub ip: String,
    /// The request's `User-Agent`; empty when absent.
    pub user_agent: String,
    /// Context the client sent, as JSON object text (`{}` when none).
    pub context: String,
    /// Event time, ms since the epoch.
    pub event_time: i64,
    /// Ingest acceptance time, ms since the epoch.
    pub ingest_time: i64,
    /// When the sink wrote the row, ms since the epoch.
    pub store_time: i64,
    /// Properties as JSON text.
    pub properties: String,
    /// Kafka partition the event was read from.
    pub kafka_partition: i32,
    /// Kafka offset the event was read from.
    pub kafka_offset: i64,
}

/// A column's type on each server flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `UUID` everywhere.
    Uuid,
    /// A short repeated string: `LowCardinality(String)` on current servers, `String` on 18.16.
    Low,
    /// `String` everywhere.
    Text,
    /// Milliseconds: `DateTime64(3, 'UTC')` on current servers, `UInt64` on 18.16.
    Millis,
    /// `Int32` everywhere.
    Int32,
    /// `Int64` everywhere.
    Int64,
}

impl ColumnType {
    /// The SQL type for `flavor`.
    pub fn sql(self, flavor: Flavor) -> &'static str {
        match (self, flavor) {
            (Self::Uuid, _) => "UUID",
            (Self::Low, Flavor::Modern) => "LowCardinality(String)",
            (Self::Low | Self::Text, _) => "String",
            (Self::Millis, Flavor::Modern) => "DateTime64(3, 'UTC')",
            (Self::Millis, Flavor::Legacy) => "UInt64",
            (Self::Int32, _) => "Int32",
            (Self::Int64, _) => "Int64",
        }
    }
}

/// Declares the column list once: [`COLUMNS`] (names and types) and [`COLUMN_NAMES`] (the
/// names as one constant string) come from the same lines.
macro_rules! event_columns {
    ($first:literal: $first_ty:ident $(, $name:literal: $ty:ident)* $(,)?) => {
        /// Every column of the events table, in [`EventRow`] order: the one list the DDL, the
        /// insert statement and the encoder follow (a unit test holds `EventRow` to it). A new
        /// column is added here, in `EventRow`, and in `ess_sink::encode`'s row writer.
        pub const COLUMNS: &[(&str, ColumnType)] =
            &[($first, ColumnType::$first_ty) $(, ($name, ColumnType::$ty))*];
        /// The column names, comma separated, in [`COLUMNS`] order (what every insert names).
        pub const COLUMN_NAMES: &str = concat!($first $(, ", ", $name)*);
    };
}

event_columns!(
    "id": Uuid,
    "type": Low,
    "source": Low,
    "user_id": Text,
    "anonymous_id": Text,
    "ip": Text,
    "user_agent": Text,
    "context": Text,
    "event_time": Millis,
    "ingest_time": Millis,
    "store_time": Millis,
    "properties": Text,
    "kafka_partition": Int32,
    "kafka_offset": Int64,
);

/// The tables of one database, for one server flavor.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Old or current server.
    pub flavor: Flavor,
    /// Database name.
    pub database: String,
    /// Table users query.
    pub table: String,
    /// Cluster name; empty for a single server.
    pub cluster: String,
}

impl Schema {
    /// The schema `config` describes, for a server of `flavor`.
    pub fn new(config: &ClickHouseConfig, flavor: Flavor) -> Self {
        Self {
            flavor,
            database: config.database.clone(),
            table: config.table.clone(),
            cluster: config.cluster.clone(),
        }
    }

    /// The per-shard table on a cluster, the table itself on a single server.
    pub fn local_table(&self) -> String {
        local_table_of(&self.table, &self.cluster)
    }

    fn on_cluster(&self) -> String {
        if self.cluster.is_empty() {
            String::new()
        } else {
            format!(" ON CLUSTER {}", self.cluster)
        }
    }

    /// The column list, typed for the flavor.
    pub fn columns(&self) -> String {
        COLUMNS
            .iter()
            .map(|(name, ty)| format!("{name} {}", ty.sql(self.flavor)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// SQL turning a time column into ms since the epoch (`Int64`/`UInt64`).
    pub fn millis(&self, column: &str) -> String {
        match self.flavor {
            Flavor::Modern => format!("toUnixTimestamp64Milli({column})"),
            Flavor::Legacy => column.to_owned(),
        }
    }

    fn month_of(&self, column: &str) -> String {
        match self.flavor {
            Flavor::Modern => format!("toYYYYMM({column})"),
            Flavor::Legacy => format!("toYYYYMM(toDateTime(intDiv({column}, 1000)))"),
        }
    }

    /// Statements creating the database and tables; each is idempotent.
    pub fn ddl(&self) -> Vec<String> {
        let db = &self.database;
        let on = self.on_cluster();
        let local = self.local_table();
        // The sort key is the event id alone. ReplacingMergeTree collapses rows with equal sort
        // keys, so a key holding anything that differs between two copies of one event (ingest
        // time, Kafka offset) would keep both copies forever; the event id is what a retried or
        // replayed event shares. The version column keeps the latest ingested copy. Rows are
        // partitioned by the month of the event time, which a client's retry repeats too.
        let engine = if self.cluster.is_empty() {
            "ReplacingMergeTree(ingest_time)".to_owned()
        } else {
            format!(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/{local}', \
                 '{{replica}}', ingest_time)"
            )
        };
        let mut statements = vec![
            format!("CREATE DATABASE IF NOT EXISTS {db}{on}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{local}{on} ({columns}) ENGINE = {engine} \
                 PARTITION BY {month} ORDER BY id",
                columns = self.columns(),
                month = self.month_of("event_time"),
            ),
        ];
        if !self.cluster.is_empty() {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{table}{on} AS {db}.{local} \
                 ENGINE = Distributed({cluster}, {db}, {local}, {key})",
                table = self.table,
                cluster = self.cluster,
                key = SHARDING_KEY,
            ));
        }
        statements
    }

    /// Drops the database (tests clean up with it).
    pub fn drop_database(&self) -> String {
        format!(
            "DROP DATABASE IF EXISTS {}{}",
            self.database,
            self.on_cluster()
        )
    }
}

/// The per-shard table behind a Distributed `table` on `cluster`, or `table` itself on a
/// single server (`cluster` empty).
pub fn local_table_of(table: &str, cluster: &str) -> String {
    if cluster.is_empty() {
        table.to_owned()
    } else {
        format!("{table}_local")
    }
}

/// The Distributed table's sharding expression. `cityHash64` of a UUID is refused by 18.16,
/// of its text form by none.
pub const SHARDING_KEY: &str = "cityHash64(toString(id))";

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(flavor: Flavor, cluster: &str) -> Schema {
        let config = ClickHouseConfig {
            cluster: cluster.into(),
            ..ClickHouseConfig::default()
        };
        Schema::new(&config, flavor)
    }

    #[test]
    fn legacy_cluster_ddl_has_replicated_and_distributed_tables() {
        let ddl = schema(Flavor::Legacy, "ess").ddl();
        assert_eq!(ddl.len(), 3);
        assert!(ddl[1].contains("ess.events_local ON CLUSTER ess"));
        assert!(ddl[1].contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ess/events_local', '{replica}', ingest_time)"));
        assert!(ddl[1].contains("event_time UInt64"));
        assert!(!ddl[1].contains("DateTime64"));
        assert!(ddl[2].contains("Distributed(ess, ess, events_local, cityHash64(toString(id)))"));
    }

    #[test]
    fn the_row_and_the_column_list_agree() {
        use ::clickhouse::Row as _;
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(EventRow::COLUMN_NAMES, names.as_slice());
        assert_eq!(COLUMN_NAMES, names.join(", "));
    }

    #[test]
    fn modern_single_ddl_uses_datetime64() {
        let ddl = schema(Flavor::Modern, "").ddl();
        assert_eq!(ddl.len(), 2);
        assert!(
            ddl[1].contains("ess.events (") && ddl[1].contains("ReplacingMergeTree(ingest_time)")
        );
        assert!(ddl[1].contains("event_time DateTime64(3, 'UTC')"));
    }
}
