//! Sending the load: an HTTP/1.1 connection pool, the open-model scheduler and the
//! closed-model connections, each reporting finished requests to the collector.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ess_core::config::LoadConfig;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::sync::{Semaphore, mpsc};

use crate::generator::{Body, GenSettings, Generator};
use crate::ids::{RunId, SeqSet, decode};
use crate::plan::{Model, Plan};
use crate::stats::{
    Collected, Done, LatencyMs, Live, LoadSummary, RequestOutcome, RunLength, collect,
};

/// Everything one load run needs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URL of the ingest server (`http://host:port`).
    pub target: String,
    /// Bearer token, if any.
    pub api_key: Option<String>,
    /// The schedule.
    pub plan: Plan,
    /// Events per request; 1 sends single events, more sends batches.
    pub batch: usize,
    /// Per-request timeout (connect, send, whole response).
    pub timeout: Duration,
    /// Stop after this many distinct events.
    pub max_events: Option<u64>,
    /// Stop after this long (in addition to the plan's stages).
    pub duration: Option<Duration>,
    /// Open model: most requests in flight; beyond it the scheduler waits (and the waiting
    /// shows in the latency, which counts from the scheduled start).
    pub max_inflight: usize,
    /// Event generator settings.
    pub generator: GenSettings,
    /// The run id.
    pub run: RunId,
    /// Draw the live progress line on stderr.
    pub progress: bool,
}

/// Open model: most requests in flight unless the caller says otherwise.
pub const DEFAULT_MAX_INFLIGHT: usize = 20_000;

impl LoadOptions {
    /// A run of `plan` with `config`'s target, API key, batch and timeout, the generator's
    /// defaults and a progress line. It has no end until the caller sets `max_events` or
    /// `duration` (or the plan has stages).
    pub fn new(config: &LoadConfig, plan: Plan, run: RunId) -> Self {
        Self {
            target: config.target.clone(),
            api_key: Some(config.api_key.clone()).filter(|k| !k.is_empty()),
            plan,
            batch: config.batch.max(1),
            timeout: config.timeout,
            max_events: None,
            duration: None,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            generator: GenSettings::default(),
            run,
            progress: true,
        }
    }
}

/// Why the load could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target is not an `http://` URL.
    #[error("target {0:?} must be an http:// URL (the load generator speaks plain HTTP/1.1)")]
    Target(String),
    /// Nothing would end the run.
    #[error("the load has no end: give a duration, an event limit or stages")]
    Endless,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Sender {
    client: HttpClient,
    uri: Uri,
    path: Uri,
    host: String,
    auth: Option<String>,
    batch: bool,
    timeout: Duration,
    tx: mpsc::Sender<Vec<Done>>,
    live: Arc<Live>,
}

impl Sender {
    /// Sends `body` over the shared pool (`conn` = `None`) or over a connection of the
    /// caller's own, opened (again) when missing and dropped after any failure.
    async fn send(&self, body: Body, started: Instant, conn: Option<&mut Option<Conn>>) -> Done {
        self.live.inflight.fetch_add(1, Ordering::Relaxed);
        let events = body.seqs.len() as u32;
        let resent = body.resent;
        let uri = if conn.is_some() {
            self.path.clone()
        } else {
            self.uri.clone()
        };
        let mut req = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(HOST, self.host.as_str());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let (outcome, reply) = match req.body(Full::new(Bytes::from(body.json))) {
            Ok(req) => match conn {
                None => {
                    let exchange = async {
                        let resp = self.client.request(req).await.map_err(|e| {
                            if e.is_connect() {
                                RequestOutcome::Connect
                            } else {
                                RequestOutcome::Io
                            }
                        })?;
                        read(resp).await
                    };
                    match tokio::time::timeout(self.timeout, exchange).await {
                        Err(_) => (RequestOutcome::Timeout, Bytes::new()),
                        Ok(Err(outcome)) => (outcome, Bytes::new()),
                        Ok(Ok(done)) => done,
                    }
                }
                Some(slot) => {
                    let exchange = async {
                        if slot.is_none() {
                            *slot = Some(self.connect().await?);
                        }
                        let Some(Conn { sender, driver }) = slot.as_mut() else {
                            return Err(RequestOutcome::Connect);
                        };
                        // The connection is driven by this task, not one of its own: one
                        // wake-up per response instead of two.
                        let request = async {
                            sender.ready().await.map_err(|_| RequestOutcome::Io)?;
                            let resp = sender
                                .send_request(req)
                                .await
                                .map_err(|_| RequestOutcome::Io)?;
                            read(resp).await
                        };
                        tokio::select! {
                            biased;
                            done = request => done,
                            _ = driver.as_mut() => Err(RequestOutcome::Io),
                        }
                    };
                    match tokio::time::timeout(self.timeout, exchange).await {
                        Err(_) => {
                            *slot = None;
                            (RequestOutcome::Timeout, Bytes::new())
                        }
                        Ok(Err(outcome)) => {
                            *slot = None;
                            (outcome, Bytes::new())
                        }
                        Ok(Ok(done)) => done,
                    }
                }
            },
            Err(_) => (RequestOutcome::Io, Bytes::new()),
        };
        let latency_us = started.elapsed().as_micros() as u64;
        let accepted = if outcome.is_ok() {
            accepted_seqs(&body.seqs, &reply, self.batch)
        } else {
            Vec::new()
        };
        self.live.inflight.fetch_sub(1, Ordering::Relaxed);
        Done {
            latency_us,
            outcome,
            events,
            resent,
            accepted,
        }
    }

