//! Connections: accepting them under a cap, their timeouts, and closing them at shutdown.
//!
//! - **Cap**: at most `ingest.max_connections` are served at once. Beyond it a new connection
//!   is answered `503 overloaded` with `Retry-After` and `Connection: close`, written at once
//!   without reading the request (at most [`OVERFLOW_ANSWERS`] such answers are pending at a
//!   time, each for at most [`OVERFLOW_LINGER`]; beyond that the connection is closed at once).
//! - **Timeouts**, kept by a wrapper around the socket ([`Timed`]) that knows the connection's
//!   phase from the service ([`Tracked`]): a request head (request line and headers) must
//!   arrive within `ingest.head_timeout` of connecting, or of the first byte of a later request;
//!   a kept-alive connection waits at most `ingest.idle_timeout` for its next request (and a
//!   client must read its response within it). Either closes the connection, after a 408 when
//!   part of a head arrived. While a request is with the handler no connection timeout runs:
//!   the handler bounds its body (`read_timeout`) and its wait for the broker
//!   (`produce_timeout`). hyper's own `header_read_timeout` is not used: it starts when the
//!   previous response ends, so it would cut idle keep-alive connections at the head timeout.
//! - **Shutdown** ([`Connections::close`]): connections without a request in the handler (fresh,
//!   half-open, idle) are closed at once; the others finish their request (keep-alive off) and
//!   are closed when the deadline passes, whatever the client does.
//! - Per connection, hyper's read buffer is at most [`READ_BUFFER_BYTES`], which also bounds
//!   a request head (a larger one gets 431).
//! - **Unreadable heads**: hyper answers a request head it cannot parse on its own, with a
//!   bare 400 (request line or header), 431 (head too large) or 414 (URI too long) and no
//!   body. [`Timed`] recognises such an answer as it is written and sends, in its place, the
//!   same status with the JSON error body every other 4xx has (`invalid_request`,
//!   `headers_too_large`, `uri_too_long`) and `Connection: close`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// Most bytes hyper buffers per connection (reading heads and bodies); a request head larger
/// than this gets 431.
pub const READ_BUFFER_BYTES: usize = 32 * 1024;
/// Most 503 answers to connections over the cap pending at once.
pub const OVERFLOW_ANSWERS: usize = 64;
/// How long one such answer may take (write, then wait for the client to close).
pub const OVERFLOW_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error such as "too many open files".
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every connection shares.
#[derive(Debug)]
pub struct Settings {
    /// `ingest.head_timeout`.
    pub head_timeout: Duration,
    /// `ingest.idle_timeout`.
    pub idle_timeout: Duration,
    /// `ingest.max_connections`.
    pub max_connections: usize,
    /// `ingest.retry_after_secs`, for the 503 over the cap.
    pub retry_after_secs: u32,
}

struct Shared {
    settings: Settings,
    base: Instant,
    http: http1::Builder,
    router: Router,
    overloaded: Vec<u8>,
    request_timeout: Vec<u8>,
    /// In place of hyper's bare answers to unreadable heads, by status.
    bad_request: Vec<u8>,
    headers_too_large: Vec<u8>,
    uri_too_long: Vec<u8>,
    head_timeouts: metrics::Counter,
    idle_timeouts: metrics::Counter,
    open: metrics::Gauge,
}

