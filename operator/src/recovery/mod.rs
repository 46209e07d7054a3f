//! The RecoveryPlan controller: rebuilds a plan's services in priority order.
//!
//! Every reconcile takes the plan and its order (planned once per generation), advances
//! each started service one step (restore its data, apply its workload, run its checks),
//! starts what the planner says may start now, prepares the namespaces of the services
//! next in line, and hands the status to the [`outbox`]. It is driven by watches: the
//! plan, and every object the operator created (found by its `resurgo.dev/plan` label),
//! so a service starts the moment what it waits for is ready, and is rebuilt the moment
//! one of its objects is deleted. The watches fill caches that a reconcile reads instead
//! of the API server. The only timed requeue is a service's timeout.
//!
//! Created objects carry labels, not owner references: deleting a RecoveryPlan must never
//! take the emergency services it rebuilt down with it.

mod caches;
pub(crate) mod desired;
mod outbox;
mod prepare;
mod readiness;
mod status;
mod workload;

use caches::{Created, reflected};
use outbox::Outbox;
use prepare::{Preparation, prepare, prepare_ahead};

use status::Hold;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration as StdDuration,
};

use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, PartialObjectMeta, PostParams},
    core::ApiResource,
    discovery::Scope,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Event, EventType},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    api::common::WrittenSecret,
    api::{
        incident::Incident,
        recovery_plan::{
            PlanPhase, RecoveryPlan, RecoveryPlanStatus, Service, ServiceAction, ServicePhase,
            ServiceStatus, Trigger,
        },
    },
    backup::dump_restore,
    credentials, incident, labels,
    metrics::Metrics,
    operator::{Shared, TriggerBackoff, spawn_watch},
    planner::{self, ServiceProgress},
    yaml,
};

/// How long a service may take when its readiness sets no timeout.
const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(30 * 60);
/// `maxParallel` when the plan sets none.
const DEFAULT_MAX_PARALLEL: u32 = 10;
/// How many services a reconcile moves on at once; each makes a few API requests.
const SERVICES_IN_FLIGHT: usize = 16;

/// What a reconcile could not do. Each variant names the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
}

