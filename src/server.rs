//! The operations HTTP server: `/metrics`, `/healthz` and `/readyz`.
//!
//! This module owns the HTTP side of observability and nothing else: what is
//! measured lives in [`crate::metrics`], what "ready" means in
//! [`crate::health`]. The listener is bound before anything else is served so
//! that a port conflict fails start-up with a message naming the address,
//! instead of a background task dying unnoticed.
//!
//! It also carries [`probe`], a minimal HTTP/1.1 client for a
//! `firstseen healthcheck` command: the distroless runtime image has no
//! shell, curl or wget, so a container `HEALTHCHECK` must run the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::health::Health;
use crate::metrics::{Metrics, TEXT_CONTENT_TYPE};

/// Errors of the operations server and of [`probe`].
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for /metrics and health (is another process using the port? set `metrics.listen` to another address): {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("metrics/health server on {addr} failed: {source}")]
    Serve {
        /// The bound address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A probe could not get an answer.
    #[error("probe of http://{addr}{path} failed: {reason}")]
    Probe {
        /// The probed address.
        addr: SocketAddr,
        /// The probed path.
        path: String,
        /// What went wrong (connection, timeout, status).
        reason: String,
    },
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A bound, not yet serving, operations server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
}

/// The routes, for embedding or testing without a socket.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    s.metrics.record_health(&s.health.report());
    match s.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

async fn healthz_handler() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz_handler(State(s): State<AppState>) -> Response {
    let report = s.health.report();
    let code = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

impl Server {
    /// Binds `addr`.
    ///
    /// # Errors
    /// [`ServerError::Bind`] naming the address when it cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Server {
            listener,
            addr,
            router: router(metrics, health),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish.
    ///
    /// # Errors
    /// [`ServerError::Serve`] on an I/O error of the listener.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = self.addr;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServerError::Serve { addr, source })
    }
}

/// Binds `addr` and serves until `shutdown` completes.
///
/// # Errors
/// [`ServerError::Bind`] if the address cannot be bound (returned before
/// anything is served), [`ServerError::Serve`] on a listener I/O error.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::bind(addr, metrics, health)
        .await?
        .run(shutdown)
        .await
}

/// GETs `http://addr{path}` and succeeds on a 2xx status, within `timeout`.
/// For a `firstseen healthcheck` command in images without curl.
///
/// # Errors
/// [`ServerError::Probe`] on connection failure, timeout or non-2xx status.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ServerError> {
    let fail = |reason: String| ServerError::Probe {
        addr,
        path: path.to_string(),
        reason,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        // The status line is all we need; cap the read so a misbehaving
        // peer cannot make the probe buffer without bound.
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            fail(format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            ))
        })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(fail(format!("status {status}")))
    }
}