/// The connections being served.
pub struct Connections {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown` resolves;
/// then closes the listener and returns the connections still open.
pub async fn accept_until(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> Connections {
    let mut http = http1::Builder::new();
    http.keep_alive(true).max_buf_size(READ_BUFFER_BYTES);
    let overloaded = raw_response(
        "503 Service Unavailable",
        &format!("retry-after: {}\r\n", settings.retry_after_secs.max(1)),
        "overloaded",
        "overloaded: too many open connections; retry later",
    );
    let request_timeout = raw_response(
        "408 Request Timeout",
        "",
        "request_timeout",
        "the request head did not arrive in time",
    );
    let bad_request = raw_response(
        "400 Bad Request",
        "",
        "invalid_request",
        "the request line or a header is not valid HTTP/1.1",
    );
    let headers_too_large = raw_response(
        "431 Request Header Fields Too Large",
        "",
        "headers_too_large",
        &format!("the request head is larger than {READ_BUFFER_BYTES} bytes"),
    );
    let uri_too_long = raw_response(
        "414 URI Too Long",
        "",
        "uri_too_long",
        "the request URI is too long",
    );
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let shared = Arc::new(Shared {
        settings,
        base: Instant::now(),
        http,
        router,
        overloaded,
        request_timeout,
        bad_request,
        headers_too_large,
        uri_too_long,
        head_timeouts: metrics.head_timeouts.clone(),
        idle_timeouts: metrics.idle_timeouts.clone(),
        open: metrics.connections_open.clone(),
    });
    let refused = metrics.connections_refused.clone();
    let (stop, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: wait, others may close meanwhile.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let _ = tcp.set_nodelay(true);
                tasks.spawn(serve(
                    tcp,
                    peer,
                    permit,
                    Arc::clone(&shared),
                    stop.subscribe(),
                ));
            }
            Err(_) => {
                refused.increment(1);
                if let Ok(permit) = Arc::clone(&overflow).try_acquire_owned() {
                    tokio::spawn(answer_overloaded(tcp, permit, Arc::clone(&shared)));
                }
            }
        }
    }
    drop(listener);
    Connections { tasks, stop }
}

impl Shared {
    /// What is sent in place of hyper's bare answer with `status`.
    fn replacement(&self, status: u16) -> &[u8] {
        match status {
            431 => &self.headers_too_large,
            414 => &self.uri_too_long,
            _ => &self.bad_request,
        }
    }
}

/// The status of `bytes` when they are hyper's own answer to an unreadable request head: a
/// 400, 414 or 431 head with `content-length: 0` and nothing after it. (Every answer of the
/// handlers with these statuses has a JSON body.)
fn bare_error_status(bytes: &[u8]) -> Option<u16> {
    let status = match bytes.get(..13)? {
        b"HTTP/1.1 400 " => 400,
        b"HTTP/1.1 414 " => 414,
        b"HTTP/1.1 431 " => 431,
        _ => return None,
    };
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let empty = bytes[..head_end]
        .split(|b| *b == b'\n')
        .any(|line| line.trim_ascii().eq_ignore_ascii_case(b"content-length: 0"));
    (head_end == bytes.len() && empty).then_some(status)
}

/// A complete HTTP/1.1 response with a JSON error body, written without hyper.
fn raw_response(status: &str, headers: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":"{code}","message":"{message}"}}"#);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Connections {
    /// Closes every connection without a request in the handler at once, lets the others
    /// finish until `deadline`, then closes what is left.
    pub async fn close(mut self, deadline: Instant) {
        let _ = self.stop.send(true);
        let finished = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, finished).await.is_err() {
            tracing::warn!(
                open = self.tasks.len(),
                "connections still open at the shutdown deadline; closing them"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// Counts a connection as open while it lives.
struct Open(metrics::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    shared.open.increment(1.0);
    let _open = Open(shared.open.clone());
    let phase = Arc::new(Phase::new(shared.base));
    let io = TokioIo::new(Timed::new(tcp, Arc::clone(&phase), Arc::clone(&shared)));
    let service = Tracked {
        inner: TowerToHyperService::new(shared.router.clone()),
        phase: Arc::clone(&phase),
        peer,
    };
    let connection = shared.http.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    if !phase.busy() {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Answers a connection over the cap with a 503 and closes it.
async fn answer_overloaded(mut tcp: TcpStream, _permit: OwnedSemaphorePermit, shared: Arc<Shared>) {
    let answer = async {
        tcp.write_all(&shared.overloaded).await?;
        tcp.shutdown().await?;
        // Read what the client sent until it closes, so that closing does not reset the
        // connection before the client read the answer.
        let mut sink = [0u8; 4096];
        let mut seen = 0;
        while seen < 64 * 1024 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => seen += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(OVERFLOW_LINGER, answer).await;
}

/// A fresh connection: no byte yet.
const FRESH: u8 = 0;
/// Part of a request head arrived.
const HEAD: u8 = 1;
/// A request is with the handler.
const BUSY: u8 = 2;
/// A response was produced; waiting for the next request.
const IDLE: u8 = 3;

/// Where a connection is, and since when (nanoseconds after [`Shared::base`]). Written by the
/// socket wrapper and the service, which hyper polls from the connection's one task.
struct Phase {
    base: Instant,
    phase: AtomicU8,
    since: AtomicU64,
}

impl Phase {
    fn new(base: Instant) -> Self {
        let phase = Self {
            base,
            phase: AtomicU8::new(FRESH),
            since: AtomicU64::new(0),
        };
        phase.stamp();
        phase
    }

    fn stamp(&self) {
        let nanos = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        self.since
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn set(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn busy(&self) -> bool {
        self.get() == BUSY
    }

    /// Bytes arrived: a fresh or idle connection is now receiving a head. A fresh one keeps
    /// its start (the head must arrive within the timeout of connecting).
    fn bytes_arrived(&self) {
        match self.get() {
            FRESH => self.set(HEAD),
            IDLE => {
                self.stamp();
                self.set(HEAD);
            }
            _ => {}
        }
    }

    /// The deadline of the current phase, if it has one.
    fn deadline(&self, settings: &Settings) -> Option<(Instant, u8)> {
        let phase = self.get();
        let timeout = match phase {
            FRESH | HEAD => settings.head_timeout,
            IDLE => settings.idle_timeout,
            _ => return None,
        };
        let since = Duration::from_nanos(self.since.load(Ordering::Relaxed));
        Some((self.base + since + timeout, phase))
    }
}

/// The socket, with the connection's head and idle timeouts.
///
/// The timer is armed while a read or write waits and when a response is flushed, and only
/// moved earlier; when it fires before the (since moved) deadline it is re-armed, so
/// back-to-back requests cost no timer operations.
struct Timed {
    tcp: TcpStream,
    phase: Arc<Phase>,
    shared: Arc<Shared>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: Instant,
    timed_out: bool,
    /// A replacement for hyper's bare answer to an unreadable head, and how much of it was
    /// written.
    /// (its status, bytes written).
    replacing: Option<(u16, usize)>,
}

impl Timed {
    fn new(tcp: TcpStream, phase: Arc<Phase>, shared: Arc<Shared>) -> Self {
        Self {
            tcp,
            phase,
            armed: shared.base,
            shared,
            timer: None,
            timed_out: false,
            replacing: None,
        }
    }

    /// Writes, in place of `first` (the start of what hyper writes, `total` bytes in all),
    /// the JSON answer for hyper's bare answer to an unreadable head; `None` when `first`
    /// is not such an answer.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        total: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            self.replacing = Some((bare_error_status(first)?, 0));
        }
        let (status, mut written) = self.replacing?;
        let shared = Arc::clone(&self.shared);
        let answer = shared.replacement(status);
        while written < answer.len() {
            match Pin::new(&mut self.tcp).poll_write(cx, &answer[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.replacing = Some((status, written));
                }
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(self.pending(cx)),
            }
        }
        Some(Poll::Ready(Ok(total)))
    }

    /// With the socket not ready: whether the phase's deadline passed (then which phase).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<u8> {
        let (deadline, phase) = self.phase.deadline(&self.shared.settings)?;
        let timer = match &mut self.timer {
            Some(timer) => {
                if self.armed > deadline {
                    timer.as_mut().reset(deadline);
                    self.armed = deadline;
                }
                timer
            }
            None => {
                self.armed = deadline;
                self.timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline)))
            }
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(phase);
            }
            // Fired at an earlier deadline that has since moved.
            timer.as_mut().reset(deadline);
            self.armed = deadline;
        }
    }

    /// Closes the connection for a missed deadline: a 408 first if part of a head arrived.
    fn time_out(&mut self, phase: u8, cx: &mut Context<'_>) -> io::Error {
        let error = io::Error::new(io::ErrorKind::TimedOut, "connection timeout");
        if std::mem::replace(&mut self.timed_out, true) {
            return error;
        }
        match phase {
            HEAD => {
                self.shared.head_timeouts.increment(1);
                let answer = Arc::clone(&self.shared);
                let _ = Pin::new(&mut self.tcp).poll_write(cx, &answer.request_timeout);
            }
            FRESH => self.shared.head_timeouts.increment(1),
            _ => self.shared.idle_timeouts.increment(1),
        }
        error
    }

    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.expired(cx) {
            Some(phase) => Poll::Ready(Err(self.time_out(phase, cx))),
            None => Poll::Pending,
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.phase.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(replaced) = self.poll_replace(cx, data, data.len()) {
            return replaced;
        }
        match Pin::new(&mut self.tcp).poll_write(cx, data) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = data
            .iter()
            .find(|d| !d.is_empty())
            .map_or(&[][..], |d| &d[..]);
        let total = data.iter().map(|d| d.len()).sum();
        if let Some(replaced) = self.poll_replace(cx, first, total) {
            return replaced;
        }
        match Pin::new(&mut self.tcp).poll_write_vectored(cx, data) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes after every response; with the connection idle now, it may not read
        // again until bytes arrive, so the idle timer is armed here.
        if let Some(phase) = self.expired(cx) {
            return Poll::Ready(Err(self.time_out(phase, cx)));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The router as a hyper service that marks the connection busy while a request is with it.
struct Tracked {
    inner: TowerToHyperService<Router>,
    phase: Arc<Phase>,
    /// The connection's peer, handed to the handlers as `ConnectInfo` (the client, or the
    /// proxy whose forwarding headers the request context reads).
    peer: SocketAddr,
}

type RouterFuture =
    <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Future;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future = TrackedFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.phase.set(BUSY);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        TrackedFuture {
            inner: self.inner.call(request),
            phase: Some(Arc::clone(&self.phase)),
        }
    }
}

/// A request with the handler; the connection turns idle when it is answered (or dropped).
struct TrackedFuture {
    inner: RouterFuture,
    phase: Option<Arc<Phase>>,
}

impl TrackedFuture {
    fn done(&mut self) {
        if let Some(phase) = self.phase.take() {
            phase.stamp();
            phase.set(IDLE);
        }
    }
}

impl Future for TrackedFuture {
    type Output = <RouterFuture as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let output = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        self.done();
        Poll::Ready(output)
    }
}

impl Drop for TrackedFuture {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                     content-length: 0\r\ndate: Mon, 30 Nov 2026 10:00:00 GMT\r\n\r\n";
        assert_eq!(bare_error_status(bare), Some(431));
        assert_eq!(
            bare_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(400)
        );
        // An answer with a body, or another status, is left alone.
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: 2\r\n\r\n{}";
        assert_eq!(bare_error_status(json), None);
        assert_eq!(
            bare_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n"),
            None
        );
        assert_eq!(
            bare_error_status(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(bare_error_status(b"HTTP/1.1 400"), None);
    }
}