fn kube_error(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> Error {
    let object = object.into();
    move |source| Error::Kube {
        action,
        object,
        source,
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    /// Events and status writes, delivered in the background (see [`outbox`]).
    outbox: Outbox,
    metrics: Arc<Metrics>,
    /// API resources of the kinds found in workloads, discovered once each.
    kinds: Mutex<BTreeMap<String, (ApiResource, Scope)>>,
    /// The last status computed per plan, with the plan's uid (see [`last_status`]).
    written: Mutex<BTreeMap<String, (Option<String>, RecoveryPlanStatus)>>,
    /// The workloads the operator created, as its watches last saw them: a ready service is
    /// checked against these on every reconcile, which would otherwise cost a read per
    /// object per ready service.
    created: Created,
    /// What each ready service's workload is made of, per (plan, service), for the plan's
    /// uid and generation it was read at (see [`workload_present`]).
    identities: std::sync::Mutex<HashMap<(String, String), Identities>>,
    /// The finished restore Jobs whose dump URLs were removed (see [`forget_dump_urls`]).
    forgotten: std::sync::Mutex<HashSet<(String, String)>>,
    /// The restore point last reported per (plan, service) of a `fromBackup` workload.
    restore_points: Mutex<BTreeMap<(String, String), String>>,
    /// The plans this operator reconciles, metadata only, as the Controller's watch sees them.
    plans: Store<PlanMeta>,
    /// Each plan whole, read when its generation changes, with its order (see
    /// [`current_plan`]).
    specs: Mutex<BTreeMap<String, Arc<Known>>>,
}

/// A plan at one generation and what the planner made of it: both change only with the
/// spec, and planning 1,000 services on every reconcile would cost more than the rest of it.
struct Known {
    plan: RecoveryPlan,
    order: Result<planner::RecoveryOrder, Vec<planner::PlanError>>,
    /// The services whose namespace was prepared ahead of their turn (see [`prepare_ahead`]),
    /// or is being prepared; for this generation, whose policies it applied.
    prepared: std::sync::Mutex<HashMap<String, Preparation>>,
}

/// What the Controller watches of a plan: its metadata. A plan of 1,000 services is about
/// 1 MB of JSON and 13 MB in memory, and every status write sends it back on a watch of
/// whole plans; the spec is read only when the generation says it changed.
type PlanMeta = PartialObjectMeta<RecoveryPlan>;

/// The kind this controller reconciles, as its metrics name it.
const KIND: &str = "RecoveryPlan";

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    let reporter = crate::events::reporter();
    let (deployments, deployment_changes) = reflected::<Deployment>(&client);
    let (stateful_sets, stateful_set_changes) = reflected::<StatefulSet>(&client);
    let (daemon_sets, daemon_set_changes) = reflected::<DaemonSet>(&client);
    let (jobs, job_changes) = reflected::<Job>(&client);
    let (plans, plan_writer) = reflector::store::<PlanMeta>();
    let (lost, lost_plans) = futures::channel::mpsc::unbounded();
    let context = Arc::new(Context {
        client: client.clone(),
        outbox: Outbox::start(client.clone(), reporter),
        metrics: shared.metrics.clone(),
        kinds: Mutex::default(),
        written: Mutex::default(),
        created: Created {
            deployments: deployments.clone(),
            stateful_sets: stateful_sets.clone(),
            daemon_sets: daemon_sets.clone(),
            jobs: jobs.clone(),
            others: Default::default(),
            client: client.clone(),
            lost,
        },
        identities: Default::default(),
        forgotten: Default::default(),
        restore_points: Mutex::default(),
        plans: plans.clone(),
        specs: Mutex::default(),
    });
    // The plans' metadata, without managedFields (never read), and only when their spec
    // changes: the status is this operator's own (see `last_status`), so its writes need no
    // reconcile.
    let plan_changes = watcher(Api::<PlanMeta>::all(client.clone()), shared.watch_config())
        .backoff(TriggerBackoff::default())
        .modify(|plan| plan.managed_fields_mut().clear())
        .reflect(plan_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Driven by a task of its own, not by the Controller: the Controller holds the
    // reconciles it has queued until this store is filled, and a Controller stopping stops
    // polling its inputs; stopped early, it would wait for the store forever.
    let changes_rx = spawn_watch(KIND, plan_changes);
    shared.kind_listed(Api::<PlanMeta>::all(client.clone()));
    let controller = Controller::for_stream(changes_rx, plans);
    // Until the first lists are in, every workload would look deleted and be rebuilt.
    // They fill as the controller polls their watches, so a reconcile waits, not `run`.
    let stores_ready = async move {
        for ready in [
            deployments.wait_until_ready().await,
            stateful_sets.wait_until_ready().await,
            daemon_sets.wait_until_ready().await,
            jobs.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("a workload cache stopped before it was filled");
            }
        }
    }
    .boxed()
    .shared();
    let stopping = shared.shutdown().boxed().shared();
    let controller = controller
        .watches_stream(deployment_changes, plan_of)
        .watches_stream(stateful_set_changes, plan_of)
        .watches_stream(daemon_set_changes, plan_of)
        .reconcile_on(lost_plans)
        .watches_stream(job_changes, plan_of)
        // An incident reaching its Recover step starts the plans it names (`trigger: Incident`).
        .watches(
            Api::<Incident>::all(client),
            watcher::Config::default(),
            |incident| {
                incident
                    .spec
                    .recovery_plans
                    .iter()
                    .map(|name| ObjectRef::new(name))
                    .collect::<Vec<_>>()
            },
        )
        // Retries after an API server restart are quick (see `TriggerBackoff`).
        .trigger_backoff(TriggerBackoff::default())
        .graceful_shutdown_on(shared.shutdown());
    let reconciles = controller
        .run(
            move |plan, ctx| {
                let stores_ready = stores_ready.clone();
                let stopping = stopping.clone();
                async move {
                    // A stop stops the watches that would fill the stores: a reconcile
                    // still waiting for them then would hold the shutdown up forever.
                    tokio::select! {
                        () = stores_ready => reconcile(plan, ctx).await,
                        () = stopping => Ok(Action::await_change()),
                    }
                }
            },
            error_policy,
            context,
        )
        .for_each(|result| async move {
            match result {
                Ok((plan, _)) => tracing::debug!(plan = %plan.name, "reconciled"),
                // A workload of a plan this operator does not watch (see `--selector`).
                Err(controller::Error::ObjectNotFound(plan)) => {
                    tracing::debug!(%plan, "not one of this operator's plans")
                }
                Err(error) => warn!(%error, "reconcile failed"),
            }
        });
    reconciles.await;
}

fn plan_of<K: Resource>(object: K) -> Option<ObjectRef<PlanMeta>> {
    object
        .labels()
        .get(labels::PLAN)
        .map(|name| ObjectRef::new(name))
}

fn error_policy(plan: Arc<PlanMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(KIND);
    warn!(plan = %plan.name_any(), %error, "will retry");
    Action::requeue(StdDuration::from_secs(5))
}

async fn reconcile(meta: Arc<PlanMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(KIND);
    let Some(known) = current_plan(&ctx, &meta).await? else {
        return Ok(Action::await_change());
    };
    let plan = &known.plan;
    let now = Timestamp::now();
    let previous = last_status(&ctx, plan).await;

    let order = match &known.order {
        Ok(order) => order,
        Err(errors) => {
            // An invalid plan creates nothing: the order it would follow is unknown.
            let status = status::invalid(plan, &previous, errors, now);
            if status != previous {
                let message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                publish(&ctx, plan, EventType::Warning, "InvalidPlan", message);
                write_status(&ctx, plan, &status).await;
            }
            return Ok(Action::await_change());
        }
    };

    // One service's trouble (an API error, a missing namespace) must not hold the others
    // back: it is noted on the service, the rest goes on, and the reconcile is retried.
    // Services are independent of each other within a reconcile, so their steps run side
    // by side: at a tier boundary hundreds start at once.
    let mut first_error: Option<Error> = None;
    let mut services = known_services(plan, &previous);
    // By index: the steps are made as the stream reaches them (a thousand made up front
    // were the largest memory of a reconcile, each with room for every request it may
    // make), and a stream of borrowed services would not be `Send` for every lifetime.
    let started: Vec<(usize, ServiceStatus)> = plan
        .spec
        .services
        .iter()
        .enumerate()
        .map(|(index, service)| (index, services[&service.name].clone()))
        .filter(|(_, record)| is_started(record.phase))
        .collect();
    let advanced = futures::stream::iter(started)
        .map(|(index, mut record)| {
            let ctx = &ctx;
            let service = &plan.spec.services[index];
            async move {
                let result = advance(ctx, plan, service, &mut record, now).await;
                (record, result)
            }
        })
        .buffer_unordered(SERVICES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for (mut record, result) in advanced {
        if let Err(error) = result {
            record.message = Some(format!("will retry: {error}"));
            first_error.get_or_insert(error);
        }
        services.insert(record.name.clone(), record);
    }

    let steps = order.next_steps(&progress(&services));
    let running = services
        .values()
        .filter(|s| is_started(s.phase) && s.phase != ServicePhase::Ready)
        .count();
    let room =
        (plan.spec.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL) as usize).saturating_sub(running);
    let hold = hold(&ctx, plan, &services).await?;
    if let Some(hold) = hold {
        for service_name in &steps.start {
            let record = services
                .get_mut(service_name)
                .expect("planned services have records");
            record.message = Some(hold.message().into());
        }
    } else {
        // In the planner's order (longest chain first): `buffered` starts them in that order.
        let index: HashMap<&str, usize> = plan
            .spec
            .services
            .iter()
            .enumerate()
            .map(|(index, service)| (service.name.as_str(), index))
            .collect();
        let starting: Vec<(usize, ServiceStatus)> = steps
            .start
            .iter()
            .take(room)
            .map(|name| (index[name.as_str()], services[name].clone()))
            .collect();
        let started = futures::stream::iter(starting)
            .map(|(index, mut record)| {
                let ctx = &ctx;
                let known = &known;
                let service = &plan.spec.services[index];
                async move {
                    let result = match ready_to_start(ctx, plan, service, &mut record).await {
                        Ok(true) => match start(ctx, known, service, &mut record, now).await {
                            Ok(true) => advance(ctx, plan, service, &mut record, now).await,
                            Ok(false) => Ok(()),
                            Err(error) => Err(error),
                        },
                        Ok(false) => Ok(()),
                        Err(error) => Err(error),
                    };
                    (record, result)
                }
            })
            .buffered(SERVICES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (mut record, result) in started {
            if let Err(error) = result {
                record.message = Some(format!("will retry: {error}"));
                first_error.get_or_insert(error);
            }
            services.insert(record.name.clone(), record);
        }
    }
    for blocked in &steps.blocked {
        let record = services
            .get_mut(&blocked.service)
            .expect("planned services have records");
        record.blocked_on = blocked.on.iter().map(ToString::to_string).collect();
        record.phase = if blocked.behind_failure {
            ServicePhase::Blocked
        } else {
            ServicePhase::Pending
        };
        record.message = Some(if blocked.behind_failure {
            format!(
                "given up: waits for {} which cannot become ready",
                record.blocked_on.join(", ")
            )
        } else {
            format!("waits for {}", record.blocked_on.join(", "))
        });
    }
    if hold.is_none() {
        prepare_ahead(&ctx, &known, &steps, &services);
    }
    let blocked: HashSet<&str> = steps.blocked.iter().map(|b| b.service.as_str()).collect();
    for not_blocked in services.values_mut() {
        if !blocked.contains(not_blocked.name.as_str()) {
            not_blocked.blocked_on.clear();
        }
    }

    let status = status::compute(plan, order, &services, &previous, hold, now);
    ctx.metrics.recovery_progress(plan, &status);
    announce(&ctx, plan, &previous, &status);
    if status != previous {
        write_status(&ctx, plan, &status).await;
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok(next_deadline(plan, &services, now).map_or_else(Action::await_change, Action::requeue))
}

/// The whole plan at (at least) the generation the watch saw, read from the API server
/// when the one kept is older or of an earlier plan of the same name; `None` once deleted.
/// Plans no longer watched are forgotten here.
async fn current_plan(ctx: &Context, meta: &PlanMeta) -> Result<Option<Arc<Known>>, Error> {
    let name = meta.name_any();
    {
        let mut specs = ctx.specs.lock().await;
        specs.retain(|name, _| ctx.plans.get(&ObjectRef::new(name)).is_some());
        if let Some(known) = specs.get(&name)
            && known.plan.uid() == meta.uid()
            && known.plan.metadata.generation >= meta.metadata.generation
        {
            return Ok(Some(known.clone()));
        }
    }
    let found = Api::<RecoveryPlan>::all(ctx.client.clone())
        .get_opt(&name)
        .await
        .map_err(kube_error("read", format!("RecoveryPlan {name}")))?;
    let mut specs = ctx.specs.lock().await;
    let Some(mut plan) = found else {
        specs.remove(&name);
        return Ok(None);
    };
    plan.metadata.managed_fields = None;
    let order = planner::plan(&plan.spec);
    let known = Arc::new(Known {
        plan,
        order,
        prepared: Default::default(),
    });
    specs.insert(name, known.clone());
    Ok(Some(known))
}

/// Why nothing may start now, if so: the plan is paused, or it waits for an incident.
async fn hold(
    ctx: &Context,
    plan: &RecoveryPlan,
    services: &BTreeMap<String, ServiceStatus>,
) -> Result<Option<Hold>, Error> {
    if plan.spec.paused {
        return Ok(Some(Hold::Paused));
    }
    // Once a rebuild has begun it goes on, even if the incident is later deleted.
    let begun = services.values().any(|s| s.started.is_some());
    if plan.spec.trigger != Trigger::Incident || begun {
        return Ok(None);
    }
    let name = plan.name_any();
    let incidents = Api::<Incident>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "Incidents"))?;
    let started = incidents
        .items
        .iter()
        .any(|i| incident::starts_plan(i, &name));
    Ok((!started).then_some(Hold::WaitingForIncident))
}

/// The services as the last status left them, in plan order; a spec change gives failed
/// services another chance.
fn known_services(
    plan: &RecoveryPlan,
    previous: &RecoveryPlanStatus,
) -> BTreeMap<String, ServiceStatus> {
    let retry_failed = previous.observed_generation != plan.metadata.generation;
    let before = by_name(&previous.services);
    plan.spec
        .services
        .iter()
        .map(|service| {
            let mut record = before
                .get(service.name.as_str())
                .map(|record| (*record).clone())
                .unwrap_or_else(|| ServiceStatus {
                    name: service.name.clone(),
                    tier: service.tier.clone(),
                    phase: ServicePhase::Pending,
                    blocked_on: Vec::new(),
                    message: None,
                    started: None,
                    ready: None,
                    attempts: 0,
                    regenerated_secrets: Vec::new(),
                });
            record.tier = service.tier.clone();
            if retry_failed && record.phase == ServicePhase::Failed {
                record.phase = ServicePhase::Pending;
                record.message = Some("the plan changed: trying again".into());
            }
            (service.name.clone(), record)
        })
        .collect()
}

fn is_started(phase: ServicePhase) -> bool {
    matches!(
        phase,
        ServicePhase::RestoringData
            | ServicePhase::Deploying
            | ServicePhase::Verifying
            | ServicePhase::Ready
    )
}

fn progress(services: &BTreeMap<String, ServiceStatus>) -> BTreeMap<String, ServiceProgress> {
    services
        .iter()
        .filter_map(|(name, record)| {
            let progress = match record.phase {
                ServicePhase::Ready => ServiceProgress::Ready,
                ServicePhase::Failed => ServiceProgress::Failed,
                phase if is_started(phase) => ServiceProgress::Started,
                _ => return None,
            };
            Some((name.clone(), progress))
        })
        .collect()
}

/// The services of a status by name: status lists are walked once per reconcile, not once
/// per service.
fn by_name(services: &[ServiceStatus]) -> HashMap<&str, &ServiceStatus> {
    services.iter().map(|s| (s.name.as_str(), s)).collect()
}

/// Whether the service's workload can be had; if not, the service fails before anything of
/// it (namespace, policies, credentials) is made.
async fn ready_to_start(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
    record: &mut ServiceStatus,
) -> Result<bool, Error> {
    if service.action != ServiceAction::Rebuild {
        return Ok(true);
    }
    Ok(match manifests(ctx, plan, service).await? {
        Ok(_) => true,
        Err(message) => {
            record.phase = ServicePhase::Failed;
            record.attempts += 1;
            record.message = Some(message);
            false
        }
    })
}

/// Prepares the ground for a service that may start: its hardened namespace, the network
/// policies of that namespace (unless made ahead, see [`prepare_ahead`]), and fresh
/// credentials. Returns whether it started: a credential that cannot be replaced fails it.
async fn start(
    ctx: &Context,
    known: &Known,
    service: &Service,
    record: &mut ServiceStatus,
    now: Timestamp,
) -> Result<bool, Error> {
    let plan = &known.plan;
    let plan_name = plan.name_any();
    info!(plan = %plan_name, service = %service.name, "starting");

    // Prepared ahead of its turn, the first time only: a rebuild after a loss prepares
    // again, since the namespace may be what was lost.
    let prepared = record.attempts == 0
        && known
            .prepared
            .lock()
            .expect("never poisoned")
            .get(&service.name)
            == Some(&Preparation::Done);
    let written = record.regenerated_secrets.clone();
    // Every credential is tried even when something else fails: a write that succeeded is
    // recorded, and not made again at the retry.
    let credentials = futures::future::join_all(
        service
            .regenerate_secrets
            .iter()
            .map(|wanted| regenerate(ctx, plan, service, wanted, &written, now)),
    );
    let (prepared, credentials) = if service.action == ServiceAction::Rebuild && !prepared {
        futures::future::join(prepare(ctx, plan, service), credentials).await
    } else {
        (Ok(()), credentials.await)
    };
    let mut first_error = prepared.err();
    let mut refused = Vec::new();
    for result in credentials {
        match result {
            Ok(Ok(written)) => credentials::remember(&mut record.regenerated_secrets, written),
            Ok(Err(why)) => refused.push(why),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    // One record per Secret the service still lists.
    record.regenerated_secrets.retain(|r| {
        r.namespace == service.namespace
            && service.regenerate_secrets.iter().any(|w| w.name == r.name)
    });
    if let Some(error) = first_error {
        return Err(error);
    }
    if !refused.is_empty() {
        // Never run on a credential that may be anyone's.
        record.phase = ServicePhase::Failed;
        record.attempts += 1;
        record.message = Some(refused.join("; "));
        return Ok(false);
    }
    record.started = Some(Time(now));
    record.ready = None;
    record.attempts += 1;
    record.blocked_on.clear();
    record.phase = ServicePhase::Deploying;
    record.message = Some("starting".into());
    Ok(true)
}

/// Gives a Secret the service lists in `regenerateSecrets` fresh random values, unless it
/// is, unchanged, what this plan wrote (`written`, from the service's status). Anything
/// else there (restored, planted, left over, or ours and changed since) is replaced whole.
/// Returns the record of the Secret as it now stands, or why it cannot be replaced.
async fn regenerate(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
    wanted: &crate::api::recovery_plan::RegeneratedSecret,
    written: &[WrittenSecret],
    now: Timestamp,
) -> Result<Result<WrittenSecret, String>, Error> {
    let plan_name = plan.name_any();
    let namespace = &service.namespace;
    let object = format!("Secret {namespace}/{}", wanted.name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = secrets
        .get_opt(&wanted.name)
        .await
        .map_err(kube_error("read", object.clone()))?;
    // Ours from an earlier attempt: the workload may already use it, keep it.
    if let Some(found) = &existing
        && let Some(record) = credentials::own_write(written, &found.metadata)
    {
        return Ok(Ok(record.clone()));
    }
    let secret =
        desired::regenerated_secret(wanted, namespace, &plan_name, &service.name, fill_random);
    let result = credentials::write(&secrets, existing.as_ref(), &secret, now)
        .await
        .map_err(kube_error("regenerate", object.clone()))?;
    match &result {
        Ok(_) => publish(
            ctx,
            plan,
            EventType::Normal,
            "SecretRegenerated",
            format!(
                "{namespace}/{}: fresh values for {} keys",
                wanted.name,
                wanted.keys.len()
            ),
        ),
        Err(refused) => publish(
            ctx,
            plan,
            EventType::Warning,
            "SecretRefused",
            format!("{object} {refused}"),
        ),
    }
    Ok(result.map_err(|refused| format!("{object} {refused}")))
}

fn fill_random(buffer: &mut [u8]) {
    // The operating system's generator; without it no credential can be made safely.
    getrandom::fill(buffer).expect("the operating system's random generator is available");
}

/// Moves a started service one step on: data restore, workload, checks, ready. Each step
/// looks at the cluster first, so repeating it changes nothing.
async fn advance(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
    record: &mut ServiceStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let plan_name = plan.name_any();
    let namespace = &service.namespace;

    if record.phase == ServicePhase::Ready {
        if service.action == ServiceAction::Rebuild && !workload_present(ctx, plan, service).await?
        {
            // Rebuilt like the first time: the planner decides when, after its dependencies.
            record.phase = ServicePhase::Pending;
            record.message = Some("its objects disappeared: rebuilding".into());
            publish(
                ctx,
                plan,
                EventType::Warning,
                "ServiceLost",
                format!("{}: objects disappeared; it will be rebuilt", service.name),
            );
        }
        return Ok(());
    }

    let timeout = service
        .readiness
        .as_ref()
        .and_then(|r| r.timeout.as_ref())
        .and_then(|t| t.to_std().ok())
        .unwrap_or(DEFAULT_TIMEOUT);
    if let Some(started) = &record.started {
        let elapsed = StdDuration::try_from(now.duration_since(started.0)).unwrap_or_default();
        if elapsed > timeout {
            record.phase = ServicePhase::Failed;
            let last = record.message.take().unwrap_or_default();
            record.message = Some(format!(
                "not ready within its timeout of {}s: {last}",
                timeout.as_secs()
            ));
            return Ok(());
        }
    }

    if service.action == ServiceAction::Rebuild {
        if let Some(template) = &service.data_restore {
            let restore = run_job(
                ctx,
                template,
                namespace,
                &plan_name,
                &service.name,
                "restore",
                // Taken from a backup: the Job gets the backup's data dumps.
                service
                    .workload
                    .as_ref()
                    .is_some_and(|w| w.from_backup.is_some())
                    .then_some((plan, service)),
            )
            .await?;
            if !reached(record, restore, ServicePhase::RestoringData) {
                return Ok(());
            }
        }
        let manifests = match manifests(ctx, plan, service).await? {
            Ok(manifests) => manifests,
            Err(message) => {
                reached(
                    record,
                    readiness::Readiness::Failed(message),
                    ServicePhase::Failed,
                );
                return Ok(());
            }
        };
        if !reached(
            record,
            workload::apply(ctx, &plan_name, service, &manifests).await?,
            ServicePhase::Deploying,
        ) {
            return Ok(());
        }
    }

    let checks = service
        .readiness
        .as_ref()
        .map(|r| r.checks.as_slice())
        .unwrap_or_default();
    for check in checks {
        if !reached(
            record,
            run_job(
                ctx,
                check,
                namespace,
                &plan_name,
                &service.name,
                "check",
                None,
            )
            .await?,
            ServicePhase::Verifying,
        ) {
            return Ok(());
        }
    }

    record.phase = ServicePhase::Ready;
    record.ready = Some(Time(now));
    record.message = Some("ready".into());
    Ok(())
}

/// Records where a step stands; true when it is done and the next step may run.
fn reached(record: &mut ServiceStatus, step: readiness::Readiness, waiting: ServicePhase) -> bool {
    let (phase, message) = match step {
        readiness::Readiness::Ready => return true,
        readiness::Readiness::Progressing(message) => (waiting, message),
        readiness::Readiness::Failed(message) => (ServicePhase::Failed, message),
    };
    record.phase = phase;
    record.message = Some(message);
    false
}

/// Creates the Job when it does not exist yet, and says how far it is. The restore Job of
/// a `fromBackup` service (`dumps`) gets download URLs for the chosen backup's data dumps,
/// removed once it is done.
async fn run_job(
    ctx: &Context,
    template: &crate::api::common::JobTemplate,
    namespace: &str,
    plan: &str,
    service: &str,
    part: &str,
    dumps: Option<(&RecoveryPlan, &Service)>,
) -> Result<readiness::Readiness, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired::job_name(service, &template.name);
    // From the cache, which the Job's watch fills before it wakes the reconcile; a Job it
    // has not seen yet is refused as existing below, and then read.
    if let Some(job) = ctx.created.get("Job", namespace, &name) {
        let state = readiness::of(&job);
        if dumps.is_some() && !matches!(state, readiness::Readiness::Progressing(_)) {
            forget_dump_urls(ctx, namespace, &name).await?;
        }
        return Ok(state);
    }
    let mut dump_urls = None;
    if let Some((whole, of)) = dumps {
        match dump_restore::prepare(&ctx.client, whole, of, template, &name, namespace)
            .await
            .map_err(kube_error(
                "sign the dump URLs of",
                format!("Job {namespace}/{name}"),
            ))? {
            Ok(source) => dump_urls = source,
            Err(message) => {
                return Ok(readiness::Readiness::Failed(format!(
                    "{part} job {}: no data dumps to give it: {message}",
                    template.name
                )));
            }
        }
    }
    let mut job = match desired::job(template, namespace, plan, service, part) {
        Ok(job) => job,
        Err(error) => {
            return Ok(readiness::Readiness::Failed(format!(
                "{part} job {}: the spec is not a valid JobSpec: {error}",
                template.name
            )));
        }
    };
    if let (Some(source), Some(spec)) = (&dump_urls, job.spec.as_mut()) {
        dump_restore::add_env_from(spec, source);
    }
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(readiness::Readiness::Progressing(format!(
            "Job {name} created"
        ))),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let job = jobs
                .get(&name)
                .await
                .map_err(kube_error("read", format!("Job {namespace}/{name}")))?;
            Ok(readiness::of(
                &serde_json::to_value(job).unwrap_or_default(),
            ))
        }
        // The API server checks the JobSpec: a rejection is the plan's fault, not a retry.
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => Ok(
            readiness::Readiness::Failed(format!("Job {name} was rejected: {}", status.message)),
        ),
        // Only a Verify service runs Jobs in a namespace it did not create: what it should
        // verify is not there.
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(readiness::Readiness::Failed(
            format!("namespace {namespace} does not exist: there is nothing to verify"),
        )),
        Err(error) => Err(kube_error("create", format!("Job {namespace}/{name}"))(
            error,
        )),
    }
}

/// Removes the dump download URLs of a finished restore Job, once per Job while this
/// operator runs (again after a restart: deleting what is gone costs one request).
async fn forget_dump_urls(ctx: &Context, namespace: &str, job: &str) -> Result<(), Error> {
    let key = (namespace.to_owned(), job.to_owned());
    if ctx.forgotten.lock().expect("never poisoned").contains(&key) {
        return Ok(());
    }
    dump_restore::forget(&ctx.client, namespace, job)
        .await
        .map_err(kube_error(
            "remove the dump URLs of",
            format!("Job {namespace}/{job}"),
        ))?;
    ctx.forgotten.lock().expect("never poisoned").insert(key);
    Ok(())
}

/// The manifests of a service's workload, or why they cannot be had (a plan problem the
/// status reports, not an error to retry), naming the field that points at the source.
async fn manifests(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
) -> Result<Result<Vec<Value>, String>, Error> {
    Ok(read_manifests(ctx, plan, service)
        .await?
        .map_err(|message| {
            let index = plan
                .spec
                .services
                .iter()
                .position(|s| s.name == service.name)
                .unwrap_or_default();
            let field = service.workload.as_ref().map_or("", |w| {
                if w.from_backup.is_some() {
                    ".fromBackup"
                } else if w.config_map_ref.is_some() {
                    ".configMapRef"
                } else if w.secret_ref.is_some() {
                    ".secretRef"
                } else {
                    ".manifests"
                }
            });
            format!("spec.services[{index}].workload{field}: {message}")
        }))
}

async fn read_manifests(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
) -> Result<Result<Vec<Value>, String>, Error> {
    let Some(workload) = &service.workload else {
        return Ok(Ok(Vec::new()));
    };
    if let Some(manifests) = &workload.manifests {
        return Ok(Ok(manifests.clone()));
    }
    if let Some(from) = &workload.from_backup {
        let plan_name = plan.name_any();
        let restored = crate::backup::restore::objects(&ctx.client, plan, service, from)
            .await
            .map_err(kube_error(
                "restore from a backup",
                format!("service {}", service.name),
            ))?;
        return Ok(match restored {
            Ok((objects, description)) => {
                let key = (plan_name.clone(), service.name.clone());
                let new = ctx.restore_points.lock().await.get(&key) != Some(&description);
                if new {
                    info!(plan = %plan_name, service = %service.name, %description, "restore point");
                    publish(
                        ctx,
                        plan,
                        EventType::Normal,
                        "RestorePointChosen",
                        format!("{}: {description}", service.name),
                    );
                    ctx.restore_points.lock().await.insert(key, description);
                }
                Ok(objects)
            }
            Err(message) => Err(message),
        });
    }
    let (source, texts) = if let Some(source) = &workload.config_map_ref {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &source.namespace);
        let found = api.get_opt(&source.name).await.map_err(kube_error(
            "read",
            format!("ConfigMap {}/{}", source.namespace, source.name),
        ))?;
        let Some(config_map) = found else {
            return Ok(Err(format!(
                "ConfigMap {}/{} not found",
                source.namespace, source.name
            )));
        };
        (source, config_map.data.unwrap_or_default())
    } else if let Some(source) = &workload.secret_ref {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &source.namespace);
        let found = api.get_opt(&source.name).await.map_err(kube_error(
            "read",
            format!("Secret {}/{}", source.namespace, source.name),
        ))?;
        let Some(secret) = found else {
            return Ok(Err(format!(
                "Secret {}/{} not found",
                source.namespace, source.name
            )));
        };
        let texts = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, bytes)| (key, String::from_utf8_lossy(&bytes.0).into_owned()))
            .collect();
        (source, texts)
    } else {
        return Ok(Ok(Vec::new()));
    };
    let mut out = Vec::new();
    for (key, text) in texts {
        if !source.keys.is_empty() && !source.keys.contains(&key) {
            continue;
        }
        match yaml::documents(&text) {
            Ok(documents) => out.extend(documents),
            Err(error) => {
                return Ok(Err(format!(
                    "{}/{} key {key}: not YAML manifests: {error}",
                    source.namespace, source.name
                )));
            }
        }
    }
    Ok(Ok(out))
}

