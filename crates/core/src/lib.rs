//! The ground every ess component stands on.
//!
//! # Layout
//! - [`config`]: the one typed configuration (TOML file, `ESS_*` environment, `--set` flags)
//!   shared by every subcommand, with one section per component and per dependency.
//! - [`wire`]: the event's wire form, as it travels through Kafka ([`wire::WireEvent`]), and
//!   its millisecond timestamps.
//! - [`schema`]: the ClickHouse tables, chosen by server version: the one column list
//!   ([`schema::COLUMNS`]), the sort key, retention, the `properties` column's type (text, or
//!   the `JSON` type on 25.3 and later), and the row the sink writes.
//! - [`clickhouse`]: the one place ClickHouse clients are made (HTTP or HTTPS with the
//!   configured CA, credentials and connect timeout), errors that name the setting to check,
//!   and telling old servers from current ones.
//! - [`kafka`]: librdkafka settings for every client (TLS and SASL from `[kafka]`), the
//!   start-up check that the brokers accept them, topic helpers.
//! - [`migrate`]: `ess migrate` — topics, and the tables created or moved from an earlier
//!   layout (or the other `properties` type), planned from what the server holds; the checks
//!   that refuse a server or a table that cannot hold the configured one.

pub mod clickhouse;
pub mod config;
pub mod kafka;
pub mod migrate;
pub mod schema;
pub mod wire;
