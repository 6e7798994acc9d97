//! Integration tests against the real broker and ClickHouse cluster that `ess stack up`
//! starts (see the README). Each test works in its own topic and database.

mod broker;
mod schema;
mod sink;
mod stack;
