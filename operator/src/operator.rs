//! `resurgo run`: the operator process. Logs, a client from the environment (in-cluster
//! service account or KUBECONFIG), the admin server (metrics and health), optionally the
//! leader Lease, and the controllers until SIGTERM or Ctrl-C.
//!
//! Every controller is an `async fn run(shared: Shared)` listed in [`controllers`]: they
//! start together once this replica leads, and all get the same [`Shared`]: the client,
//! the label selector, the metrics and the shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use clap::ValueEnum;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{Controller, WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, fmt};

use crate::{
    admin::{self, Health, Role},
    api::recovery_plan::RecoveryPlan,
    leader::{self, Elector, LeaseConfig},
    metrics::Metrics,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The options of `resurgo run`.
#[derive(Clone, Debug)]
pub struct Options {
    pub log_format: LogFormat,
    /// Only Resurgo objects matching this label selector are reconciled.
    pub selector: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// `Some` to run the controllers only while holding this Lease.
    pub leader_election: Option<LeaseOptions>,
}

/// Which Lease to campaign for.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub name: String,
    /// The client's default namespace when `None` (the pod's own, in a cluster).
    pub namespace: Option<String>,
    pub duration: Duration,
}

/// Why the operator could not start, or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Kubernetes configuration found (in-cluster or KUBECONFIG): {0}")]
    Client(#[from] kube::Error),
    #[error("the async runtime could not start: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the selector {selector:?} is refused: {source}")]
    Selector {
        selector: String,
        source: kube::Error,
    },
    #[error("lost leadership: {0}")]
    Lost(#[from] leader::Lost),
}

/// The pause between retries of a controller's watches, for `Controller::trigger_backoff`.
///
/// kube-runtime puts one backoff in front of *all* the watches of a controller, and its
/// default only forgets earlier errors after 120 s without one. After a kube-apiserver
/// restart every watch fails once more with `410 Expired` before it re-lists, so with the
/// default each of a controller's watches doubled the pause of all of them, and a recovery
/// stood still for minutes while the cluster was back (tests/tests/chaos.rs shows it). Here
/// the pause grows from 100 ms to at most 2 s, and any event received resets it: a dead API
/// server is still retried gently, and one that is back is followed within a second or two.
#[derive(Clone, Debug)]
pub struct TriggerBackoff {
    next: Duration,
}

impl TriggerBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(2);
}

impl Default for TriggerBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        Some(pause)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Drives a watch on a task of its own and hands its changes to a Controller through a
/// channel, without its errors.
///
/// The watch retries by itself (with [`TriggerBackoff`]), so its errors are only logged
/// here. Passed on, they would queue in the channel while the API server is away, and a
/// Controller pauses its triggers after every error it reads (up to 2 s each): after an
/// API server restart, the queued errors held every reconcile back for about 30 s.
pub fn spawn_watch<K: Send + 'static>(
    watch: impl Into<String>,
    changes: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> futures::channel::mpsc::UnboundedReceiver<Result<K, watcher::Error>> {
    let watch: String = watch.into();
    let ended = watch.clone();
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    let changes = changes.filter_map(move |change| {
        futures::future::ready(match change {
            Ok(object) => Some(Ok(Ok(object))),
            Err(error) => {
                warn!(%error, %watch, "watch failed; retrying");
                None
            }
        })
    });
    tokio::spawn(
        changes
            .forward(sender)
            .map(move |_| tracing::debug!(watch = %ended, "watch ended")),
    );
    receiver
}

/// What `resurgo run` hands every controller. Cloning it is cheap.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    /// The metrics every controller updates (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
    selector: Option<String>,
    health: Arc<Health>,
    /// The controller this copy was made for (see [`Shared::kind_listed`]).
    controller: &'static str,
    stop: watch::Receiver<bool>,
}