/// A service's workload objects, with the plan uid and generation they were read at.
type Identities = (Option<String>, Option<i64>, Arc<Vec<workload::Identity>>);

/// Whether every object of a ready service's workload still exists.
///
/// What the workload is made of is read once per plan generation: reading it again (from a
/// ConfigMap, a backup, or a copy of the inline manifests) for every ready service on every
/// reconcile would cost more than the whole rest of a reconcile at 1,000 services.
async fn workload_present(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
) -> Result<bool, Error> {
    let key = (plan.name_any(), service.name.clone());
    let (uid, generation) = (plan.uid(), plan.metadata.generation);
    let known = ctx
        .identities
        .lock()
        .expect("never poisoned")
        .get(&key)
        .filter(|(u, g, _)| *u == uid && *g == generation)
        .map(|(_, _, identities)| identities.clone());
    let identities = match known {
        Some(identities) => identities,
        None => {
            let manifests = match manifests(ctx, plan, service).await? {
                Ok(manifests) => manifests,
                // Nothing to compare with: not a reason to rebuild.
                Err(_) => return Ok(true),
            };
            let Some(identities) =
                workload::identities(ctx, &plan.name_any(), service, &manifests).await?
            else {
                return Ok(true);
            };
            let identities = Arc::new(identities);
            ctx.identities
                .lock()
                .expect("never poisoned")
                .insert(key, (uid, generation, identities.clone()));
            identities
        }
    };
    workload::present(ctx, &plan.name_any(), &service.name, &identities).await
}

