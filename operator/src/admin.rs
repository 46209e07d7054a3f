//! The admin HTTP server of `resurgo run` (`--metrics-addr`): `/metrics`, `/healthz` and
//! `/readyz`, and the [`Health`] they report.
//!
//! - `/healthz` answers 200 while the process serves requests: the liveness probe. A
//!   replica that lost its Lease exits instead of reporting unhealthy, so the kubelet
//!   restarts it either way.
//! - `/readyz` answers 200 when this replica is doing its job: it is a standby waiting for
//!   the Lease, or it leads and every controller has listed the kind it reconciles. It
//!   answers 503 while it starts (before the first Lease attempt, or before those lists are
//!   in) and while it stops.
//!   A standby is ready on purpose: the operator serves no traffic, readiness only tells a
//!   rollout that the new pod is up, and a rollout that waited for a standby to lead would
//!   never finish.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::metrics::Metrics;

/// What this replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not yet known whether it leads.
    Starting,
    /// Another replica holds the Lease; this one waits to take over.
    Standby,
    /// It runs the controllers.
    Leading,
    /// It is shutting down.
    Stopping,
}

/// The state `/readyz` reports.
pub struct Health {
    inner: Mutex<HealthState>,
}

struct HealthState {
    role: Role,
    /// Per controller: whether its caches are filled.
    controllers: BTreeMap<&'static str, bool>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Mutex::new(HealthState {
                role: Role::Starting,
                controllers: BTreeMap::new(),
            }),
        }
    }
}

impl Health {
    pub fn set_role(&self, role: Role) {
        self.lock().role = role;
    }

    /// A controller that will report [`Health::controller_ready`].
    pub fn expect_controller(&self, name: &'static str) {
        self.lock().controllers.insert(name, false);
    }

    /// The controller's caches are filled: it acts on what it sees.
    pub fn controller_ready(&self, name: &'static str) {
        self.lock().controllers.insert(name, true);
    }

    /// Whether every controller has filled its caches.
    pub fn controllers_ready(&self) -> bool {
        self.lock().controllers.values().all(|ready| *ready)
    }

    /// Whether `/readyz` says 200, and why not.
    pub fn ready(&self) -> Result<(), String> {
        let state = self.lock();
        match state.role {
            Role::Starting => Err("starting".into()),
            Role::Stopping => Err("stopping".into()),
            Role::Standby => Ok(()),
            Role::Leading => {
                let waiting: Vec<&str> = state
                    .controllers
                    .iter()
                    .filter(|(_, ready)| !**ready)
                    .map(|(name, _)| *name)
                    .collect();
                if waiting.is_empty() {
                    Ok(())
                } else {
                    Err(format!("kinds not listed yet: {}", waiting.join(", ")))
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                debug!(%error, "admin server: accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(request.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin server: connection failed");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match health.ready() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from valid parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_ready_and_a_leader_only_once_its_controllers_listed_their_kinds() {
        let health = Health::default();
        health.expect_controller("recovery");
        assert!(health.ready().is_err(), "starting");
        health.set_role(Role::Standby);
        assert_eq!(health.ready(), Ok(()));
        health.set_role(Role::Leading);
        assert_eq!(health.ready(), Err("kinds not listed yet: recovery".into()));
        health.controller_ready("recovery");
        assert_eq!(health.ready(), Ok(()));
        health.set_role(Role::Stopping);
        assert!(health.ready().is_err());
    }

    #[test]
    fn endpoints_answer_with_their_status() {
        let metrics = Metrics::new();
        let health = Health::default();
        assert_eq!(
            respond("/readyz", &metrics, &health).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond("/healthz", &metrics, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond("/metrics", &metrics, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond("/nope", &metrics, &health).status(),
            StatusCode::NOT_FOUND
        );
    }
}
