//! Serving: the listener, readiness, and graceful shutdown.
//!
//! On shutdown: readiness turns 503, the listener closes, in-flight requests finish (each is
//! bounded by the read and produce timeouts), idle keep-alive connections are closed, then the
//! producer is flushed for at most `ingest.shutdown_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ess_core::config::{AuthMode, Config};
use tokio::net::TcpListener;

use crate::Error;
use crate::router::{AppState, app};

/// How often readiness asks the broker for metadata until it answers.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the producer's health is checked.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// How often histogram samples are folded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

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
            }
        })
    };
    let draining = Arc::clone(&state);
    let signal = async move {
        shutdown.await;
        draining.set_draining();
        tracing::info!("shutting down: finishing in-flight requests");
    };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // The peer address is the client's, or the proxy's whose headers `context` reads.
    let served = axum::serve(
        listener,
        app(Arc::clone(&state)).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await;
    probe.abort();
    supervisor.abort();
    upkeep.abort();
    let producer = state.producer().clone();
    let timeout = config.ingest.shutdown_timeout;
    let flushed = tokio::task::spawn_blocking(move || producer.flush_blocking(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed; stopped"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
        Err(e) => tracing::warn!(error = %e, "producer flush failed"),
    }
    served.map_err(Error::Serve)
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
