//! Integration tests against the real broker and ClickHouse cluster that `ess stack up`
//! starts (see the README). Each test works in its own topic and database.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed assertion here

mod broker;
mod demo;
mod deploy;
mod ingest;
mod modern;
mod schema;
mod sink;
mod stack;
mod tls;
