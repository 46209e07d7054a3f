//! `resurgo run`: the operator process. Logs, a client from the environment (in-cluster
//! service account or KUBECONFIG), and the controllers until SIGTERM or Ctrl-C.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Kubernetes configuration found (in-cluster or KUBECONFIG): {0}")]
    Client(#[from] kube::Error),
    #[error("the async runtime could not start: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs the operator until it is told to stop.
pub fn run(log_format: LogFormat) -> Result<(), StartError> {
    // RUST_LOG overrides; by default our own crate at info and the libraries at warn.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,resurgo=info"));
    let subscriber = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = kube::Client::try_default().await?;
            tracing::info!("resurgo operator started");
            // One signal for every controller: each finishes its in-flight reconciles.
            let shutdown = futures::FutureExt::shared(Box::pin(shutdown_signal()));
            tokio::join!(
                crate::recovery::run(client.clone(), shutdown.clone()),
                crate::backup::run(client.clone(), shutdown.clone()),
                crate::access::run(client.clone(), shutdown.clone()),
                crate::incident::run(client, shutdown),
            );
            tracing::info!("resurgo operator stopped");
            Ok(())
        })
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. In-flight reconciles then
/// finish; every step they take is idempotent, so one cut short resumes on the next start.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
