//! Integration tests of ess-load: the load generator against a small local HTTP server that
//! speaks the ingest contract, and the verifier against the real ClickHouse cluster.

mod load;
mod verify;