impl Shared {
    /// The watch configuration for the Resurgo kind a controller reconciles: it carries
    /// `--selector`, so that several operators can share a cluster without reconciling the
    /// same objects. Objects the operator creates are found by their own labels instead.
    /// `--selector`, if any: the label selector of the Resurgo objects this operator handles.
    pub fn selector(&self) -> Option<&str> {
        self.selector.as_deref()
    }

    pub fn watch_config(&self) -> watcher::Config {
        let config = watcher::Config::default();
        match &self.selector {
            Some(selector) => config.labels(selector),
            None => config,
        }
    }

    /// A Controller for the Resurgo kind `K`, watched with [`Shared::watch_config`].
    ///
    /// Its watch is driven by a task of its own rather than by the Controller: a Controller
    /// holds the reconciles it has queued until its store is filled, and stopping stops
    /// polling its inputs, so one stopped in the first moments (a SIGTERM while starting)
    /// would wait forever for a store nothing fills any more.
    pub fn controller<K>(&self, api: Api<K>) -> Controller<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = reflector::store();
        let changes = watcher(api, self.watch_config())
            .backoff(TriggerBackoff::default())
            .reflect(writer)
            .applied_objects();
        Controller::for_stream(spawn_watch(K::kind(&()), changes), reader)
    }

    /// Completes when the operator stops: pass it to `Controller::graceful_shutdown_on`.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut stop = self.stop.clone();
        async move {
            // An error means the sender is gone, which only happens when the process ends.
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }

    /// Reports this controller ready on `/readyz` once the kind it reconciles has been
    /// listed in full with [`Shared::watch_config`], as its Controller lists it at start (so
    /// permissions and selector work). A watch of its own: waiting on the Controller's
    /// Store would take the Store's only wake-up away from the Controller, which waits on it
    /// too.
    pub fn kind_listed<K>(&self, api: Api<K>)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let health = self.health.clone();
        let name = self.controller;
        let config = self.watch_config();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(watcher::Event::InitDone)) => break health.controller_ready(name),
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.wait_for(|stopped| *stopped) => break,
                }
            }
        });
    }

    /// A copy for the controller `name`, which [`Shared::kind_listed`] will report ready.
    fn for_controller(&self, name: &'static str) -> Self {
        self.health.expect_controller(name);
        Self {
            controller: name,
            ..self.clone()
        }
    }
}

/// Every controller. They start together, under the leader Lease when there is one, and
/// stop together. Adding a controller is adding its line here.
fn controllers(shared: &Shared) -> Vec<BoxFuture<'static, ()>> {
    vec![
        crate::recovery::run(shared.for_controller("recovery")).boxed(),
        crate::backup::run_backup::run(shared.for_controller("backup")).boxed(),
        crate::backup::schedule::run(shared.for_controller("backup-schedule")).boxed(),
        crate::backup::probe::run(shared.for_controller("backup-store")).boxed(),
        crate::access::run(shared.for_controller("access")).boxed(),
        crate::incident::run(shared.for_controller("incident")).boxed(),
    ]
}

/// How long in-flight reconciles may take to finish after SIGTERM: less than the chart's
/// terminationGracePeriodSeconds (30), so the Lease is released before the kubelet kills.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the operator until it is told to stop.
pub fn run(options: Options) -> Result<(), StartError> {
    // RUST_LOG overrides; by default our own crate at info and the libraries at warn.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,resurgo=info"));
    let subscriber = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match options.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(operate(options))
}

