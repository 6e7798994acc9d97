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
//!
//! `properties` is JSON text in a `String` column, or with `clickhouse.properties = "json"`
//! ClickHouse's `JSON` type (25.3 and later, [`JSON_TYPE_SINCE`]). The row is the same either
//! way: the sink sends the text and the insert setting [`JSON_AS_STRING_SETTING`] makes the
//! server parse it into the type.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clickhouse::{Flavor, ServerVersion};
use crate::config::{ClickHouseConfig, Properties};

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
    /// `properties`: `String`, or `JSON` with `clickhouse.properties = "json"`
    /// ([`Schema::column_sql`]).
    Properties,
}

impl ColumnType {
    /// The SQL type for `flavor` with `properties` as JSON text (see [`Schema::column_sql`]
    /// for the configured one).
    pub fn sql(self, flavor: Flavor) -> &'static str {
        match (self, flavor) {
            (Self::Properties, _) => "String",
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
    "properties": Properties,
    "kafka_partition": Int32,
    "kafka_offset": Int64,
);

/// The table's sort key: the dedup key of the replacing merge, and the primary index.
///
/// Analysts ask for one tenant's events of some types over some days, so the key leads with
/// `source`, then `type`, then the day: such a query reads only the granules of its
/// (source, type, day) ranges — measured in `docs/queries.md`: a one-day, one-source,
/// one-type count over 30 days of data reads a few percent of the rows, against all of them
/// with the earlier `ORDER BY id`. `id` last makes the key unique per event. Every copy of
/// one event (a retry, a replay after a sink restart) shares all four — `event_date` comes
/// from the client's event time, which a retry repeats — so the replacing merge still
/// collapses them, and `source` in the key means two tenants' events with the same id are
/// two rows that never replace each other.
pub const SORT_KEY: &str = "source, type, event_date, id";

/// The layout version `ess migrate` creates; it is in the replication path, so two layouts
/// never share one.
pub const LAYOUT: u32 = 2;

/// The first ClickHouse version (major, minor) whose `JSON` type `clickhouse.properties =
/// "json"` uses. The type came in 24.8 behind `allow_experimental_json_type` (`enable_json_type`
/// from 24.11) and was declared production-ready, and on by default, in 25.3; the RowBinary
/// setting the sink needs ([`JSON_AS_STRING_SETTING`]) came in 24.10 (`system.settings_changes`).
pub const JSON_TYPE_SINCE: (u32, u32) = (25, 3);

/// The insert setting that makes RowBinary carry a `JSON` column's value as JSON text (a
/// `String`), which is what the sink sends for `properties`. Harmless for a `String` column.
pub const JSON_AS_STRING_SETTING: &str = "input_format_binary_read_json_as_string";

/// The SQL type of the `properties` column for `properties`.
pub fn properties_sql(properties: Properties) -> &'static str {
    match properties {
        Properties::String => "String",
        Properties::Json => "JSON",
    }
}

/// What a `properties` column of this type (as `system.columns` shows it) holds; `None` for a
/// type ess does not write (e.g. the older experimental `Object('json')`).
pub fn properties_of_type(sql_type: &str) -> Option<Properties> {
    if sql_type == "String" {
        Some(Properties::String)
    } else if sql_type == "JSON" || sql_type.starts_with("JSON(") {
        Some(Properties::Json)
    } else {
        None
    }
}

/// Whether `version` has the `JSON` type as `clickhouse.properties = "json"` needs it.
pub fn has_json_type(version: &ServerVersion) -> bool {
    (version.major, version.minor) >= JSON_TYPE_SINCE
}

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
    /// Retention in seconds of event time; `None` keeps rows forever.
    pub ttl_secs: Option<u64>,
    /// The `properties` column's type.
    pub properties: Properties,
}

