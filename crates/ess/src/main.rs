//! `ess`: HTTP events → Kafka → ClickHouse, plus the local stack, load generator and verifier.
//!
//! `main` parses flags and configuration and hands over to the library crates.
//!
//! # Layout
//! - `cli`: the flags of every subcommand (clap types stay here), turned into the library
//!   entries' plain options; each entry gets the SIGINT/SIGTERM shutdown future.
//! - `demo`: `ess demo`, the whole pipeline as its steps, calling the same entries.
//!
//! Errors: `anyhow` with context, since a binary only reports them; the library crates keep
//! typed errors where a caller acts on them.

mod cli;
mod demo;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
