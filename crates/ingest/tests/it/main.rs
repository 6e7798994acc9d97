//! Integration tests of ess-ingest against the real broker that `ess stack up` runs.
//!
//! Each test writes to its own topic (and ClickHouse database) from `ess_testkit::Ephemeral`;
//! the broker-outage test runs a private broker of its own.

mod bad_input;
mod broker;
mod connections;
mod delivery;
mod harness;
mod identity;
mod segment;