    async fn connect(&self) -> Result<Conn, RequestOutcome> {
        let stream = tokio::net::TcpStream::connect(self.host.as_str())
            .await
            .map_err(|_| RequestOutcome::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| RequestOutcome::Connect)?;
        Ok(Conn {
            sender,
            driver: Box::pin(connection),
        })
    }
}

/// A connection of one closed-model sender, with the future that drives it.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: std::pin::Pin<
        Box<hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>>,
    >,
}

async fn read(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<(RequestOutcome, Bytes), RequestOutcome> {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| RequestOutcome::Io)?
        .to_bytes();
    Ok((RequestOutcome::Status(status), bytes))
}

/// Which of `sent` a 2xx reply accepted: all of them when the reply says so (or says nothing
/// readable, since 2xx means accepted), else those whose ids it lists.
fn accepted_seqs(sent: &[u64], reply: &[u8], batch: bool) -> Vec<u64> {
    #[derive(serde::Deserialize)]
    struct Reply {
        accepted: Option<u64>,
        #[serde(default)]
        ids: Vec<uuid::Uuid>,
    }
    if !batch {
        return sent.to_vec();
    }
    match serde_json::from_slice::<Reply>(reply) {
        Ok(r)
            if r.accepted == Some(sent.len() as u64)
                || (r.accepted.is_none() && r.ids.is_empty()) =>
        {
            sent.to_vec()
        }
        Ok(r) => {
            let mut seqs: Vec<u64> = r
                .ids
                .iter()
                .filter_map(|id| decode(id).map(|(_, s)| s))
                .collect();
            seqs.retain(|s| sent.contains(s));
            seqs
        }
        Err(_) => sent.to_vec(),
    }
}

