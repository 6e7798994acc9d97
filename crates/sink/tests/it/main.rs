//! Integration tests of ess-sink against the real broker and 2×2 ClickHouse cluster that
//! `ess stack up` runs; fault tests bring up a private stack of their own.

mod faults;
mod member;
mod modern;
mod pipeline;
mod private;
mod rebalance;
mod reconcile;
mod support;
mod timeouts;
