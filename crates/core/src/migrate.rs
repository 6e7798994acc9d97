//! `ess migrate`: the topics, the database and the tables, from nothing or from an earlier
//! layout, idempotently.
//!
//! The layout is read from the table itself (`system.tables.sorting_key` and its columns):
//! - no table: create the current layout;
//! - the current layout ([`crate::schema::SORT_KEY`]): add any column it lacks, apply
//!   `clickhouse.ttl`, or do nothing;
//! - the current layout with a `properties` column of the other type than
//!   `clickhouse.properties` says (`String` vs `JSON`): move it as below, into a table with the
//!   configured type (the old one is kept as `{local}_v2_string` or `{local}_v2_json`);
//! - the first layout (`ORDER BY id`): move it — create the current layout beside it as
//!   `{local}_next`; wait until the replicas of each shard hold the same rows of the old table
//!   ([`Step::Sync`]: a replica that has not fetched every part yet would copy too few); copy
//!   every row on one replica of each shard (`INSERT … SELECT`); wait the same way for the
//!   copy; check that every replica holds as many rows per source in both ([`Step::Check`]);
//!   swap the names in one `RENAME` (the old table stays as `{local}_v1`, to be dropped by
//!   hand), recreate the Distributed table over the new one, and wait until the Distributed
//!   table on every node counts every row ([`Step::Visible`]). The sinks must be stopped while
//!   it runs: rows they wrote into the old table after the copy would stay behind in
//!   `{local}_v1` (and the checks refuse the swap when the counts move);
//! - anything else: refuse, naming the statement that moves the table aside.
//!
//! A server that cannot hold what the configuration asks for is refused before anything is
//! read ([`check_server`]): `clickhouse.ttl` before 19.6, `clickhouse.properties = "json"`
//! before 25.3.
//!
//! [`plan`] says what would be done without changing anything (`ess migrate --print`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use ::clickhouse::Client;

use crate::clickhouse::{ClickHouseError, Flavor, ServerVersion, connect};
use crate::config::{ClickHouseConfig, Config, Properties};
use crate::kafka::ensure_topic;
use crate::schema::{
    COLUMNS, JSON_TYPE_SINCE, Schema, has_json_type, properties_of_type, properties_sql,
};

/// Why migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// ClickHouse could not be reached or refused a statement.
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    /// A statement failed.
    #[error("ClickHouse refused `{statement}`: {source}")]
    Ddl {
        /// The statement.
        statement: String,
        /// The error.
        source: ::clickhouse::error::Error,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
    /// What is there cannot be migrated automatically; the message says what to run.
    #[error("{0}")]
    Refused(String),
    /// The copy does not hold every row; nothing was swapped.
    #[error(
        "the copy {table} on {node} does not hold every row (per source, old vs new: {counts}); \
         nothing was swapped, the old table is untouched. Is a sink still writing? Stop every \
         sink and run `ess migrate` again"
    )]
    Lost {
        /// The node.
        node: String,
        /// The new table.
        table: String,
        /// The differing counts.
        counts: String,
    },
    /// The replicas of a shard did not come to hold the same rows in time; nothing was swapped.
    #[error(
        "the replicas of one shard still hold different rows of {table} after {waited:?} (per \
         source, by replica: {counts}); nothing was swapped. Is a replica down or behind \
         (system.replicas, system.replication_queue) or a sink still writing? Run \
         `ess migrate` again once they agree"
    )]
    Unsettled {
        /// The table.
        table: String,
        /// How long it waited.
        waited: Duration,
        /// Rows per source on each replica of the shard.
        counts: String,
    },
    /// After the swap, the Distributed table on a node did not count every row in time.
    #[error(
        "the tables were swapped, but {table} on {node} counts {got} rows per source where the \
         shards hold {want} (after {waited:?}); check that node's Distributed table and \
         `remote_servers`. The old table is kept as {kept}"
    )]
    Invisible {
        /// The node whose Distributed table falls short.
        node: String,
        /// The Distributed table.
        table: String,
        /// What it counted.
        got: String,
        /// What the shards hold.
        want: String,
        /// How long it waited.
        waited: Duration,
        /// The kept old table.
        kept: String,
    },
}

