//! `resurgo status` (also `kubectl resurgo status`): where a recovery stands, from the
//! RecoveryPlans' status: tiers with progress bars, what each service does or waits for,
//! and time against each tier's RTO; or, with `--incident`, an incident's timeline and the
//! plans it runs.
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
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, reflector, watcher},
};

use crate::api::{incident::Incident, recovery_plan::RecoveryPlan};

pub use render::{render, render_incident};
pub use view::{IncidentView, PlanView, ServiceView, StepView, TierView};

/// Arguments of `resurgo status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The RecoveryPlan to show; every plan when omitted.
    #[arg(conflicts_with = "incident")]
    pub plan: Option<String>,
    /// Show this Incident instead: its timeline, restore points, tiers against their RTOs,
    /// and the plans it runs (a drill's copies while they exist).
    #[arg(long, value_name = "NAME")]
    pub incident: Option<String>,
    /// Keep following and redraw as the status changes, until Ctrl-C.
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
    /// The view as JSON, one document per line (one per change with --watch): a list of
    /// plans, or one incident.
    Json,
    /// The view as YAML (documents separated by `---` with --watch).
    Yaml,
}

/// Why `resurgo status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no Kubernetes configuration found (in-cluster or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("watching: {0}")]
    Watch(#[from] watcher::Error),
    #[error("writing the status as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("the async runtime could not start: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What the view shows, from what was read.
enum Frame {
    Plans(Vec<PlanView>),
    Incident(Box<IncidentView>),
}

/// Runs `resurgo status` to the end (once, or until Ctrl-C with `--watch`).
pub fn run(args: StatusArgs) -> Result<(), StatusError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = Client::try_default().await.map_err(StatusError::Client)?;
            let plans = Api::<RecoveryPlan>::all(client.clone());
            let incidents = Api::<Incident>::all(client);
            // Fail early and clearly on a name that does not exist.
            let (all_plans, incident) = read(&plans, &incidents, &args).await?;
            if args.watch {
                watch(&plans, &incidents, &args).await
            } else {
                let frame = frame(&args, &all_plans, incident.as_ref());
                print!("{}", encode(&frame, args.output)?);
                Ok(())
            }
        })
}

async fn read(
    plans: &Api<RecoveryPlan>,
    incidents: &Api<Incident>,
    args: &StatusArgs,
) -> Result<(Vec<RecoveryPlan>, Option<Incident>), StatusError> {
    let read_error = |kind| move |source| StatusError::Read { kind, source };
    let all = plans
        .list(&ListParams::default())
        .await
        .map_err(read_error("RecoveryPlans"))?
        .items;
    if let Some(name) = &args.plan
        && !all.iter().any(|p| p.name_any() == *name)
    {
        return Err(StatusError::NotFound {
            kind: "recoveryplan",
            name: name.clone(),
        });
    }
    let incident = match &args.incident {
        Some(name) => Some(
            incidents
                .get_opt(name)
                .await
                .map_err(read_error("Incidents"))?
                .ok_or_else(|| StatusError::NotFound {
                    kind: "incident",
                    name: name.clone(),
                })?,
        ),
        None => None,
    };
    Ok((all, incident))
}

async fn watch(
    plans: &Api<RecoveryPlan>,
    incidents: &Api<Incident>,
    args: &StatusArgs,
) -> Result<(), StatusError> {
    let (plan_store, plan_writer) = reflector::store();
    let (incident_store, incident_writer) = reflector::store();
    let incident_config = watcher::Config::default().fields(&format!(
        "metadata.name={}",
        args.incident.as_deref().unwrap_or("")
    ));
    // Both watches feed one stream; which one spoke does not matter, the frame is redrawn
    // from both caches.
    let plan_events = reflector(
        plan_writer,
        watcher(plans.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .map_ok(|event| (false, matches!(event, watcher::Event::InitDone)));
    let incident_events = reflector(incident_writer, watcher(incidents.clone(), incident_config))
        .default_backoff()
        .map_ok(|event| (true, matches!(event, watcher::Event::InitDone)));
    let mut changes = if args.incident.is_some() {
        futures::stream::select(plan_events, incident_events).boxed()
    } else {
        plan_events.boxed()
    };
    let terminal = args.output == Output::Text && std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(StdDuration::from_secs(1));
    let mut last = String::new();
    // Draw only once the first lists are in, or the first frame would be partial.
    let (mut plans_listed, mut incident_listed) = (false, args.incident.is_none());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            change = changes.try_next() => match change? {
                Some((true, true)) => incident_listed = true,
                Some((false, true)) => plans_listed = true,
                Some(_) => {}
                None => return Ok(()),
            },
            _ = tick.tick(), if terminal => {}
        }
        if !(plans_listed && incident_listed) {
            continue;
        }
        let all: Vec<RecoveryPlan> = plan_store.state().iter().map(|p| (**p).clone()).collect();
        let incident = incident_store.state().first().map(|i| (**i).clone());
        if args.incident.is_some() && incident.is_none() {
            // Deleted while watched: say so once and stop.
            println!(
                "incident {:?} was deleted",
                args.incident.as_deref().unwrap_or("")
            );
            return Ok(());
        }
        let frame = encode(&frame(args, &all, incident.as_ref()), args.output)?;
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

/// The view of what was asked for, at the current time.
fn frame(args: &StatusArgs, plans: &[RecoveryPlan], incident: Option<&Incident>) -> Frame {
    let now = Timestamp::now();
    if let Some(incident) = incident {
        return Frame::Incident(Box::new(IncidentView::of(incident, plans, now)));
    }
    let mut views: Vec<PlanView> = plans
        .iter()
        .filter(|p| args.plan.as_ref().is_none_or(|name| p.name_any() == *name))
        .map(|plan| PlanView::of(plan, now))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Frame::Plans(views)
}

fn encode(frame: &Frame, output: Output) -> Result<String, StatusError> {
    let error = |format: &'static str| {
        move |error: &dyn std::fmt::Display| StatusError::Encode {
            format,
            message: error.to_string(),
        }
    };
    match (frame, output) {
        (Frame::Plans(views), Output::Text) => Ok(render(views)),
        (Frame::Incident(view), Output::Text) => Ok(render::render_incident(view)),
        (Frame::Plans(views), Output::Json) => serde_json::to_string(views)
            .map(|text| text + "\n")
            .map_err(|e| error("JSON")(&e)),
        (Frame::Incident(view), Output::Json) => serde_json::to_string(view)
            .map(|text| text + "\n")
            .map_err(|e| error("JSON")(&e)),
        (Frame::Plans(views), Output::Yaml) => {
            crate::yaml::to_string(views).map_err(|e| error("YAML")(&e))
        }
        (Frame::Incident(view), Output::Yaml) => {
            crate::yaml::to_string(view).map_err(|e| error("YAML")(&e))
        }
    }
}