async fn operate(options: Options) -> Result<(), StartError> {
    let client = Client::try_default().await?;
    if let Some(selector) = &options.selector {
        // A selector the API server refuses would only show as a watch failing forever.
        Api::<RecoveryPlan>::all(client.clone())
            .list_metadata(&ListParams::default().labels(selector).limit(1))
            .await
            .map_err(|source| StartError::Selector {
                selector: selector.clone(),
                source,
            })?;
    }
    // Before /healthz answers: a SIGTERM from then on stops the operator cleanly.
    let signal = shutdown_signal();
    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        info!("stopping");
        let _ = stop_sender.send(true);
    });
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: options.metrics_addr,
            source,
        })?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(admin::serve(listener, metrics.clone(), health.clone()));

    let shared = Shared {
        client: client.clone(),
        metrics: metrics.clone(),
        selector: options.selector.clone(),
        health: health.clone(),
        controller: "",
        stop,
    };
    tracing::info!(selector = ?options.selector, "resurgo operator started");

    let elector = match &options.leader_election {
        None => None,
        Some(lease) => {
            let config = LeaseConfig {
                name: lease.name.clone(),
                namespace: lease
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                identity: leader::identity(),
                duration: lease.duration,
            };
            let elector = Arc::new(Elector::new(client.clone(), config));
            health.set_role(Role::Standby);
            tokio::select! {
                () = elector.acquire() => {}
                () = shared.shutdown() => {
                    info!("resurgo operator stopped before it led");
                    return Ok(());
                }
            }
            Some(elector)
        }
    };
    health.set_role(Role::Leading);
    metrics.set_leader(true);

    // Leadership lost means another replica may already be acting: stop at once, and let
    // the kubelet restart this one as a standby. Every step is idempotent, so a reconcile
    // cut short is finished by the new leader.
    let (lost_sender, mut lost) = tokio::sync::mpsc::channel(1);
    let holder = elector.clone().map(|elector| {
        tokio::spawn(async move {
            let _ = lost_sender.send(elector.hold().await).await;
        })
    });

    // Stopped before anything started: a kube-runtime Controller given a shutdown that
    // already happened would wait forever for its first list.
    let stopping = *shared.stop.borrow();
    let all = futures::future::join_all(if stopping {
        Vec::new()
    } else {
        controllers(&shared)
    });
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => {}
        Some(why) = lost.recv() => {
            error!(%why, "lost leadership: exiting");
            return Err(StartError::Lost(why));
        }
        () = shared.shutdown() => {
            // A kube-runtime Controller stopped before its first list is in may never
            // return: it holds its reconciles until its cache is ready, and the watch that
            // fills it stops with the shutdown. Before every controller has listed its kind
            // nothing is in flight, so they are dropped; after, in-flight reconciles get
            // SHUTDOWN_GRACE to finish (a reconcile cut short is resumed by the next leader).
            if health.controllers_ready() {
                tokio::select! {
                    _ = &mut all => {}
                    Some(why) = lost.recv() => {
                        error!(%why, "lost leadership: exiting");
                        return Err(StartError::Lost(why));
                    }
                    () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                        warn!("reconciles still running after {SHUTDOWN_GRACE:?}: stopping anyway");
                    }
                }
            }
        }
    }
    health.set_role(Role::Stopping);
    metrics.set_leader(false);
    if let (Some(holder), Some(elector)) = (holder, elector) {
        holder.abort();
        let _ = holder.await;
        elector.release().await;
    }
    tracing::info!("resurgo operator stopped");
    Ok(())
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. In-flight reconciles then
/// finish; every step they take is idempotent, so one cut short resumes on the next start.
/// SIGTERM is caught from the moment this is called, not from the first poll.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn watch_retries_back_off_to_two_seconds_and_start_over_after_an_event() {
        let mut backoff = TriggerBackoff::default();
        let pauses: Vec<u128> = backoff.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }

    #[tokio::test]
    async fn a_spawned_watch_passes_its_changes_on_but_not_its_errors() {
        // Errors reaching a Controller pause all of its triggers; the watch retries anyway.
        let changes = futures::stream::iter([
            Ok(1),
            Err(watcher::Error::NoResourceVersion),
            Err(watcher::Error::NoResourceVersion),
            Ok(2),
        ]);
        let received: Vec<u32> = spawn_watch("test", changes)
            .map(|change| change.expect("no error is passed on"))
            .collect()
            .await;
        assert_eq!(received, [1, 2]);
    }
}