impl From<Box<MigrateError>> for MigrateError {
    fn from(error: Box<MigrateError>) -> Self {
        *error
    }
}

/// How long `ess migrate` waits for replicas to agree, and for the Distributed tables to count
/// every moved row, before it gives up naming what differs.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The replicas of each shard: one list of node URLs per shard (one node on a single server).
pub type Shards = Vec<Vec<String>>;

/// The layout `ess migrate` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No events table.
    Nothing,
    /// The first layout, `ORDER BY id`, with these columns.
    First {
        /// Its columns.
        columns: Vec<String>,
    },
    /// The current layout, with these columns.
    Current {
        /// Its columns.
        columns: Vec<String>,
        /// Its `CREATE TABLE` statement as the server shows it.
        create: String,
        /// The type of its `properties` column as the server shows it (`String`, `JSON`);
        /// `None` when it has none.
        properties: Option<String>,
    },
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nothing => f.write_str("no events table"),
            Self::First { .. } => f.write_str("layout 1 (ORDER BY id)"),
            Self::Current {
                properties: Some(ty),
                ..
            } => write!(f, "layout {} (properties {ty})", crate::schema::LAYOUT),
            Self::Current { .. } => write!(f, "layout {}", crate::schema::LAYOUT),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A statement, on one node (`Some(url)`) or on the node `clickhouse.url` names.
    Sql {
        /// Where it runs; `None` for `clickhouse.url` (statements `ON CLUSTER` or single server).
        node: Option<String>,
        /// The statement.
        sql: String,
    },
    /// `SYSTEM SYNC REPLICA table` on every replica, then wait until the replicas of each
    /// shard hold the same rows per source: every replica has every part of the shard.
    /// (18.16 can answer `SYNC REPLICA` before the replica has read the newest entries of the
    /// replication log, so the counts, not the statement, decide.)
    Sync {
        /// The replicated table.
        table: String,
        /// The replicas of each shard.
        shards: Shards,
    },
    /// On every replica of each shard, rows per source are equal in `from` and `to`.
    Check {
        /// The replicas of each shard.
        shards: Shards,
        /// The old table.
        from: String,
        /// The new table.
        to: String,
    },
    /// Wait until `table` (Distributed) on every node counts, per source, the rows that
    /// `local` holds summed over the shards (one replica each).
    Visible {
        /// The Distributed table.
        table: String,
        /// The local table behind it.
        local: String,
        /// The replicas of each shard; every one of them is asked through `table`.
        shards: Shards,
        /// Where the moved table was kept (named when the wait fails).
        kept: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = |shards: &Shards| shards.concat().join(", ");
        match self {
            Self::Sql { node: None, sql } => write!(f, "{sql};"),
            Self::Sql {
                node: Some(node),
                sql,
            } => write!(f, "-- on {node}\n{sql};"),
            Self::Sync { table, shards } => write!(
                f,
                "-- on {}: SYSTEM SYNC REPLICA {table}; then wait until the replicas of each \
                 shard hold the same rows per source",
                all(shards)
            ),
            Self::Check { shards, from, to } => write!(
                f,
                "-- on {}: check that `SELECT source, count() … GROUP BY source` is the same for \
                 {from} and {to}",
                all(shards)
            ),
            Self::Visible {
                table,
                local,
                shards,
                ..
            } => write!(
                f,
                "-- on {}: wait until `SELECT source, count() FROM {table} GROUP BY source` counts \
                 every row of {local} (summed over the shards)",
                all(shards)
            ),
        }
    }
}

/// What `ess migrate` would do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server it asked.
    pub version: ServerVersion,
    /// The schema it moves to.
    pub schema: Schema,
    /// What it found.
    pub found: Found,
    /// The steps, in order; empty when nothing is to be done.
    pub steps: Vec<Step>,
    /// What the operator should know afterwards (e.g. the kept old table).
    pub notes: Vec<String>,
}

/// What migration did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The ClickHouse version it spoke to.
    pub version: ServerVersion,
    /// The schema it applied.
    pub schema: Schema,
    /// Topics it created (empty when all existed).
    pub created_topics: Vec<String>,
    /// The layout found before.
    pub found: Found,
    /// The steps it ran (empty when the tables were already current).
    pub steps: Vec<Step>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