/// When the earliest running service times out, so that its failure is noticed on time.
fn next_deadline(
    plan: &RecoveryPlan,
    services: &BTreeMap<String, ServiceStatus>,
    now: Timestamp,
) -> Option<StdDuration> {
    plan.spec
        .services
        .iter()
        .filter_map(|service| {
            let record = &services[&service.name];
            if !is_started(record.phase) || record.phase == ServicePhase::Ready {
                return None;
            }
            let timeout = service
                .readiness
                .as_ref()
                .and_then(|r| r.timeout.as_ref())
                .and_then(|t| t.to_std().ok())
                .unwrap_or(DEFAULT_TIMEOUT);
            let elapsed = StdDuration::try_from(now.duration_since(record.started.as_ref()?.0))
                .unwrap_or_default();
            Some(timeout.saturating_sub(elapsed) + StdDuration::from_millis(100))
        })
        .min()
}

/// Records the status as this operator's truth and queues it for writing.
async fn write_status(ctx: &Context, plan: &RecoveryPlan, status: &RecoveryPlanStatus) {
    let name = plan.name_any();
    let previous = ctx
        .written
        .lock()
        .await
        .insert(name.clone(), (plan.uid(), status.clone()));
    // A new phase of the plan (Recovered, Failed, ...) is what `kubectl wait` and the
    // Incident wait for; a new phase of a tier is the milestone `kubectl get` and
    // `resurgo status` show. Neither waits for the pause between writes.
    let phases = |status: &RecoveryPlanStatus| {
        (
            status.phase,
            status.tiers.iter().map(|t| t.phase).collect::<Vec<_>>(),
        )
    };
    // A new record of a regenerated Secret is not held back either: until it is written, a
    // restarted operator would not know the Secret as its own and would regenerate it.
    fn records(status: &RecoveryPlanStatus) -> impl Iterator<Item = &[WrittenSecret]> {
        status
            .services
            .iter()
            .map(|s| s.regenerated_secrets.as_slice())
    }
    let urgent = previous.as_ref().is_none_or(|(_, previous)| {
        phases(previous) != phases(status) || records(previous).ne(records(status))
    });
    ctx.outbox.status(name, plan.uid(), status.clone(), urgent);
}

