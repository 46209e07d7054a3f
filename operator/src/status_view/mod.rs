//! `resurgo status` (also `kubectl resurgo status`): where a recovery stands, from the
//! RecoveryPlans' status: tiers with progress bars, what each service does or waits for,
//! and time against each tier's RTO.
//!
//! `--watch` follows a watch on the plans and redraws on every change; in a terminal it also
//! redraws once a second so elapsed times move. Not in a terminal, it prints a new frame only
//! when the text changed, so logs stay readable. `-o json|yaml` prints the same model.

mod render;
mod view;

use std::{io::IsTerminal, time::Duration as StdDuration};

use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{WatchStreamExt, reflector, watcher},
};

use crate::api::recovery_plan::RecoveryPlan;

pub use render::render;
pub use view::{PlanView, ServiceView, TierView};

/// Arguments of `resurgo status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The RecoveryPlan to show; every plan when omitted.
    pub plan: Option<String>,
    /// Keep following the plans and redraw as their status changes, until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

/// How `resurgo status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Progress bars and one line per service.
    Text,
    /// The view as JSON, one document per line (one per change with --watch).
    Json,
    /// The view as YAML (documents separated by `---` with --watch).
    Yaml,
}

/// Why `resurgo status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no Kubernetes configuration found (in-cluster or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("reading RecoveryPlans: {0}")]
    Read(#[source] kube::Error),
    #[error("recoveryplan {0:?} not found")]
    NotFound(String),
    #[error("watching RecoveryPlans: {0}")]
    Watch(#[from] watcher::Error),
    #[error("writing the status as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("the async runtime could not start: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs `resurgo status` to the end (once, or until Ctrl-C with `--watch`).
pub fn run(args: StatusArgs) -> Result<(), StatusError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = Client::try_default().await.map_err(StatusError::Client)?;
            let api = Api::<RecoveryPlan>::all(client);
            if args.watch {
                watch(&api, &args).await
            } else {
                let plans = read(&api, args.plan.as_deref()).await?;
                print!("{}", encode(&views(&plans), args.output)?);
                Ok(())
            }
        })
}

async fn read(
    api: &Api<RecoveryPlan>,
    name: Option<&str>,
) -> Result<Vec<RecoveryPlan>, StatusError> {
    match name {
        Some(name) => api
            .get_opt(name)
            .await
            .map_err(StatusError::Read)?
            .map(|plan| vec![plan])
            .ok_or_else(|| StatusError::NotFound(name.to_owned())),
        None => Ok(api
            .list(&ListParams::default())
            .await
            .map_err(StatusError::Read)?
            .items),
    }
}

async fn watch(api: &Api<RecoveryPlan>, args: &StatusArgs) -> Result<(), StatusError> {
    // Fail early and clearly on a plan name that does not exist.
    read(api, args.plan.as_deref()).await?;
    let config = match &args.plan {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default(),
    };
    let (store, writer) = reflector::store();
    let mut changes = reflector(writer, watcher(api.clone(), config))
        .default_backoff()
        .boxed();
    let terminal = args.output == Output::Text && std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(StdDuration::from_secs(1));
    let mut last = String::new();
    // Draw only once the first list is in, or the first frame would show a partial list.
    let mut listed = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            change = changes.try_next() => match change? {
                Some(watcher::Event::InitDone) => listed = true,
                Some(_) => {}
                None => return Ok(()),
            },
            _ = tick.tick(), if terminal => {}
        }
        if !listed {
            continue;
        }
        let plans: Vec<RecoveryPlan> = store.state().iter().map(|p| (**p).clone()).collect();
        let frame = encode(&views(&plans), args.output)?;
        if frame == last {
            continue;
        }
        if terminal {
            // Home the cursor and clear the screen: the frame replaces the previous one.
            print!("\x1b[H\x1b[2J{frame}");
        } else {
            match args.output {
                Output::Yaml if !last.is_empty() => print!("---\n{frame}"),
                Output::Text if !last.is_empty() => print!("\n{frame}"),
                _ => print!("{frame}"),
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        last = frame;
    }
}

/// The views of `plans`, sorted by name, at the current time.
fn views(plans: &[RecoveryPlan]) -> Vec<PlanView> {
    let now = Timestamp::now();
    let mut views: Vec<PlanView> = plans.iter().map(|plan| PlanView::of(plan, now)).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

fn encode(views: &[PlanView], output: Output) -> Result<String, StatusError> {
    match output {
        Output::Text => Ok(render(views)),
        Output::Json => serde_json::to_string(views)
            .map(|text| text + "\n")
            .map_err(|error| StatusError::Encode {
                format: "JSON",
                message: error.to_string(),
            }),
        Output::Yaml => crate::yaml::to_string(&views).map_err(|error| StatusError::Encode {
            format: "YAML",
            message: error.to_string(),
        }),
    }
}