/// Creates the topics unless they exist, then brings the tables to the current layout.
pub async fn run(config: &Config) -> Result<Migrated, MigrateError> {
    // The plan first: a server that cannot hold the configured table is refused before
    // anything is created.
    let plan = plan(config).await?;
    let mut created_topics = Vec::new();
    for (topic, partitions) in [
        (&config.kafka.topic, config.kafka.partitions),
        (&config.kafka.dlq_topic, 1),
    ] {
        let created = ensure_topic(&config.kafka, topic, partitions)
            .await
            .map_err(|source| MigrateError::Topic {
                topic: topic.clone(),
                source,
            })?;
        if created {
            created_topics.push(topic.clone());
        }
    }
    apply(config, &plan).await?;
    Ok(Migrated {
        version: plan.version,
        schema: plan.schema,
        created_topics,
        found: plan.found,
        steps: plan.steps,
        notes: plan.notes,
    })
}

/// Reads what is there and says what [`run`] would do with the tables; changes nothing.
pub async fn plan(config: &Config) -> Result<Plan, MigrateError> {
    let ch = &config.clickhouse;
    let (client, version) = connect(ch, &ch.url).await?;
    let schema = Schema::new(ch, version.flavor());
    check_server(&schema, &version)?;
    let found = find(&client, &schema).await?;
    let mut notes = Vec::new();
    let steps = match move_from(&schema, &found)? {
        None => match &found {
            Found::Current {
                columns, create, ..
            } => update(&schema, columns, create),
            _ => schema
                .ddl()
                .into_iter()
                .map(|sql| Step::Sql { node: None, sql })
                .collect(),
        },
        Some((columns, suffix)) => {
            let kept_name = format!("{}{suffix}", schema.local_table());
            let kept = format!("{}.{kept_name}", schema.database);
            let drop_kept = format!(
                "DROP TABLE {kept}{}{}",
                schema.on_cluster(),
                drop_sync(&schema)
            );
            if exists(&client, &schema.database, &kept_name).await? {
                return Err(MigrateError::Refused(format!(
                    "{} ({found}) is to be moved into a table with `properties` {}, and {kept} \
                     exists (a table kept by an earlier migration); drop or rename it first: \
                     {drop_kept}",
                    schema.local_table(),
                    properties_sql(schema.properties),
                )));
            }
            notes.push(format!(
                "the previous table is kept as {kept}; once satisfied, drop it: {drop_kept}"
            ));
            let shards = shard_replicas(config).await?;
            rebuild(&schema, columns, &shards, &kept)
        }
    };
    Ok(Plan {
        version,
        schema,
        found,
        steps,
        notes,
    })
}

/// Whether `found` must be moved into a new table (layout 1, or a `properties` column of the
/// other type): its columns and the suffix the kept old table gets. Refuses a `properties`
/// type ess does not write.
fn move_from<'a>(
    schema: &Schema,
    found: &'a Found,
) -> Result<Option<(&'a [String], &'static str)>, Box<MigrateError>> {
    match found {
        Found::Nothing => Ok(None),
        Found::First { columns } => Ok(Some((columns, "_v1"))),
        Found::Current {
            columns,
            properties,
            ..
        } => {
            // A table without the column gets it added, typed as configured.
            let Some(ty) = properties else {
                return Ok(None);
            };
            match properties_of_type(ty) {
                Some(p) if p == schema.properties => Ok(None),
                Some(Properties::String) => Ok(Some((columns, "_v2_string"))),
                Some(Properties::Json) => Ok(Some((columns, "_v2_json"))),
                None => Err(Box::new(MigrateError::Refused(format!(
                    "{db}.{local} has a `properties` column of type {ty}, which ess does not \
                     write; move the table aside and run `ess migrate` again: RENAME TABLE \
                     {db}.{local} TO {db}.{local}_old{on}",
                    db = schema.database,
                    local = schema.local_table(),
                    on = schema.on_cluster()
                )))),
            }
        }
    }
}

