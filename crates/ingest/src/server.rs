//! Serving: the listener, readiness, and a shutdown that ends in time.
//!
//! On shutdown, all within `ingest.shutdown_timeout` of the signal: readiness turns 503, the
//! listener closes, connections without a request in the handler (fresh, half-open, idle) are
//! closed at once, requests not yet at the producer get 503 `shutting_down`, requests whose
//! events are with the producer are answered (each waits at most `produce_timeout` + 0.5 s),
//! connections still open [`FLUSH_SHARE`] before the end are closed, and the producer is
//! flushed with the time left but [`TEARDOWN`], which is kept for dropping the producer (its
//! unsent events are purged) and stopping the runtime. Connections are served by [`crate::conn`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ess_core::config::{AuthMode, Config};
use tokio::net::TcpListener;

use crate::Error;
use crate::conn::{self, OVERFLOW_ANSWERS, Settings};
use crate::router::{AppState, app};

/// How often readiness asks the broker for metadata until it answers.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the producer's health is checked.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// How often histogram samples are folded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The end of `shutdown_timeout` kept for flushing the producer after the connections closed.
pub const FLUSH_SHARE: Duration = Duration::from_millis(250);
/// The end of `shutdown_timeout` kept for the teardown after the flush.
pub const TEARDOWN: Duration = Duration::from_millis(250);
/// File descriptors the process needs besides its connections (broker sockets, files).
const OTHER_FDS: u64 = 64;

/// Binds `ingest.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.ingest.require_keys()?;
    let listener = TcpListener::bind(&config.ingest.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.ingest.listen.clone(),
            source,
        })?;
    serve(listener, config, shutdown).await
}

/// Serves on `listener` until `shutdown` resolves, then drains and flushes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.ingest.require_keys()?;
    let state = Arc::new(AppState::new(&config)?);
    let addr = listener.local_addr().map_err(Error::Serve)?;
    if config.ingest.auth == AuthMode::Off {
        tracing::warn!(
            "ingest.auth = \"off\": API keys are NOT checked and there is no rate limit; \
             anyone who can reach {addr} can write events"
        );
    }
    tracing::info!(
        %addr,
        topic = state.producer().topic(),
        brokers = %config.kafka.brokers,
        "ess ingest listening"
    );
    let probe = tokio::spawn(readiness(Arc::clone(&state)));
    let supervisor = tokio::spawn(supervise(Arc::clone(&state)));
    let upkeep = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tick.tick().await;
                state.metrics().upkeep();
                state
                    .metrics()
                    .queue_depth
                    .set(f64::from(state.producer().queue_depth()));
                state
                    .metrics()
                    .buffered_bytes
                    .set(state.intake().buffered_bytes() as f64);
            }
        })
    };
    let ingest = &config.ingest;
    warn_if_few_descriptors(ingest.max_connections);
    let settings = Settings {
        head_timeout: ingest.head_timeout,
        idle_timeout: ingest.idle_timeout,
        max_connections: ingest.max_connections,
        retry_after_secs: ingest.retry_after_secs,
    };
    let router = app(Arc::clone(&state));
    let connections =
        conn::accept_until(listener, router, settings, state.metrics(), shutdown).await;
    // The listener is closed.
    let end = tokio::time::Instant::now() + ingest.shutdown_timeout;
    state.set_draining();
    tracing::info!("shutting down: answering requests already with the producer");
    connections.close(end - FLUSH_SHARE).await;
    probe.abort();
    supervisor.abort();
    upkeep.abort();
    let producer = state.producer().clone();
    let left = (end - TEARDOWN).saturating_duration_since(tokio::time::Instant::now());
    let flushed = tokio::task::spawn_blocking(move || producer.flush_blocking(left)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed; stopped"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
        Err(e) => tracing::warn!(error = %e, "producer flush failed"),
    }
    Ok(())
}

/// Warns when the process may open fewer files than `max_connections` needs (Linux).
fn warn_if_few_descriptors(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let needed = max_connections as u64 + OVERFLOW_ANSWERS as u64 + OTHER_FDS;
    if let Some(soft) = soft
        && soft < needed
    {
        tracing::warn!(
            open_files = soft,
            needed,
            "the process may open fewer files than ingest.max_connections needs; raise its \
             limit (ulimit -n) or lower ingest.max_connections"
        );
    }
}

/// Asks the broker for the topic's metadata until it answers, then marks the server ready.
async fn readiness(state: Arc<AppState>) {
    let mut last_error = String::new();
    loop {
        let producer = state.producer().clone();
        let answer =
            tokio::task::spawn_blocking(move || producer.has_topic_blocking(PROBE_TIMEOUT)).await;
        match answer {
            Ok(Ok(())) => {
                state.set_ready();
                tracing::info!("broker answered; ready");
                return;
            }
            Ok(Err(e)) if e != last_error => {
                tracing::warn!(error = %e, "broker not ready yet");
                last_error = e;
            }
            _ => {}
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Replaces the producer when it cannot recover on its own: after a fatal error, or when it
/// gets no acknowledgement at all although the broker answers metadata for the topic (an
/// idempotent producer whose broker restarted without its state stays stuck that way).
async fn supervise(state: Arc<AppState>) {
    let mut last_rebuild: Option<Instant> = None;
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let producer = state.producer().clone();
        let fatal = producer.is_fatal();
        if !fatal && producer.failing_requests() == 0 {
            continue;
        }
        if last_rebuild.is_some_and(|at| at.elapsed() < producer.wait() * 2) {
            continue;
        }
        if !fatal {
            let probe = producer.clone();
            let answers =
                tokio::task::spawn_blocking(move || probe.has_topic_blocking(PROBE_TIMEOUT)).await;
            if !matches!(answers, Ok(Ok(()))) {
                continue;
            }
        }
        tracing::warn!(
            fatal,
            failing_requests = producer.failing_requests(),
            "the producer gets no acknowledgements although the broker answers; replacing it"
        );
        if let Err(e) = producer.rebuild() {
            tracing::error!(error = %e, "cannot create a new producer");
        }
        last_rebuild = Some(Instant::now());
    }
}
