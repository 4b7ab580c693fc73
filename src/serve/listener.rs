//! The HTTP listener: accepts connections and serves them with hyper, within bounds a slow or
//! hostile client cannot stretch.
//!
//! - **Connections** (`http.max_connections`): a slot is taken *before* `accept()`, so once
//!   every slot is in use further connections wait in the kernel's listen backlog (they are not
//!   accepted, read or answered) until one closes. A TLS handshake holds a slot too.
//! - **Headers** (`http.header_timeout`): hyper closes a connection whose request headers have
//!   not all arrived in time, counted from when it is ready or its previous answer was sent (so
//!   idle keep-alive connections close too). The TLS handshake has the same bound, before that.
//! - **Bodies** (`http.body_timeout`) are bounded where they are read (`api::ingest`), which
//!   answers 408 and gives back the body's share of `http.max_in_flight_bytes`.
//! - **Shutdown** (`http.shutdown_grace`): once the token is cancelled nothing more is accepted
//!   (the socket is closed), idle connections close, and each busy one closes after its answer.
//!   Connections still busy after the grace are cut: their requests never got a 202 (a 202 is
//!   sent only after its spool commit), and what their handlers already queued for the spool
//!   is still committed, because the spool is closed only after this returns.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use crate::auth::tls::{PeerInfo, TlsReloader};
use crate::config::HttpConfig;

/// The bounds of [`serve`] (from the `http` section).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn of(http: &HttpConfig) -> Limits {
        Limits {
            header_timeout: http.header_timeout,
            max_connections: http.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            shutdown_grace: http.shutdown_grace,
        }
    }
}

/// What every connection task shares.
struct Shared {
    app: Router,
    tls: Option<TlsReloader>,
    limits: Limits,
    /// The root token: stop accepting, finish what is in flight.
    shutdown: CancellationToken,
    /// Cancelled `shutdown_grace` after `shutdown`: drop whatever is still in flight.
    cut: CancellationToken,
    open: metrics::Gauge,
}

/// Serves `app` on `tcp` (TLS with `tls`) until `shutdown` is cancelled and every connection
/// has closed or been cut (see the module docs). Returns only then.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsReloader>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(reloader) = &tls {
        reloader.spawn(shutdown.child_token());
    }
    let shared = Arc::new(Shared {
        app,
        tls,
        limits,
        shutdown: shutdown.clone(),
        cut: CancellationToken::new(),
        open: metrics::gauge!("audit_http_connections_open"),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let full_warned: Mutex<Option<Instant>> = Mutex::new(None);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                warn_full(&full_warned, limits.max_connections);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            stream,
            peer,
            Slot::new(slot, &shared),
            shared.clone(),
        ));
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(tcp);
    connections.close();
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            grace = %humantime::format_duration(grace),
            "requests still in flight after http.shutdown_grace: cutting their connections \
             (none of them was answered 202; their clients retry)"
        );
        metrics::counter!("audit_http_connections_cut_total").increment(connections.len() as u64);
        shared.cut.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// A connection's place under `http.max_connections`, given back when it closes.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, shared: &Shared) -> Slot {
        shared.open.increment(1.0);
        Slot {
            _permit: permit,
            open: shared.open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Logs that every slot is taken, at most once a minute.
fn warn_full(last: &Mutex<Option<Instant>>, max: usize) {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        max_connections = max,
        "every connection slot (http.max_connections) is in use: new connections wait in the \
         listen backlog until one closes (raise the bound, or add instances)"
    );
}

/// An `accept()` that failed. Errors of the one connection are skipped; others (out of file
/// descriptors) are logged and waited out briefly instead of spinning, as hyper used to.
async fn accept_failed(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1s");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// One connection, from accept to close; holds its `slot` throughout.
async fn connection(stream: TcpStream, peer: SocketAddr, _slot: Slot, shared: Arc<Shared>) {
    let Some(reloader) = &shared.tls else {
        return http(stream, None, &shared).await;
    };
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(
        shared.limits.header_timeout,
        reloader.acceptor().accept(stream),
    );
    let tls = tokio::select! {
        // Nothing is in flight before the handshake is done: nothing to wait for.
        () = shared.shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                metrics::counter!("audit_tls_handshake_failures_total").increment(1);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not done within http.header_timeout");
                metrics::counter!("audit_tls_handshake_failures_total").increment(1);
                metrics::counter!("audit_http_timeouts_total", "phase" => "header").increment(1);
                return;
            }
        },
    };
    let info = PeerInfo::of(&tls, peer);
    http(tls, Some(info), &shared).await;
}

/// Serves HTTP/1.1 on `io` until the client closes it, a timeout closes it, or shutdown does.
async fn http<I>(io: I, peer: Option<PeerInfo>, shared: &Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(peer) = &peer {
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
        }
        // A router is always ready (it never answers `poll_ready` with anything else).
        app.clone().call(req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut draining = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    if e.is_timeout() {
                        metrics::counter!("audit_http_timeouts_total", "phase" => "header")
                            .increment(1);
                    }
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            // Idle: closes now; busy: closes once its answer is written.
            () = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // Dropping the connection drops its request handler wherever it is.
            () = shared.cut.cancelled() => return,
        }
    }
}