/// The status this operator last computed for the plan, or the plan's own when it computed
/// none (since it started, or for an earlier plan of the same name). A reconcile is handed
/// the plan from the watch cache, which lags behind the status writes (and those are made
/// in the background): trusting it would start services a second time. Only this operator
/// writes the status, so its own last one is the truth.
async fn last_status(ctx: &Context, plan: &RecoveryPlan) -> RecoveryPlanStatus {
    match ctx.written.lock().await.get(&plan.name_any()) {
        Some((uid, status)) if *uid == plan.uid() => status.clone(),
        _ => plan.status.clone().unwrap_or_default(),
    }
}

fn publish(ctx: &Context, plan: &RecoveryPlan, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Recover".into(),
        secondary: None,
    };
    ctx.outbox.event(event, plan.object_ref(&()));
}

/// One Event per transition: a service started, became ready, failed or is blocked behind a
/// failure; a tier finished; the plan recovered.
fn announce(
    ctx: &Context,
    plan: &RecoveryPlan,
    previous: &RecoveryPlanStatus,
    status: &RecoveryPlanStatus,
) {
    let previous_services = by_name(&previous.services);
    for service in &status.services {
        let before = previous_services.get(service.name.as_str());
        let (was, was_attempts) = before.map_or((None, 0), |s| (Some(s.phase), s.attempts));
        if was == Some(service.phase) && was_attempts == service.attempts {
            continue;
        }
        let message = service.message.clone().unwrap_or_default();
        let (type_, reason) = match service.phase {
            ServicePhase::Ready => (EventType::Normal, "ServiceReady"),
            ServicePhase::Failed => (EventType::Warning, "ServiceFailed"),
            ServicePhase::Blocked => (EventType::Warning, "ServiceBlocked"),
            ServicePhase::Pending => continue,
            _ if was_attempts != service.attempts => (EventType::Normal, "ServiceStarted"),
            ServicePhase::RestoringData => (EventType::Normal, "RestoringData"),
            ServicePhase::Verifying => (EventType::Normal, "Verifying"),
            ServicePhase::Deploying => continue,
        };
        publish(
            ctx,
            plan,
            type_,
            reason,
            format!("{} (tier {}): {message}", service.name, service.tier),
        );
    }
    for tier in &status.tiers {
        let before = previous
            .tiers
            .iter()
            .find(|t| t.name == tier.name)
            .map(|t| t.phase);
        if before != Some(tier.phase) && tier.phase == PlanPhase::Recovered {
            publish(
                ctx,
                plan,
                EventType::Normal,
                "TierRecovered",
                format!(
                    "tier {} is ready (RTO {}: {:?})",
                    tier.name, tier.rto_target, tier.rto
                ),
            );
        }
    }
    if let Some(phase) = status.phase.filter(|phase| previous.phase != Some(*phase)) {
        let type_ = if matches!(phase, PlanPhase::Failed | PlanPhase::Degraded) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let ready = status.ready.clone().unwrap_or_default();
        publish(
            ctx,
            plan,
            type_,
            &format!("Plan{phase:?}"),
            format!("{ready} services ready"),
        );
    }
}
