//! The RecoveryPlan controller: rebuilds a plan's services in priority order.
//!
//! Every reconcile reads the plan, asks the [`planner`](crate::planner) what the order is,
//! advances each started service one step (restore its data, apply its workload, run its
//! checks), starts what the planner says may start now, and writes the status once. It is
//! driven by watches: the plan, and the Deployments, StatefulSets, DaemonSets and Jobs the
//! operator created (found by their `resurgo.dev/plan` label), so a service starts the
//! moment what it waits for is ready. The only timed requeue is a service's timeout.
//!
//! Created objects carry labels, not owner references: deleting a RecoveryPlan must never
//! take the emergency services it rebuilt down with it.

pub(crate) mod desired;
mod outbox;
mod readiness;
mod status;
mod workload;

use outbox::Outbox;

use status::Hold;

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
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
    api::{
        incident::Incident,
        recovery_plan::{
            PlanPhase, RecoveryPlan, RecoveryPlanStatus, Service, ServiceAction, ServicePhase,
            ServiceStatus, Trigger,
        },
    },
    incident,
    labels::{self, FIELD_MANAGER},
    metrics::Metrics,
    operator::{Shared, TriggerBackoff},
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
    /// The restore point last reported per (plan, service) of a `fromBackup` workload.
    restore_points: Mutex<BTreeMap<(String, String), String>>,
    /// The plans this operator reconciles, metadata only, as the Controller's watch sees them.
    plans: Store<PlanMeta>,
    /// Each plan whole, read when its generation changes (see [`current_plan`]).
    specs: Mutex<BTreeMap<String, Arc<RecoveryPlan>>>,
}

/// What the Controller watches of a plan: its metadata. A plan of 1,000 services is about
/// 1 MB of JSON and 13 MB in memory, and every status write sends it back on a watch of
/// whole plans; the spec is read only when the generation says it changed.
type PlanMeta = PartialObjectMeta<RecoveryPlan>;

/// The plans' workloads as their watches last saw them, slimmed (see [`slim`]): what a
/// reconcile needs of them is whether they exist and how ready they are, and that it can
/// read here instead of asking the API server once per service per reconcile.
struct Created {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
}

impl Created {
    /// Whether the caches hold objects of this kind.
    fn holds(kind: &str) -> bool {
        matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet")
    }

    /// The object as a JSON value; `None` when the cache does not have it or does not hold
    /// its kind.
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        fn find<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Value>
        where
            K: Resource<DynamicType = ()> + Clone + serde::Serialize,
        {
            let object = store.get(&ObjectRef::new(name).within(namespace))?;
            serde_json::to_value(&*object).ok()
        }
        let mut object = match kind {
            "Deployment" => find(&self.deployments, namespace, name),
            "StatefulSet" => find(&self.stateful_sets, namespace, name),
            "DaemonSet" => find(&self.daemon_sets, namespace, name),
            _ => None,
        }?;
        object["kind"] = Value::String(kind.to_owned());
        Some(object)
    }
}

/// What a workload cache keeps of an object: its identity, generation, replica count and
/// status, without managedFields, annotations or the pod template, which are most of its
/// size (a whole Deployment is about 20 KB in memory).
trait Slim {
    fn slim(&mut self);
}

impl Slim for Deployment {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for StatefulSet {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
            spec.volume_claim_templates = None;
        }
    }
}

impl Slim for DaemonSet {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

fn slim_metadata(metadata: &mut kube::api::ObjectMeta) {
    metadata.managed_fields = None;
    metadata.annotations = None;
}

/// A watch of `K` objects carrying the plan label, reflected into a store before each
/// change reaches the controller: a reconcile woken by a change finds it in the store.
fn reflected<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // With backoff: a watch refused (403 under too narrow RBAC, an API server restarting)
    // is retried with growing pauses, not in a tight loop that floods the log.
    let stream = watcher(
        Api::<K>::all(client.clone()),
        watcher::Config::default().labels(labels::PLAN),
    )
    .backoff(TriggerBackoff::default())
    .modify(Slim::slim)
    .reflect(writer)
    .touched_objects();
    // On a task of its own: the store is then as fresh as the watch, whether or not the
    // Controller (which runs its reconciles on the same task as its inputs) is busy.
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    tokio::spawn(stream.map(Ok).forward(sender).map(drop));
    (reader, receiver)
}