/// Runs the load until its plan, duration or event limit ends it, or `shutdown` resolves.
/// Returns the summary and the set of accepted sequence numbers.
pub async fn run(
    opts: LoadOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(LoadSummary, SeqSet), LoadError> {
    let base = opts.target.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(LoadError::Target(opts.target.clone()));
    }
    let batch = opts.batch.max(1);
    let path = if batch > 1 {
        "/v1/events/batch"
    } else {
        "/v1/events"
    };
    let uri: Uri = format!("{base}{path}")
        .parse()
        .map_err(|_| LoadError::Target(opts.target.clone()))?;
    let end = match (opts.plan.duration(), opts.duration) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if end.is_none() && opts.max_events.is_none() {
        return Err(LoadError::Endless);
    }

    let client = http_client(opts.timeout);

    let (tx, rx) = mpsc::channel::<Vec<Done>>(65_536);
    let live = Arc::new(Live::default());
    let limits = RunLength {
        duration: end,
        events: opts.max_events,
    };
    let collector = tokio::spawn(collect(rx, live.clone(), limits, opts.progress, opts.run));
    let generator = Arc::new(Generator::new(
        opts.run,
        opts.generator.clone(),
        opts.max_events,
    ));
    let host = host_port(&uri).ok_or_else(|| LoadError::Target(opts.target.clone()))?;
    let sender = Arc::new(Sender {
        client,
        uri,
        path: Uri::from_static(if batch > 1 {
            "/v1/events/batch"
        } else {
            "/v1/events"
        }),
        host,
        auth: opts
            .api_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| format!("Bearer {k}")),
        batch: batch > 1,
        timeout: opts.timeout,
        tx,
        live,
    });
    let started_ms = ess_core::wire::Millis::now().0;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let deadline = end.map(|d| start + d);

    let drive = Drive {
        plan: opts.plan.clone(),
        generator: generator.clone(),
        sender: sender.clone(),
        batch,
        start,
        deadline,
        stop: stop.clone(),
    };
    let max_inflight = opts.max_inflight;
    let driver = async move {
        match drive.plan.model {
            Model::Open => drive.open_model(max_inflight).await,
            Model::Closed => drive.closed_model().await,
        }
    };
    tokio::pin!(driver);
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut driver => {}
        _ = &mut shutdown => {
            interrupted.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            driver.await;
        }
    }
    let duration = start.elapsed();
    drop(sender);
    let collected = collector
        .await
        .unwrap_or_else(|e| panic!("collector task: {e}"));

    let run = RunShape {
        opts: &opts,
        base,
        batch,
        started_ms,
        unique_events: generator.issued(),
        interrupted: interrupted.load(Ordering::Relaxed),
    };
    let summary = run.summary(&collected, duration);
    Ok((summary, collected.accepted))
}

/// What a finished run was, for its summary.
struct RunShape<'a> {
    opts: &'a LoadOptions,
    base: &'a str,
    batch: usize,
    started_ms: i64,
    unique_events: u64,
    interrupted: bool,
}

impl RunShape<'_> {
    /// The summary of a run that took `duration` and collected `collected`.
    fn summary(&self, collected: &Collected, duration: Duration) -> LoadSummary {
        let Self {
            opts,
            base,
            batch,
            started_ms,
            unique_events,
            interrupted,
        } = *self;
        let secs = duration.as_secs_f64().max(1e-6);
        let failed = collected.requests - collected.ok;
        let shape = match opts.plan.model {
            Model::Open => describe(&opts.plan, "req/s"),
            Model::Closed => describe(&opts.plan, "connections"),
        };
        LoadSummary {
            run: opts.run,
            target: base.to_owned(),
            model: opts.plan.model,
            shape: format!(
                "{shape}, {} event{} per request",
                batch,
                if batch == 1 { "" } else { "s" }
            ),
            batch,
            started_ms,
            duration_s: secs,
            requests: collected.requests,
            requests_ok: collected.ok,
            requests_failed: failed,
            events_sent: collected.events_sent,
            unique_events,
            events_accepted: collected.accepted.len(),
            resent: collected.resent,
            rps: collected.requests as f64 / secs,
            events_per_s: collected.accepted.len() as f64 / secs,
            success_pct: if collected.requests == 0 {
                0.0
            } else {
                100.0 * collected.ok as f64 / collected.requests as f64
            },
            latency: LatencyMs::of(&collected.total),
            corrected_for_coordinated_omission: opts.plan.model == Model::Open,
            outcomes: collected.outcomes.clone(),
            interrupted,
            timeline: collected.timeline.clone(),
        }
    }
}

/// `host:port` of `uri` (port 80 when it names none).
fn host_port(uri: &Uri) -> Option<String> {
    uri.authority().map(|a| {
        if a.port().is_some() {
            a.to_string()
        } else {
            format!("{a}:80")
        }
    })
}