impl Schema {
    /// The schema `config` describes, for a server of `flavor`.
    pub fn new(config: &ClickHouseConfig, flavor: Flavor) -> Self {
        Self {
            flavor,
            database: config.database.clone(),
            table: config.table.clone(),
            cluster: config.cluster.clone(),
            ttl_secs: config.ttl.map(|t| t.as_secs()),
            properties: config.properties,
        }
    }

    /// The per-shard table on a cluster, the table itself on a single server.
    pub fn local_table(&self) -> String {
        local_table_of(&self.table, &self.cluster)
    }

    /// ` ON CLUSTER name`, or nothing on a single server.
    pub fn on_cluster(&self) -> String {
        if self.cluster.is_empty() {
            String::new()
        } else {
            format!(" ON CLUSTER {}", self.cluster)
        }
    }

    /// The SQL type of a column of type `ty` in this schema.
    pub fn column_sql(&self, ty: ColumnType) -> &'static str {
        match ty {
            ColumnType::Properties => properties_sql(self.properties),
            other => other.sql(self.flavor),
        }
    }

    /// The column list, typed for the flavor and `clickhouse.properties`.
    pub fn columns(&self) -> String {
        COLUMNS
            .iter()
            .map(|(name, ty)| format!("{name} {}", self.column_sql(*ty)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The end of the replicated table's ZooKeeper path: the layout, and `_json` for a JSON
    /// `properties` column, so that a table moved from one type to the other (a new table
    /// beside the old one, `ess migrate`) never shares the old one's path.
    pub fn replication_suffix(&self) -> String {
        match self.properties {
            Properties::String => format!("_v{LAYOUT}"),
            Properties::Json => format!("_v{LAYOUT}_json"),
        }
    }

    /// SQL turning a time column into ms since the epoch (`Int64`/`UInt64`).
    pub fn millis(&self, column: &str) -> String {
        match self.flavor {
            Flavor::Modern => format!("toUnixTimestamp64Milli({column})"),
            Flavor::Legacy => column.to_owned(),
        }
    }

    /// SQL for the UTC day of a time column.
    pub fn day_of(&self, column: &str) -> String {
        match self.flavor {
            Flavor::Modern => format!("toDate({column}, 'UTC')"),
            Flavor::Legacy => format!("toDate(toDateTime(intDiv({column}, 1000), 'UTC'))"),
        }
    }

    /// `CREATE TABLE {name}` of the events table in the current layout (without
    /// `IF NOT EXISTS`), replicated under the path of `{local}` on a cluster.
    pub fn create_local(&self, name: &str) -> String {
        let db = &self.database;
        let on = self.on_cluster();
        // The version column keeps the latest ingested copy of an event.
        let engine = if self.cluster.is_empty() {
            "ReplacingMergeTree(ingest_time)".to_owned()
        } else {
            format!(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/{local}{suffix}', \
                 '{{replica}}', ingest_time)",
                local = self.local_table(),
                suffix = self.replication_suffix()
            )
        };
        // `event_date` is computed by the server from the event time (inserts leave it out);
        // queries filter on it to use the partition and the sort key on every server version.
        // DEFAULT, not MATERIALIZED: an insert through the Distributed table sends the
        // computed column on to the shards, which 18.16 refuses for a MATERIALIZED one.
        let mut extra = format!(", event_date Date DEFAULT {}", self.day_of("event_time"));
        if self.flavor == Flavor::Modern {
            // Reconciliation asks for offsets at or past the committed ones: recent rows,
            // which a min/max index per granule finds without reading the old ones.
            extra.push_str(", INDEX kafka_offset_minmax kafka_offset TYPE minmax GRANULARITY 1");
        }
        // Partitions are months of event time: a month is few enough partitions for one
        // insert of backfilled events (the server refuses an insert touching more than 100),
        // and retention and queries by event time prune whole partitions.
        let mut sql = format!(
            "CREATE TABLE {db}.{name}{on} ({columns}{extra}) ENGINE = {engine} \
             PARTITION BY toYYYYMM(event_date) ORDER BY ({SORT_KEY})",
            columns = self.columns(),
        );
        if let Some(ttl) = self.ttl_clause() {
            sql.push_str(&format!(" TTL {ttl}"));
        }
        sql
    }

    /// The TTL expression for `clickhouse.ttl`, if set.
    pub fn ttl_clause(&self) -> Option<String> {
        let secs = self.ttl_secs?;
        let time = match self.flavor {
            Flavor::Modern => "toDateTime(event_time)".to_owned(),
            Flavor::Legacy => "toDateTime(intDiv(event_time, 1000))".to_owned(),
        };
        Some(format!("{time} + toIntervalSecond({secs})"))
    }

    /// `CREATE TABLE … ENGINE = Distributed` over the local table (cluster only).
    pub fn create_distributed(&self) -> String {
        let db = &self.database;
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}{on} AS {db}.{local} \
             ENGINE = Distributed({cluster}, {db}, {local}, {key})",
            table = self.table,
            on = self.on_cluster(),
            local = self.local_table(),
            cluster = self.cluster,
            key = SHARDING_KEY,
        )
    }

    /// Statements creating the database and tables from nothing; each is idempotent.
    pub fn ddl(&self) -> Vec<String> {
        let db = &self.database;
        let on = self.on_cluster();
        let create = self.create_local(&self.local_table());
        let mut statements = vec![
            format!("CREATE DATABASE IF NOT EXISTS {db}{on}"),
            create.replacen("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1),
        ];
        if !self.cluster.is_empty() {
            statements.push(self.create_distributed());
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
        assert!(ddl[1].contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ess/events_local_v2', '{replica}', ingest_time)"));
        assert!(ddl[1].contains("ORDER BY (source, type, event_date, id)"));
        assert!(!ddl[1].contains("TTL"));
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
        assert!(ddl[1].contains("INDEX kafka_offset_minmax"));
    }

    #[test]
    fn ttl_is_on_event_time() {
        let mut s = schema(Flavor::Modern, "");
        s.ttl_secs = Some(86_400);
        assert!(s.ddl()[1].ends_with("TTL toDateTime(event_time) + toIntervalSecond(86400)"));
    }

    #[test]
    fn json_properties_are_a_json_column_under_their_own_replication_path() {
        let mut s = schema(Flavor::Modern, "ess");
        let string = s.ddl();
        assert!(string[1].contains("properties String,"), "{}", string[1]);
        s.properties = Properties::Json;
        let ddl = s.ddl();
        assert!(ddl[1].contains("properties JSON,"), "{}", ddl[1]);
        assert!(ddl[1].contains("/ess/events_local_v2_json', '{replica}'"));
        assert!(!ddl[1].contains("properties String"));
        // Everything else is the same table.
        assert_eq!(
            ddl[1]
                .replace("properties JSON", "properties String")
                .replace("_v2_json'", "_v2'"),
            string[1]
        );
        assert_eq!(
            ddl[2], string[2],
            "the Distributed table copies the columns"
        );
    }

    #[test]
    fn the_json_type_is_known_from_25_3_and_read_back_from_system_columns() {
        let v = |t: &str| ServerVersion::parse(t).unwrap();
        assert!(!has_json_type(&v("18.16.1")));
        assert!(!has_json_type(&v("24.12.1")));
        assert!(!has_json_type(&v("25.2.9")));
        assert!(has_json_type(&v("25.3.1")));
        assert!(has_json_type(&v("26.9.2.1")));
        assert_eq!(properties_of_type("String"), Some(Properties::String));
        assert_eq!(properties_of_type("JSON"), Some(Properties::Json));
        assert_eq!(
            properties_of_type("JSON(max_dynamic_paths=64)"),
            Some(Properties::Json)
        );
        assert_eq!(properties_of_type("Object('json')"), None);
        assert_eq!(properties_of_type("Nullable(String)"), None);
    }
}