/// ` SYNC` on current servers: they keep a dropped replicated table's ZooKeeper path for
/// minutes unless the drop says so, and a table made right after may need that path.
fn drop_sync(schema: &Schema) -> &'static str {
    if schema.flavor == Flavor::Modern {
        " SYNC"
    } else {
        ""
    }
}

/// Refuses a server that cannot hold what the configuration asks for: a table TTL before
/// 19.6, the `JSON` type before [`JSON_TYPE_SINCE`]. Never falls back to something else.
pub fn check_server(schema: &Schema, version: &ServerVersion) -> Result<(), Box<MigrateError>> {
    if schema.ttl_secs.is_some() && schema.flavor == Flavor::Legacy {
        return Err(Box::new(MigrateError::Refused(format!(
            "`clickhouse.ttl` needs ClickHouse 19.6 or later (table TTL); this server is {}. \
             Unset it, and drop old months by hand instead: \
             ALTER TABLE {}.{}{} DROP PARTITION 202601",
            version.text,
            schema.database,
            schema.local_table(),
            schema.on_cluster()
        ))));
    }
    if schema.properties == Properties::Json && !has_json_type(version) {
        let (major, minor) = JSON_TYPE_SINCE;
        return Err(Box::new(MigrateError::Refused(format!(
            "`clickhouse.properties = \"json\"` needs ClickHouse {major}.{minor} or later (its \
             JSON column type; earlier versions have it only as an experimental feature, or not \
             at all); this server is {}. Set `clickhouse.properties = \"string\"` to store \
             properties as JSON text, which every version reads with its JSON functions",
            version.text
        ))));
    }
    Ok(())
}

/// Refuses a table whose `properties` column is not of the type `clickhouse.properties`
/// names (the sink's inserts send the column one way or the other). Passes when the table
/// does not exist yet.
pub async fn check_properties_column(
    client: &Client,
    config: &ClickHouseConfig,
) -> Result<(), MigrateError> {
    let sql = "SELECT type FROM system.columns WHERE database = ? AND table = ? \
               AND name = 'properties'";
    let local = config.local_table();
    let found: Option<String> = client
        .query(sql)
        .bind(&config.database)
        .bind(&local)
        .fetch_optional()
        .await
        .map_err(ddl_error(sql))?;
    let Some(found) = found else {
        return Ok(());
    };
    if properties_of_type(&found) == Some(config.properties) {
        return Ok(());
    }
    Err(MigrateError::Refused(format!(
        "{}.{local} stores `properties` as {found}, but `clickhouse.properties` says {:?} ({}); \
         run `ess migrate` with this configuration to move the table (stop every sink first), \
         or set `clickhouse.properties` to match the table",
        config.database,
        match config.properties {
            Properties::String => "string",
            Properties::Json => "json",
        },
        properties_sql(config.properties),
    )))
}

/// Runs the plan's steps in order.
pub async fn apply(config: &Config, plan: &Plan) -> Result<(), MigrateError> {
    let ch = &config.clickhouse;
    let mut urls: Vec<String> = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Sql { node, .. } => urls.push(node.clone().unwrap_or_else(|| ch.url.clone())),
            Step::Sync { shards, .. }
            | Step::Check { shards, .. }
            | Step::Visible { shards, .. } => urls.extend(shards.concat()),
        }
    }
    let mut nodes = Nodes::default();
    for url in urls {
        if let std::collections::btree_map::Entry::Vacant(entry) = nodes.0.entry(url) {
            let (client, _) = connect(ch, entry.key()).await?;
            entry.insert(client);
        }
    }
    for step in &plan.steps {
        match step {
            Step::Sql { node, sql } => {
                let url = node.as_deref().unwrap_or(&ch.url);
                let client = nodes.get(url)?;
                client.query(sql).execute().await.map_err(ddl_error(sql))?;
            }
            Step::Sync { table, shards } => sync(&nodes, table, shards).await?,
            Step::Check { shards, from, to } => {
                for url in shards.concat() {
                    let client = nodes.get(&url)?;
                    let (old, new) = (
                        per_source(client, from).await?,
                        per_source(client, to).await?,
                    );
                    if old != new {
                        return Err(MigrateError::Lost {
                            node: url,
                            table: to.clone(),
                            counts: format!("{old:?} vs {new:?}"),
                        });
                    }
                }
            }
            Step::Visible {
                table,
                local,
                shards,
                kept,
            } => visible(&nodes, (table, local), shards, kept).await?,
        }
    }
    Ok(())
}