/// The open model's pooled client: no Nagle delay, connect timeout, idle connections kept.
fn http_client(timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

fn describe(plan: &Plan, unit: &str) -> String {
    if plan.stages.is_empty() {
        format!("{} {unit}", plan.start)
    } else {
        let stages: Vec<String> = plan
            .stages
            .iter()
            .map(|s| format!("{}:{}", humantime::format_duration(s.duration), s.target))
            .collect();
        format!("{unit} stages {}", stages.join(","))
    }
}

/// What either model drives: the schedule, where the bodies come from and go, and when it
/// ends.
struct Drive {
    plan: Plan,
    generator: Arc<Generator>,
    sender: Arc<Sender>,
    /// Events per request.
    batch: usize,
    start: Instant,
    deadline: Option<Instant>,
    /// Set to end the run early (and by the closed model when it ends).
    stop: Arc<AtomicBool>,
}

impl Drive {
    /// Open model: requests start on the plan's schedule, at most `max_inflight` at a time.
    async fn open_model(self, max_inflight: usize) {
        let permits = Arc::new(Semaphore::new(max_inflight.max(1)));
        let mut rng = SmallRng::from_os_rng();
        let mut next = Duration::ZERO;
        loop {
            if self.stop.load(Ordering::Relaxed) || self.generator.exhausted() {
                break;
            }
            let intended = self.start + next;
            if self.deadline.is_some_and(|d| intended >= d) {
                break;
            }
            let rate = self.plan.target_at(next);
            if rate < 1e-6 {
                next += Duration::from_millis(10);
                tokio::time::sleep_until(intended.into()).await;
                continue;
            }
            if intended > Instant::now() + Duration::from_micros(500) {
                tokio::time::sleep_until(intended.into()).await;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let Some(body) = self.generator.body(self.batch, self.batch > 1, &mut rng) else {
                break;
            };
            let sender = self.sender.clone();
            tokio::spawn(async move {
                let done = sender.send(body, intended, None).await;
                drop(permit);
                let _ = sender.tx.send(vec![done]).await;
            });
            next += Duration::from_secs_f64(1.0 / rate);
        }
        // Wait for every request in flight.
        let _ = permits.acquire_many(max_inflight.max(1) as u32).await;
    }

    /// Closed model: as many connections as the plan says, each sending its next request when
    /// the previous one is answered.
    async fn closed_model(self) {
        let Drive {
            plan,
            generator,
            sender,
            batch,
            start,
            deadline,
            stop,
        } = self;
        let peak = plan.peak().ceil().max(1.0) as usize;
        let desired = Arc::new(AtomicUsize::new(
            plan.target_at(Duration::ZERO).round() as usize
        ));
        let mut workers = Vec::with_capacity(peak);
        for i in 0..peak {
            let (generator, sender, desired, stop) = (
                generator.clone(),
                sender.clone(),
                desired.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut rng = SmallRng::from_os_rng();
                let mut conn = None;
                // Results go to the collector in small batches: one wake-up per batch, not per
                // request, keeps the generator's own cost low.
                let mut done = Vec::with_capacity(64);
                let mut flushed = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if i >= desired.load(Ordering::Relaxed) {
                        if !done.is_empty() {
                            let _ = sender.tx.send(std::mem::take(&mut done)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let Some(body) = generator.body(batch, batch > 1, &mut rng) else {
                        break;
                    };
                    done.push(sender.send(body, Instant::now(), Some(&mut conn)).await);
                    if done.len() >= 64 || flushed.elapsed() >= Duration::from_millis(50) {
                        let _ = sender
                            .tx
                            .send(std::mem::replace(&mut done, Vec::with_capacity(64)))
                            .await;
                        flushed = Instant::now();
                    }
                }
                if !done.is_empty() {
                    let _ = sender.tx.send(done).await;
                }
            }));
        }
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed)
                || generator.exhausted()
                || deadline.is_some_and(|d| now >= d)
            {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            desired.store(
                plan.target_at(now - start).round() as usize,
                Ordering::Relaxed,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in workers {
            let _ = w.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_replies_tell_which_events_were_accepted() {
        let run = RunId::from_u64(9).unwrap();
        let sent = [4, 5, 6];
        let all = format!(
            r#"{{"accepted":3,"ids":["{}","{}","{}"]}}"#,
            run.event_id(4),
            run.event_id(5),
            run.event_id(6)
        );
        assert_eq!(accepted_seqs(&sent, all.as_bytes(), true), vec![4, 5, 6]);
        let some = format!(r#"{{"accepted":1,"ids":["{}"]}}"#, run.event_id(5));
        assert_eq!(accepted_seqs(&sent, some.as_bytes(), true), vec![5]);
        assert_eq!(accepted_seqs(&sent, b"not json", true), vec![4, 5, 6]);
        assert_eq!(accepted_seqs(&[7], b"", false), vec![7]);
    }
}