/// The kind this controller reconciles, as its metrics name it.
const KIND: &str = "RecoveryPlan";

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    let reporter = crate::events::reporter();
    let (deployments, deployment_changes) = reflected::<Deployment>(&client);
    let (stateful_sets, stateful_set_changes) = reflected::<StatefulSet>(&client);
    let (daemon_sets, daemon_set_changes) = reflected::<DaemonSet>(&client);
    let (plans, plan_writer) = reflector::store::<PlanMeta>();
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
        },
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
    let (changes_tx, changes_rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(
        plan_changes
            .map(Ok)
            .forward(changes_tx)
            .map(|_| tracing::debug!("the plans' watch ended")),
    );
    shared.kind_listed(Api::<RecoveryPlan>::all(client.clone()));
    let controller = Controller::for_stream(changes_rx, plans);
    // Until the first lists are in, every workload would look deleted and be rebuilt.
    // They fill as the controller polls their watches, so a reconcile waits, not `run`.
    let stores_ready = async move {
        for ready in [
            deployments.wait_until_ready().await,
            stateful_sets.wait_until_ready().await,
            daemon_sets.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("a workload cache stopped before it was filled");
            }
        }
    }
    .boxed()
    .shared();
    let stopping = shared.shutdown().boxed().shared();
    let ours = watcher::Config::default().labels(labels::PLAN);
    let controller = controller
        .watches_stream(deployment_changes, plan_of)
        .watches_stream(stateful_set_changes, plan_of)
        .watches_stream(daemon_set_changes, plan_of)
        .watches(Api::<Job>::all(client.clone()), ours, plan_of)
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
    let Some(plan) = current_plan(&ctx, &meta).await? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let previous = last_status(&ctx, &plan).await;

    let order = match planner::plan(&plan.spec) {
        Ok(order) => order,
        Err(errors) => {
            // An invalid plan creates nothing: the order it would follow is unknown.
            let status = status::invalid(&plan, &previous, &errors, now);
            if status != previous {
                let message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                publish(&ctx, &plan, EventType::Warning, "InvalidPlan", message);
                write_status(&ctx, &plan, &status).await;
            }
            return Ok(Action::await_change());
        }
    };

    // One service's trouble (an API error, a missing namespace) must not hold the others
    // back: it is noted on the service, the rest goes on, and the reconcile is retried.
    // Services are independent of each other within a reconcile, so their steps run side
    // by side: at a tier boundary hundreds start at once.
    let mut first_error: Option<Error> = None;
    let mut services = known_services(&plan, &previous);
    let started: Vec<(&Service, ServiceStatus)> = plan
        .spec
        .services
        .iter()
        .map(|service| (service, services[&service.name].clone()))
        .filter(|(_, record)| is_started(record.phase))
        .collect();
    let advancing: Vec<_> = started
        .into_iter()
        .map(|(service, mut record)| {
            let ctx = &ctx;
            let plan = &plan;
            async move {
                let result = advance(ctx, plan, service, &mut record, now).await;
                (record, result)
            }
        })
        .collect();
    let advanced = futures::stream::iter(advancing)
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
    let hold = hold(&ctx, &plan, &services).await?;
    if let Some(hold) = hold {
        for service_name in &steps.start {
            let record = services
                .get_mut(service_name)
                .expect("planned services have records");
            record.message = Some(hold.message().into());
        }
    } else {
        // In the planner's order (longest chain first): `buffered` starts them in that order.
        let starting: Vec<(&Service, ServiceStatus)> = steps
            .start
            .iter()
            .take(room)
            .map(|name| (spec_of(&plan, name), services[name].clone()))
            .collect();
        let starting: Vec<_> = starting
            .into_iter()
            .map(|(service, mut record)| {
                let ctx = &ctx;
                let plan = &plan;
                async move {
                    let result = match ready_to_start(ctx, plan, service, &mut record).await {
                        Ok(true) => match start(ctx, plan, service, &mut record, now).await {
                            Ok(()) => advance(ctx, plan, service, &mut record, now).await,
                            Err(error) => Err(error),
                        },
                        Ok(false) => Ok(()),
                        Err(error) => Err(error),
                    };
                    (record, result)
                }
            })
            .collect();
        let started = futures::stream::iter(starting)
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
    for not_blocked in services.values_mut() {
        if !steps.blocked.iter().any(|b| b.service == not_blocked.name) {
            not_blocked.blocked_on.clear();
        }
    }

    let status = status::compute(&plan, &order, &services, &previous, hold, now);
    ctx.metrics.recovery_progress(&plan, &status);
    announce(&ctx, &plan, &previous, &status);
    if status != previous {
        write_status(&ctx, &plan, &status).await;
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok(next_deadline(&plan, &services, now).map_or_else(Action::await_change, Action::requeue))
}

/// The whole plan at (at least) the generation the watch saw, read from the API server
/// when the one kept is older or of an earlier plan of the same name; `None` once deleted.
/// Plans no longer watched are forgotten here.
async fn current_plan(ctx: &Context, meta: &PlanMeta) -> Result<Option<Arc<RecoveryPlan>>, Error> {
    let name = meta.name_any();
    {
        let mut specs = ctx.specs.lock().await;
        specs.retain(|name, _| ctx.plans.get(&ObjectRef::new(name)).is_some());
        if let Some(plan) = specs.get(&name)
            && plan.uid() == meta.uid()
            && plan.metadata.generation >= meta.metadata.generation
        {
            return Ok(Some(plan.clone()));
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
    let plan = Arc::new(plan);
    specs.insert(name, plan.clone());
    Ok(Some(plan))
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
    plan.spec
        .services
        .iter()
        .map(|service| {
            let mut record = previous
                .services
                .iter()
                .find(|s| s.name == service.name)
                .cloned()
                .unwrap_or_else(|| ServiceStatus {
                    name: service.name.clone(),
                    tier: service.tier.clone(),
                    phase: ServicePhase::Pending,
                    blocked_on: Vec::new(),
                    message: None,
                    started: None,
                    ready: None,
                    attempts: 0,
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

fn spec_of<'a>(plan: &'a RecoveryPlan, service: &str) -> &'a Service {
    plan.spec
        .services
        .iter()
        .find(|s| s.name == service)
        .expect("the planner only names services of the plan")
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
/// policies of that namespace, and fresh credentials.
async fn start(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
    record: &mut ServiceStatus,
    now: Timestamp,
) -> Result<(), Error> {
    let plan_name = plan.name_any();
    let namespace = &service.namespace;
    info!(plan = %plan_name, service = %service.name, "starting");

    let apply = PatchParams::apply(FIELD_MANAGER).force();
    if service.action == ServiceAction::Rebuild {
        let ns = desired::namespace(namespace, &plan_name);
        Api::<Namespace>::all(ctx.client.clone())
            .patch(namespace, &apply, &Patch::Apply(&ns))
            .await
            .map_err(kube_error("apply", format!("Namespace {namespace}")))?;
        // Pods are refused until the namespace's `default` ServiceAccount exists, and the
        // Job and ReplicaSet controllers then back off for many seconds. Creating it here
        // (the ServiceAccount controller would, a moment later) removes that wait.
        let default_account = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace)
            .create(&PostParams::default(), &default_account)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => {
                return Err(kube_error(
                    "create",
                    format!("ServiceAccount {namespace}/default"),
                )(error));
            }
        }
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        for policy in desired::network_policies(&plan.spec, &plan_name, namespace) {
            let policy_name = policy.name_any();
            policies
                .patch(&policy_name, &apply, &Patch::Apply(&policy))
                .await
                .map_err(kube_error(
                    "apply",
                    format!("NetworkPolicy {namespace}/{policy_name}"),
                ))?;
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for wanted in &service.regenerate_secrets {
        let existing = secrets.get_opt(&wanted.name).await.map_err(kube_error(
            "read",
            format!("Secret {namespace}/{}", wanted.name),
        ))?;
        // Ours from an earlier attempt: the workload may already use it, keep it. Anything
        // else (restored, planted, left over) is replaced with fresh values.
        if existing.is_some_and(|s| s.labels().get(labels::PLAN) == Some(&plan_name)) {
            continue;
        }
        let secret =
            desired::regenerated_secret(wanted, namespace, &plan_name, &service.name, fill_random);
        secrets
            .patch(&wanted.name, &apply, &Patch::Apply(&secret))
            .await
            .map_err(kube_error(
                "apply",
                format!("Secret {namespace}/{}", wanted.name),
            ))?;
        publish(
            ctx,
            plan,
            EventType::Normal,
            "SecretRegenerated",
            format!(
                "{namespace}/{}: fresh values for {} keys",
                wanted.name,
                wanted.keys.len()
            ),
        );
    }
    record.started = Some(Time(now));
    record.ready = None;
    record.attempts += 1;
    record.blocked_on.clear();
    record.phase = ServicePhase::Deploying;
    record.message = Some("starting".into());
    Ok(())
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
            run_job(ctx, check, namespace, &plan_name, &service.name, "check").await?,
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

/// Creates the Job when it does not exist yet, and says how far it is.
async fn run_job(
    ctx: &Context,
    template: &crate::api::common::JobTemplate,
    namespace: &str,
    plan: &str,
    service: &str,
    part: &str,
) -> Result<readiness::Readiness, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired::job_name(service, &template.name);
    if let Some(job) = jobs
        .get_opt(&name)
        .await
        .map_err(kube_error("read", format!("Job {namespace}/{name}")))?
    {
        return Ok(readiness::of(
            &serde_json::to_value(job).unwrap_or_default(),
        ));
    }
    let job = match desired::job(template, namespace, plan, service, part) {
        Ok(job) => job,
        Err(error) => {
            return Ok(readiness::Readiness::Failed(format!(
                "{part} job {}: the spec is not a valid JobSpec: {error}",
                template.name
            )));
        }
    };
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(readiness::Readiness::Progressing(format!(
            "Job {name} created"
        ))),
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

/// Whether every object of a ready service's workload still exists.
async fn workload_present(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
) -> Result<bool, Error> {
    match manifests(ctx, plan, service).await? {
        Ok(manifests) => workload::present(ctx, &plan.name_any(), service, &manifests).await,
        // Nothing to compare with: not a reason to rebuild.
        Err(_) => Ok(true),
    }
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
    // A new phase (Recovered, Failed, ...) is what `kubectl wait` and the Incident wait for.
    let urgent = previous.is_none_or(|(_, previous)| previous.phase != status.phase);
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
    for service in &status.services {
        let before = previous.services.iter().find(|s| s.name == service.name);
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