/// A client per node URL.
#[derive(Default)]
struct Nodes(BTreeMap<String, Client>);

impl Nodes {
    /// The client of `url`; every node a step names was connected before the first step.
    fn get(&self, url: &str) -> Result<&Client, Box<MigrateError>> {
        self.0.get(url).ok_or_else(|| {
            Box::new(MigrateError::Refused(format!(
                "{url} is not among the nodes ess migrate connected to"
            )))
        })
    }
}

/// `SYSTEM SYNC REPLICA` on every replica, then polls until the replicas of each shard agree.
async fn sync(nodes: &Nodes, table: &str, shards: &Shards) -> Result<(), MigrateError> {
    for url in shards.concat() {
        let sql = format!("SYSTEM SYNC REPLICA {table}");
        nodes
            .get(&url)?
            .query(&sql)
            .execute()
            .await
            .map_err(ddl_error(&sql))?;
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for replicas in shards {
        let differing = until_agreed(deadline, || async move {
            let mut counts = Vec::new();
            for url in replicas {
                counts.push((url.as_str(), per_source(nodes.get(url)?, table).await?));
            }
            let agree = counts.windows(2).all(|w| w[0].1 == w[1].1);
            Ok((!agree).then(|| format!("{counts:?}")))
        })
        .await?;
        if let Some(counts) = differing {
            return Err(MigrateError::Unsettled {
                table: table.to_owned(),
                waited: SETTLE_TIMEOUT,
                counts,
            });
        }
    }
    Ok(())
}

/// Polls until `table` on every node counts what the shards' `local` tables hold.
async fn visible(
    nodes: &Nodes,
    (table, local): (&str, &str),
    shards: &Shards,
    kept: &str,
) -> Result<(), MigrateError> {
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for replicas in shards {
        let Some(url) = replicas.first() else {
            continue;
        };
        for (source, n) in per_source(nodes.get(url)?, local).await? {
            *want.entry(source).or_default() += n;
        }
    }
    let want: &[(String, u64)] = &want.into_iter().collect::<Vec<_>>();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for url in shards.concat() {
        let node = url.as_str();
        let short = until_agreed(deadline, || async move {
            let got = per_source(nodes.get(node)?, table).await?;
            Ok((got != want).then(|| format!("{got:?}")))
        })
        .await?;
        if let Some(got) = short {
            return Err(MigrateError::Invisible {
                node: url,
                table: table.to_owned(),
                got,
                want: format!("{want:?}"),
                waited: SETTLE_TIMEOUT,
                kept: kept.to_owned(),
            });
        }
    }
    Ok(())
}

/// Calls `differing` every [`POLL`] until it finds nothing differing (`None`) or `deadline`
/// passes; what it found differing the last time, if the deadline passed.
async fn until_agreed<F, Fut>(
    deadline: Instant,
    mut differing: F,
) -> Result<Option<String>, MigrateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>, MigrateError>>,
{
    loop {
        let Some(found) = differing().await? else {
            return Ok(None);
        };
        if Instant::now() > deadline {
            return Ok(Some(found));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How often [`until_agreed`] asks again.
const POLL: Duration = Duration::from_millis(200);

async fn per_source(client: &Client, table: &str) -> Result<Vec<(String, u64)>, MigrateError> {
    let sql = format!("SELECT source, count() FROM {table} GROUP BY source ORDER BY source");
    client
        .query(&sql)
        .fetch_all::<(String, u64)>()
        .await
        .map_err(ddl_error(&sql))
}

async fn exists(client: &Client, database: &str, table: &str) -> Result<bool, MigrateError> {
    let sql = "SELECT count() FROM system.tables WHERE database = ? AND name = ?";
    let n: u64 = client
        .query(sql)
        .bind(database)
        .bind(table)
        .fetch_one()
        .await
        .map_err(ddl_error(sql))?;
    Ok(n > 0)
}

/// Maps a failed statement to [`MigrateError::Ddl`] naming it.
fn ddl_error(sql: &str) -> impl FnOnce(::clickhouse::error::Error) -> MigrateError + '_ {
    move |source| MigrateError::Ddl {
        statement: sql.into(),
        source,
    }
}

/// Reads the events table's layout.
async fn find(client: &Client, schema: &Schema) -> Result<Found, MigrateError> {
    let local = schema.local_table();
    let sql = "SELECT sorting_key, create_table_query FROM system.tables \
               WHERE database = ? AND name = ?";
    let table: Option<(String, String)> = client
        .query(sql)
        .bind(&schema.database)
        .bind(&local)
        .fetch_optional()
        .await
        .map_err(ddl_error(sql))?;
    let Some((sorting_key, create)) = table else {
        return Ok(Found::Nothing);
    };
    let sql = "SELECT name, type FROM system.columns WHERE database = ? AND table = ?";
    let typed: Vec<(String, String)> = client
        .query(sql)
        .bind(&schema.database)
        .bind(&local)
        .fetch_all()
        .await
        .map_err(ddl_error(sql))?;
    let properties = typed
        .iter()
        .find(|(name, _)| name == "properties")
        .map(|(_, ty)| ty.clone());
    let columns: Vec<String> = typed.into_iter().map(|(name, _)| name).collect();
    match sorting_key.as_str() {
        "id" => Ok(Found::First { columns }),
        key if key == crate::schema::SORT_KEY => Ok(Found::Current {
            columns,
            create,
            properties,
        }),
        other => Err(MigrateError::Refused(format!(
            "{db}.{local} is sorted by ({other}), a layout ess does not know; move it aside and \
             run `ess migrate` again: RENAME TABLE {db}.{local} TO {db}.{local}_old{on}",
            db = schema.database,
            on = schema.on_cluster()
        ))),
    }
}

/// Steps bringing a current-layout table up to date: missing columns, TTL.
fn update(schema: &Schema, columns: &[String], create: &str) -> Vec<Step> {
    let table = format!("{}.{}", schema.database, schema.local_table());
    let on = schema.on_cluster();
    let mut steps: Vec<Step> = COLUMNS
        .iter()
        .filter(|(name, _)| !columns.iter().any(|c| c == name))
        .map(|(name, ty)| Step::Sql {
            node: None,
            sql: format!(
                "ALTER TABLE {table}{on} ADD COLUMN {name} {}",
                schema.column_sql(*ty)
            ),
        })
        .collect();
    if !steps.is_empty() && !schema.cluster.is_empty() {
        steps.extend(recreate_distributed(schema));
    }
    if let Some(ttl) = schema.ttl_clause()
        && !create.contains(&format!("TTL {ttl}"))
    {
        steps.push(Step::Sql {
            node: None,
            sql: format!("ALTER TABLE {table}{on} MODIFY TTL {ttl}"),
        });
    }
    steps
}

fn recreate_distributed(schema: &Schema) -> Vec<Step> {
    vec![
        Step::Sql {
            node: None,
            sql: format!(
                "DROP TABLE IF EXISTS {}.{}{}",
                schema.database,
                schema.table,
                schema.on_cluster()
            ),
        },
        Step::Sql {
            node: None,
            sql: schema.create_distributed(),
        },
    ]
}

/// Steps moving a table of layout 1, or of the current layout with the other `properties`
/// type, to the current layout as `schema` describes it (see the module docs); the old table
/// is renamed to `kept` (`db.name`). The copy runs on the first replica of each of `shards`
/// (`INSERT … SELECT` converts `properties` text to the `JSON` type or back; a value the type
/// refuses fails the copy, and nothing is swapped); on a cluster every replica must hold every
/// row of the old table before it and of the new one after it, and every node's Distributed
/// table must count them all before `ess migrate` returns.
pub fn rebuild(schema: &Schema, old_columns: &[String], shards: &Shards, kept: &str) -> Vec<Step> {
    let db = &schema.database;
    let on = schema.on_cluster();
    let local = schema.local_table();
    let replicated = !schema.cluster.is_empty();
    let (old, next, kept) = (
        format!("{db}.{local}"),
        format!("{db}.{local}_next"),
        kept.to_owned(),
    );
    let sync = drop_sync(schema);
    // Columns the old table lacks take their defaults (empty strings).
    let common: Vec<&str> = COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| old_columns.iter().any(|c| c == name))
        .collect();
    let common = common.join(", ");
    let mut steps = vec![
        // A copy left by an interrupted run is dropped and made again.
        Step::Sql {
            node: None,
            sql: format!("DROP TABLE IF EXISTS {next}{on}{sync}"),
        },
        Step::Sql {
            node: None,
            sql: schema.create_local(&format!("{local}_next")),
        },
    ];
    if replicated {
        // The replica that copies must have every part of its shard, not only those it
        // fetched so far.
        steps.push(Step::Sync {
            table: old.clone(),
            shards: shards.clone(),
        });
    }
    for replicas in shards {
        let Some(node) = replicas.first() else {
            continue;
        };
        steps.push(Step::Sql {
            node: Some(node.clone()),
            sql: format!("INSERT INTO {next} ({common}) SELECT {common} FROM {old}"),
        });
    }
    if replicated {
        steps.push(Step::Sync {
            table: next.clone(),
            shards: shards.clone(),
        });
    }
    steps.push(Step::Check {
        shards: shards.clone(),
        from: old.clone(),
        to: next.clone(),
    });
    steps.push(Step::Sql {
        node: None,
        sql: format!("RENAME TABLE {old} TO {kept}, {next} TO {old}{on}"),
    });
    if replicated {
        steps.extend(recreate_distributed(schema));
        steps.push(Step::Visible {
            table: format!("{db}.{}", schema.table),
            local: old,
            shards: shards.clone(),
            kept,
        });
    }
    steps
}

/// The nodes of each shard (by their `shard` macro), or `clickhouse.url` on a single server.
async fn shard_replicas(config: &Config) -> Result<Shards, MigrateError> {
    let ch = &config.clickhouse;
    if ch.cluster.is_empty() {
        return Ok(vec![vec![ch.url.clone()]]);
    }
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for url in ch.all_nodes() {
        let (client, _) = connect(ch, &url).await?;
        let sql = "SELECT substitution FROM system.macros WHERE macro = 'shard'";
        let shard: Option<String> = client
            .query(sql)
            .fetch_optional()
            .await
            .map_err(ddl_error(sql))?;
        let Some(shard) = shard else {
            return Err(MigrateError::Refused(format!(
                "{url} has no `shard` macro, so its shard is unknown; list only the cluster's \
                 nodes in `clickhouse.nodes`"
            )));
        };
        shards.entry(shard).or_default().push(url);
    }
    Ok(shards.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClickHouseConfig;

    fn schema(cluster: &str) -> Schema {
        let config = ClickHouseConfig {
            cluster: cluster.into(),
            ..ClickHouseConfig::default()
        };
        Schema::new(&config, Flavor::Legacy)
    }

    #[test]
    fn a_first_layout_table_is_copied_checked_and_swapped() {
        let old: Vec<String> = [
            "id",
            "type",
            "source",
            "event_time",
            "ingest_time",
            "store_time",
            "properties",
            "kafka_partition",
            "kafka_offset",
        ]
        .map(String::from)
        .to_vec();
        let shards: Shards = vec![
            vec!["http://a".to_owned(), "http://a2".to_owned()],
            vec!["http://b".to_owned(), "http://b2".to_owned()],
        ];
        let steps = rebuild(&schema("ess"), &old, &shards, "ess.events_local_v1");
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(text[1].starts_with("CREATE TABLE ess.events_local_next ON CLUSTER ess"));
        // Every replica holds every row of the old table before the copy reads one of them.
        assert!(matches!(&steps[2], Step::Sync { table, .. } if table == "ess.events_local"));
        assert!(text[3].starts_with("-- on http://a\nINSERT INTO ess.events_local_next"));
        assert!(text[3].contains(
            "INSERT INTO ess.events_local_next (id, type, source, event_time, ingest_time, \
             store_time, properties, kafka_partition, kafka_offset) SELECT"
        ));
        assert!(text[4].starts_with("-- on http://b\n"));
        assert!(matches!(&steps[5], Step::Sync { table, .. } if table == "ess.events_local_next"));
        assert!(matches!(&steps[6], Step::Check { shards: s, .. } if s == &shards));
        assert_eq!(
            text[7],
            "RENAME TABLE ess.events_local TO ess.events_local_v1, ess.events_local_next TO \
             ess.events_local ON CLUSTER ess;"
        );
        assert!(text[9].contains("ENGINE = Distributed"));
        assert!(
            matches!(&steps[10], Step::Visible { table, .. } if table == "ess.events"),
            "{}",
            text[10]
        );
        assert_eq!(steps.len(), 11);
        // A single server: copy, check, swap.
        let single = rebuild(
            &schema(""),
            &old,
            &vec![vec!["http://a".to_owned()]],
            "ess.events_v1",
        );
        assert_eq!(single.len(), 5, "{single:?}");
        assert!(matches!(&single[3], Step::Check { .. }));
    }

    #[test]
    fn a_current_table_needs_nothing_or_its_missing_columns() {
        let s = schema("");
        let all: Vec<String> = COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
        assert!(update(&s, &all, "").is_empty());
        let fewer: Vec<String> = all.iter().filter(|c| *c != "ip").cloned().collect();
        let steps = update(&s, &fewer, "");
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].to_string(),
            "ALTER TABLE ess.events ADD COLUMN ip String;"
        );
    }

    #[test]
    fn json_properties_are_refused_before_25_3_naming_the_key_and_the_version() {
        let mut s = schema("ess");
        s.properties = Properties::Json;
        for text in ["18.16.1", "24.8.4.13", "25.2.1"] {
            let version = ServerVersion::parse(text).unwrap();
            s.flavor = version.flavor();
            let err = check_server(&s, &version).unwrap_err().to_string();
            assert!(err.contains("clickhouse.properties"), "{err}");
            assert!(err.contains(&format!("this server is {text}")), "{err}");
            assert!(err.contains("25.3 or later"), "{err}");
        }
        let current = ServerVersion::parse("25.3.2").unwrap();
        s.flavor = current.flavor();
        assert!(check_server(&s, &current).is_ok());
        s.properties = Properties::String;
        let old = ServerVersion::parse("18.16.1").unwrap();
        s.flavor = old.flavor();
        assert!(check_server(&s, &old).is_ok());
    }

    #[test]
    fn a_current_table_of_the_other_properties_type_is_moved_and_kept() {
        let all: Vec<String> = COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
        let current = |ty: &str| Found::Current {
            columns: all.clone(),
            create: String::new(),
            properties: Some(ty.to_owned()),
        };
        let mut s = schema("ess");
        s.flavor = Flavor::Modern;
        let (string, json) = (current("String"), current("JSON"));
        assert!(move_from(&s, &string).unwrap().is_none());
        assert_eq!(move_from(&s, &json).unwrap().unwrap().1, "_v2_json");
        s.properties = Properties::Json;
        assert!(move_from(&s, &json).unwrap().is_none());
        let (columns, suffix) = move_from(&s, &string).unwrap().unwrap();
        assert_eq!(suffix, "_v2_string");
        let steps = rebuild(
            &s,
            columns,
            &vec![vec!["http://a".to_owned()]],
            "ess.events_local_v2_string",
        );
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[0],
            "DROP TABLE IF EXISTS ess.events_local_next ON CLUSTER ess SYNC;"
        );
        assert!(text[1].contains("properties JSON"), "{}", text[1]);
        assert!(text[1].contains("events_local_v2_json'"), "{}", text[1]);
        assert!(text.iter().any(|t| t.starts_with(
            "RENAME TABLE ess.events_local TO ess.events_local_v2_string, \
             ess.events_local_next TO ess.events_local ON CLUSTER ess"
        )));
        let err = move_from(&s, &current("Object('json')"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Object('json')") && err.contains("RENAME TABLE"),
            "{err}"
        );
    }
}
