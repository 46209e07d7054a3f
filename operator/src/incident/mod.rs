//! The Incident controller: one declarative switch that runs a recovery (or a drill of it)
//! step by step, recording each step in `status.timeline`.
//!
//! A Real incident, in order: **Lockdown** (the named AccessPolicies report Lockdown; the
//! access controller treats a policy named by an open Real incident as locked down),
//! **FreezePruning** (every BackupSchedule reports pruning frozen while a Real incident is
//! open), **InvalidateServiceAccountTokens** (when `invalidateServiceAccountTokens` names
//! namespaces: their ServiceAccounts are re-created, see [`tokens`]), **ChooseRestorePoints** (per service restoring from a backup: the newest clean one
//! before `compromisedSince`, or the one named), **Recover** (plans with `trigger: Incident`
//! start now; the step ends when every named plan is recovered) and **RotateCredentials**
//! (every credential the plans regenerate must be newer than the compromise; older ones get
//! fresh values). Setting `state: Closed` runs **LiftLockdown** and **UnfreezePruning**.
//!
//! A Drill rebuilds copies of the plans in prefixed namespaces (see [`drill`]), records the
//! time to ready per tier against its RTO, and deletes the copies (**CleanUp**).
//!
//! Steps are decided by pure code ([`timeline`], [`checks`]); this module reads what they
//! need, does what they ask and writes the status. A finished step is never run again.

pub mod checks;
pub mod drill;
pub mod timeline;
pub mod tokens;

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::{Namespace, Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions,
    },
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{Mutex, OnceCell};
use tracing::warn;

use self::{
    checks::{Act, Observed, SecretToRotate},
    timeline::Step,
    tokens::Reissue,
};
use crate::{
    api::common::{NamespacedRef, WrittenSecret},
    api::{
        access_policy::AccessPolicy,
        backup::Backup,
        backup_schedule::BackupSchedule,
        incident::{
            ChosenRestorePoint, Incident, IncidentMode, IncidentPhase, IncidentState,
            IncidentStatus, ReissuedServiceAccount, RestorePointRule, StepState, TokenInvalidation,
        },
        recovery_plan::{RecoveryPlan, ServiceAction},
    },
    backup,
    conditions::conditions,
    credentials,
    labels::{self, FIELD_MANAGER},
    metrics::Metrics,
    operator::Shared,
};

/// Annotation telling people when the operator last gave a Secret fresh values. Never read:
/// what counts is the operator's record in `status.rotatedSecrets` (see [`credentials`]).
pub const ROTATED_AT: &str = "resurgo.dev/rotated-at";

/// How many act-then-look rounds one reconcile makes before leaving the rest to the
/// watches: each round is one step's action.
const MAX_ROUNDS: usize = 4;

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
    #[error("{object} {reason}")]
    Refused { object: String, reason: String },
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
    recorder: crate::events::Recorder,
    metrics: Arc<Metrics>,
    /// The last status written per incident, with its uid: the watch cache can lag behind
    /// it, and a step must not start twice.
    written: Mutex<BTreeMap<String, (Option<String>, IncidentStatus)>>,
    /// The operator's own ServiceAccount (None when it runs as another kind of user),
    /// asked of the API server once: its tokens are never invalidated.
    operator: OnceCell<Option<NamespacedRef>>,
}

/// What an action wrote that the incident's status must record, even when a later write
/// of the same action failed.
#[derive(Default)]
struct Records {
    /// Credentials given fresh values.
    secrets: Vec<WrittenSecret>,
    /// ServiceAccounts recorded before their re-creation, or re-created.
    service_accounts: Vec<ReissuedServiceAccount>,
}

impl Records {
    fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.service_accounts.is_empty()
    }
}

/// Whether `incident` lets a plan with `trigger: Incident` start: a Real incident naming the
/// plan that has reached its Recover step (open, or closed after reaching it).
pub fn starts_plan(incident: &Incident, plan: &str) -> bool {
    incident.spec.mode == IncidentMode::Real
        && incident.spec.recovery_plans.iter().any(|p| p == plan)
        && incident
            .status
            .as_ref()
            .is_some_and(|s| s.timeline.iter().any(|e| e.step == Step::Recover.name()))
}

/// Whether `incident` is a Real incident still open: it holds its AccessPolicies in
/// Lockdown and backup pruning frozen.
pub fn is_open_real(incident: &Incident) -> bool {
    incident.spec.mode == IncidentMode::Real && incident.spec.state == IncidentState::Open
}

/// Runs the controller until `shutdown` completes.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    let reporter = crate::events::reporter();
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: crate::events::Recorder::new(client.clone(), reporter),
        metrics: shared.metrics.clone(),
        written: Mutex::default(),
        operator: OnceCell::new(),
    });
    let controller = shared.controller(Api::<Incident>::all(client.clone()));
    let incidents = controller.store();
    shared.kind_listed(Api::<Incident>::all(client.clone()));
    let naming_policy = incidents.clone();
    let naming_plan = incidents.clone();
    let all_open = incidents.clone();
    let all_open_backups = incidents.clone();
    let cleaning = incidents.clone();
    controller
        .watches(
            Api::<AccessPolicy>::all(client.clone()),
            watcher::Config::default(),
            move |policy| {
                let name = policy.name_any();
                refs(&naming_policy, move |i| {
                    i.spec.access_policies.contains(&name)
                })
            },
        )
        // Metadata only: every status write of a 1,000-service plan is a 1 MB object, and
        // what a trigger needs is its name and labels.
        .watches(
            Api::<PartialObjectMeta<RecoveryPlan>>::all(client.clone()),
            watcher::Config::default(),
            move |plan| {
                // A drill's copy belongs to its incident; a real plan to those naming it.
                let name = plan.name_any();
                let owner = plan.labels().get(labels::INCIDENT).cloned();
                refs(&naming_plan, move |i| {
                    owner.as_deref() == Some(&i.name_any()) || i.spec.recovery_plans.contains(&name)
                })
            },
        )
        .watches(
            Api::<BackupSchedule>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                refs(&all_open, |i| {
                    i.status.as_ref().and_then(|s| s.phase) != Some(IncidentPhase::Closed)
                })
            },
        )
        .watches(
            Api::<Backup>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                refs(&all_open_backups, |i| {
                    !step_done(i, Step::ChooseRestorePoints)
                })
            },
        )
        .watches(
            Api::<Namespace>::all(client),
            watcher::Config::default().labels(labels::PLAN),
            move |_| refs(&cleaning, |i| running(i, Step::CleanUp)),
        )
        .trigger_backoff(crate::operator::TriggerBackoff::default())
        .graceful_shutdown_on(shared.shutdown())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((incident, _)) => tracing::debug!(incident = %incident.name, "reconciled"),
                Err(error) => warn!(%error, "incident reconcile failed"),
            }
        })
        .await;
}

fn refs(store: &Store<Incident>, wanted: impl Fn(&Incident) -> bool) -> Vec<ObjectRef<Incident>> {
    store
        .state()
        .iter()
        .filter(|i| wanted(i))
        .map(|i| ObjectRef::from_obj(&**i))
        .collect()
}

fn step_state(incident: &Incident, step: Step) -> Option<StepState> {
    incident
        .status
        .as_ref()?
        .timeline
        .iter()
        .find(|e| e.step == step.name())
        .map(|e| e.state)
}

fn step_done(incident: &Incident, step: Step) -> bool {
    step_state(incident, step) == Some(StepState::Done)
}

fn running(incident: &Incident, step: Step) -> bool {
    step_state(incident, step) == Some(StepState::Running)
}

fn error_policy(incident: Arc<Incident>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed("Incident");
    warn!(incident = %incident.name_any(), %error, "will retry");
    Action::requeue(StdDuration::from_secs(5))
}

async fn reconcile(incident: Arc<Incident>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("Incident");
    let previous = last_status(&ctx, &incident).await;
    let mut status = previous.clone();
    for _ in 0..MAX_ROUNDS {
        let now = Timestamp::now();
        let observed = observe(&ctx, &incident, &status).await?;
        let advance = timeline::advance(&incident.spec, &status, now, |step, status| {
            checks::check(step, &incident, status, &observed)
        });
        let mut next = advance.status;
        if next.restore_points.is_empty()
            && let Some(points) = observed.restore_points.clone()
            && next.timeline.iter().any(|e| {
                e.step == Step::ChooseRestorePoints.name() && e.state != StepState::Running
            })
        {
            next.restore_points = points;
        }
        let measured = match incident.spec.mode {
            IncidentMode::Real => checks::tier_results(observed.plans.iter()),
            IncidentMode::Drill => checks::tier_results(observed.copies.iter()),
        };
        // Once a drill's copies are gone, what was measured stays.
        if !measured.is_empty() {
            next.tiers = measured;
        }
        finish(&incident, &mut next, now);
        for transition in &advance.transitions {
            let type_ = if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(
                &ctx,
                &incident,
                type_,
                &transition.reason,
                transition.note.clone(),
            )
            .await;
        }
        if next != status {
            write_status(&ctx, &incident, &next).await?;
            status = next;
        }
        let Some(action) = advance.action else {
            break;
        };
        let mut written = Records::default();
        let acted = act(&ctx, &incident, action, &mut written).await;
        // Recorded even when a later write failed: what was rotated is not rotated again,
        // and an account deleted is created again from its record.
        if !written.is_empty() {
            let mut next = status.clone();
            for record in written.secrets {
                credentials::remember(&mut next.rotated_secrets, record);
            }
            for record in written.service_accounts {
                tokens::remember(&mut next.reissued_service_accounts, record);
            }
            write_status(&ctx, &incident, &next).await?;
            status = next;
        }
        acted?;
    }
    Ok(Action::await_change())
}

/// The conditions and observed generation that go with the timeline.
fn finish(incident: &Incident, status: &mut IncidentStatus, now: Timestamp) {
    let phase = status.phase.unwrap_or(IncidentPhase::Pending);
    let current = status
        .timeline
        .iter()
        .rev()
        .find(|e| e.state != StepState::Done)
        .or(status.timeline.last())
        .map(|e| format!("{}: {}", e.step, e.message.as_deref().unwrap_or("")))
        .unwrap_or_default();
    let failed = status
        .timeline
        .iter()
        .filter(|e| e.state == StepState::Failed)
        .map(|e| format!("{}: {}", e.step, e.message.as_deref().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("; ");
    // A step waiting for an object the incident names that does not exist, or for an
    // AccessPolicy that is Stalled, makes no progress until a user acts: Stalled, with the
    // step's message naming the field or the policy and why.
    let blocked = status
        .timeline
        .iter()
        .rev()
        .find(|e| e.state != StepState::Done)
        .and_then(|e| e.message.as_deref())
        .and_then(checks::blocked);
    let generation = incident.metadata.generation;
    let (ready, progressing, stalled) = match phase {
        IncidentPhase::Recovered | IncidentPhase::Closed => (true, false, false),
        IncidentPhase::Failed => (false, false, true),
        _ if blocked.is_some() => (false, false, true),
        _ => (false, true, false),
    };
    let reason = format!("{phase:?}");
    let (stalled_reason, stalled_message) = match blocked {
        Some(blocked) => (blocked.reason().to_owned(), current.clone()),
        None => (reason.clone(), failed),
    };
    status.observed_generation = generation;
    status.conditions = conditions(
        &status.conditions,
        generation,
        now,
        [
            ("Ready", ready, &reason, &current),
            ("Progressing", progressing, &reason, &current),
            ("Stalled", stalled, &stalled_reason, &stalled_message),
        ],
    );
}

/// Reads what the due steps need.
async fn observe(
    ctx: &Context,
    incident: &Incident,
    status: &IncidentStatus,
) -> Result<Observed, Error> {
    let name = incident.name_any();
    let mut observed = Observed::default();
    let policies: Api<AccessPolicy> = Api::all(ctx.client.clone());
    for policy in &incident.spec.access_policies {
        if let Some(found) = policies
            .get_opt(policy)
            .await
            .map_err(kube_error("read", format!("AccessPolicy {policy}")))?
        {
            observed.policies.insert(policy.clone(), found);
        }
    }
    observed.others_open = Api::<Incident>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "Incidents"))?
        .items
        .into_iter()
        .filter(|i| is_open_real(i) && i.name_any() != name)
        .collect();
    observed.schedules = Api::<BackupSchedule>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "BackupSchedules"))?
        .items;
    let plans: Api<RecoveryPlan> = Api::all(ctx.client.clone());
    for plan in &incident.spec.recovery_plans {
        if let Some(found) = plans
            .get_opt(plan)
            .await
            .map_err(kube_error("read", format!("RecoveryPlan {plan}")))?
        {
            observed.plans.insert(plan.clone(), found);
        }
    }
    if incident.spec.mode == IncidentMode::Drill {
        let copies = plans
            .list(&ListParams::default().labels(&format!("{}={name}", labels::INCIDENT)))
            .await
            .map_err(kube_error(
                "list",
                format!("drill copies of Incident {name}"),
            ))?;
        for copy in copies.items {
            if let Some(source) = copy.labels().get(labels::SOURCE_PLAN).cloned() {
                observed.copies.insert(source, copy);
            }
        }
        // Another drill's copy with the same name shows up as a conflict, not as ours.
        let prefix = checks::drill_prefix(incident);
        for plan in &incident.spec.recovery_plans {
            if observed.copies.contains_key(plan) {
                continue;
            }
            if let Some(other) = plans
                .get_opt(&drill::copy_name(&prefix, plan))
                .await
                .map_err(kube_error("read", format!("RecoveryPlan {prefix}{plan}")))?
            {
                observed.copies.insert(plan.clone(), other);
            }
        }
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let copy_namespaces: Vec<String> = observed
            .plans
            .values()
            .flat_map(|p| &p.spec.services)
            .filter(|s| s.action == ServiceAction::Rebuild)
            .map(|s| format!("{prefix}{}", s.namespace))
            .collect();
        for namespace in copy_namespaces {
            if let Some(found) = namespaces
                .get_opt(&namespace)
                .await
                .map_err(kube_error("read", format!("Namespace {namespace}")))?
            {
                // Only namespaces a drill's copy made: never one that happens to share the name.
                let made_by_copy = found
                    .labels()
                    .get(labels::PLAN)
                    .is_some_and(|p| p.starts_with(&prefix));
                if made_by_copy {
                    observed
                        .copy_namespaces
                        .insert(namespace, found.metadata.deletion_timestamp.is_some());
                }
            }
        }
    }
    let due = |step: Step| {
        !status
            .timeline
            .iter()
            .any(|e| e.step == step.name() && e.state != StepState::Running)
    };
    if due(Step::ChooseRestorePoints) && incident.spec.state == IncidentState::Open {
        observed.restore_points =
            Some(choose_restore_points(ctx, incident, &observed.plans).await?);
    }
    let done = |step: Step| {
        status
            .timeline
            .iter()
            .any(|e| e.step == step.name() && e.state == StepState::Done)
    };
    if let Some(wanted) = &incident.spec.invalidate_service_account_tokens
        && is_open_real(incident)
        && done(Step::Lockdown)
        && due(Step::InvalidateServiceAccountTokens)
    {
        observed.tokens = Some(read_service_accounts(ctx, wanted).await?);
    }
    let recovered = done(Step::Recover);
    if incident.spec.mode == IncidentMode::Real && recovered && due(Step::RotateCredentials) {
        observed.stale_secrets = Some(stale_secrets(ctx, incident, status, &observed.plans).await?);
    }
    Ok(observed)
}

/// A restore point for every service of the plans that restores from a backup, chosen by
/// the same code the restore uses (every candidate opened with all its checks).
async fn choose_restore_points(
    ctx: &Context,
    incident: &Incident,
    plans: &BTreeMap<String, RecoveryPlan>,
) -> Result<Vec<ChosenRestorePoint>, Error> {
    let rule = &incident.spec.restore_point;
    let mut points = Vec::new();
    for (plan_name, plan) in plans {
        for service in &plan.spec.services {
            let Some(from) = service
                .workload
                .as_ref()
                .and_then(|w| w.from_backup.as_ref())
            else {
                continue;
            };
            let namespace = from
                .source_namespace
                .as_deref()
                .unwrap_or(&service.namespace);
            let mut point = ChosenRestorePoint {
                plan: plan_name.clone(),
                service: service.name.clone(),
                backup: None,
                backup_completed: None,
                data_loss_window: None,
                message: None,
            };
            let identity = backup::engine::identity(&ctx.client, &from.identity_secret_ref)
                .await
                .map_err(kube_error(
                    "read",
                    format!("the identity Secret of {plan_name}/{}", service.name),
                ))?;
            let identity = match identity {
                Ok(identity) => identity,
                Err(failure) => {
                    point.message = Some(failure);
                    points.push(point);
                    continue;
                }
            };
            let named = from.backup.clone().or_else(|| {
                (rule.rule == RestorePointRule::Named)
                    .then(|| rule.backup.clone())
                    .flatten()
            });
            let (choice, _) = backup::restore::restore_point(
                &ctx.client,
                &identity,
                &backup::restore::rule_of(Some(incident), namespace),
                named.as_deref(),
            )
            .await
            .map_err(kube_error("read", "Backups"))?;
            point.message = Some(choice.describe(namespace));
            point.backup = choice.backup;
            point.backup_completed = choice.completed.map(Time);
            point.data_loss_window = choice.data_loss_window;
            points.push(point);
        }
    }
    Ok(points)
}

/// The credentials the plans regenerate that are not, unchanged, a write of the operator
/// made after the compromise: missing, older, planted, or changed since by anyone. The
/// operator's writes are those its own records name: the plan's, per service, and this
/// incident's rotations.
async fn stale_secrets(
    ctx: &Context,
    incident: &Incident,
    status: &IncidentStatus,
    plans: &BTreeMap<String, RecoveryPlan>,
) -> Result<Vec<SecretToRotate>, Error> {
    let mut stale = Vec::new();
    for (plan_name, plan) in plans {
        let services = plan
            .status
            .as_ref()
            .map(|s| s.services.as_slice())
            .unwrap_or_default();
        for service in &plan.spec.services {
            if service.action != ServiceAction::Rebuild {
                continue;
            }
            let regenerated = services
                .iter()
                .filter(|s| s.name == service.name)
                .flat_map(|s| &s.regenerated_secrets);
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &service.namespace);
            for wanted in &service.regenerate_secrets {
                let found = secrets.get_opt(&wanted.name).await.map_err(kube_error(
                    "read",
                    format!("Secret {}/{}", service.namespace, wanted.name),
                ))?;
                let records = regenerated.clone().chain(&status.rotated_secrets);
                let fresh = found.as_ref().is_some_and(|s| {
                    credentials::fresh_since(
                        records,
                        &s.metadata,
                        incident.spec.compromised_since.0,
                    )
                });
                if !fresh {
                    stale.push(SecretToRotate {
                        plan: plan_name.clone(),
                        service: service.name.clone(),
                        namespace: service.namespace.clone(),
                        secret: wanted.clone(),
                        refused: found.as_ref().and_then(credentials::refusal),
                    });
                }
            }
        }
    }
    Ok(stale)
}

/// The operator's own user name, as the API server authenticates it, as a ServiceAccount.
async fn whoami(client: &Client) -> Result<Option<NamespacedRef>, Error> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(kube_error("create", "SelfSubjectReview"))?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .as_deref()
        .and_then(tokens::service_account_of))
}

/// The first of the rights the token step needs in `namespace` that the API server does
/// not give the operator, such as `delete serviceaccounts`.
async fn missing_right(client: &Client, namespace: &str) -> Result<Option<String>, Error> {
    for (verb, resource) in tokens::RIGHTS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    group: Some(String::new()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(kube_error(
                "ask whether it may",
                format!("{verb} {resource} in {namespace}"),
            ))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Ok(Some(format!("{verb} {resource}")));
        }
    }
    Ok(None)
}

/// The ServiceAccounts and legacy token Secrets (metadata only: never a token) of the
/// namespaces `wanted` names, once the operator may work in every one of them.
async fn read_service_accounts(
    ctx: &Context,
    wanted: &TokenInvalidation,
) -> Result<tokens::Seen, Error> {
    let mut seen = tokens::Seen {
        operator: ctx
            .operator
            .get_or_try_init(|| whoami(&ctx.client))
            .await?
            .clone(),
        ..Default::default()
    };
    for namespace in &wanted.namespaces {
        if let Some(right) = missing_right(&ctx.client, namespace).await? {
            seen.refused.insert(namespace.clone(), right);
        }
    }
    if !seen.refused.is_empty() {
        return Ok(seen);
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    for namespace in &wanted.namespaces {
        let Some(found) = namespaces
            .get_opt(namespace)
            .await
            .map_err(kube_error("read", format!("Namespace {namespace}")))?
        else {
            continue;
        };
        seen.namespaces.insert(
            namespace.clone(),
            found.metadata.deletion_timestamp.is_some(),
        );
        let accounts = Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(kube_error(
                "list",
                format!("ServiceAccounts in {namespace}"),
            ))?;
        seen.service_accounts.extend(accounts.items);
        let legacy = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .list_metadata(
                &ListParams::default().fields(&format!("type={}", tokens::LEGACY_TOKEN_TYPE)),
            )
            .await
            .map_err(kube_error(
                "list",
                format!("legacy token Secrets in {namespace}"),
            ))?;
        seen.legacy_tokens
            .extend(legacy.items.iter().filter_map(|secret| {
                Some(tokens::LegacyToken {
                    namespace: namespace.clone(),
                    name: secret.name_any(),
                    service_account: secret
                        .annotations()
                        .get(tokens::LEGACY_TOKEN_ACCOUNT)?
                        .clone(),
                })
            }));
    }
    Ok(seen)
}

/// Deletes `reissue`'s legacy token Secrets and its account (only while it still has the
/// replaced uid), and creates the account again from the record. Returns the record with
/// the new uid, or without one when the old account is still there (being deleted).
async fn reissue(ctx: &Context, reissue: Reissue) -> Result<ReissuedServiceAccount, Error> {
    let Reissue { mut record, delete } = reissue;
    let namespace = record.namespace.clone();
    let object = format!("ServiceAccount {namespace}/{}", record.name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for secret in &record.legacy_token_secrets {
        ignore_missing(secrets.delete(secret, &DeleteParams::default()).await).map_err(
            kube_error(
                "delete",
                format!("legacy token Secret {namespace}/{secret}"),
            ),
        )?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    if delete {
        // Only the account recorded: one created since under the name has a new uid
        // already, and is given the saved fields below instead.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(record.replaced_uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match accounts.delete(&record.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: "delete",
                    object,
                    source,
                });
            }
        }
    }
    // Server-side apply creates it, or gives the saved fields to the one the ServiceAccount
    // controller made first (it re-creates `default` at once).
    let created = accounts
        .patch(
            &record.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&tokens::service_account(&record)),
        )
        .await
        .map_err(kube_error("create again", object))?;
    let uid = created.uid();
    record.uid = uid.filter(|uid| *uid != record.replaced_uid);
    Ok(record)
}

/// Does what a step asked for. What it writes that the status must record is added to
/// `written`.
async fn act(
    ctx: &Context,
    incident: &Incident,
    action: Act,
    written: &mut Records,
) -> Result<(), Error> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    match action {
        Act::CreateCopies(copies) => {
            let plans: Api<RecoveryPlan> = Api::all(ctx.client.clone());
            for copy in copies {
                let name = copy.name_any();
                plans
                    .patch(&name, &apply, &Patch::Apply(&copy))
                    .await
                    .map_err(kube_error("create", format!("RecoveryPlan {name}")))?;
            }
        }
        Act::DeleteCopies { plans, namespaces } => {
            let plan_api: Api<RecoveryPlan> = Api::all(ctx.client.clone());
            for plan in plans {
                ignore_missing(plan_api.delete(&plan, &DeleteParams::default()).await)
                    .map_err(kube_error("delete", format!("RecoveryPlan {plan}")))?;
            }
            let namespace_api: Api<Namespace> = Api::all(ctx.client.clone());
            for namespace in namespaces {
                ignore_missing(
                    namespace_api
                        .delete(&namespace, &DeleteParams::default())
                        .await,
                )
                .map_err(kube_error("delete", format!("Namespace {namespace}")))?;
            }
        }
        Act::Rotate(secrets) => {
            let now = Timestamp::now();
            for stale in secrets {
                let object = format!("Secret {}/{}", stale.namespace, stale.secret.name);
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &stale.namespace);
                // Read again just before the write: the replacement is conditional on what
                // it removes.
                let existing = api
                    .get_opt(&stale.secret.name)
                    .await
                    .map_err(kube_error("read", object.clone()))?;
                let mut secret = crate::recovery::desired::regenerated_secret(
                    &stale.secret,
                    &stale.namespace,
                    &stale.plan,
                    &stale.service,
                    |buffer| {
                        getrandom::fill(buffer)
                            .expect("the operating system's random generator is available")
                    },
                );
                secret
                    .annotations_mut()
                    .insert(ROTATED_AT.to_owned(), now.to_string());
                let record = credentials::write(&api, existing.as_ref(), &secret, now)
                    .await
                    .map_err(kube_error("rotate", object.clone()))?
                    .map_err(|reason| Error::Refused {
                        object: object.clone(),
                        reason,
                    })?;
                written.secrets.push(record);
                publish(
                    ctx,
                    incident,
                    EventType::Normal,
                    "CredentialRotated",
                    format!(
                        "{object}: fresh values for {} keys (not the operator's own write since compromisedSince)",
                        stale.secret.keys.len()
                    ),
                )
                .await;
            }
        }
        Act::RecordServiceAccounts(records) => written.service_accounts.extend(records),
        Act::Reissue(accounts) => {
            for account in accounts {
                let record = reissue(ctx, account).await?;
                if record.uid.is_some() {
                    publish(
                        ctx,
                        incident,
                        EventType::Normal,
                        "ServiceAccountReissued",
                        format!(
                            "ServiceAccount {}/{} created again with a new uid: every token of the old one is refused; {} legacy token Secrets deleted",
                            record.namespace,
                            record.name,
                            record.legacy_token_secrets.len()
                        ),
                    )
                    .await;
                }
                written.service_accounts.push(record);
            }
        }
    }
    Ok(())
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

async fn last_status(ctx: &Context, incident: &Incident) -> IncidentStatus {
    match ctx.written.lock().await.get(&incident.name_any()) {
        Some((uid, status)) if *uid == incident.uid() => status.clone(),
        _ => incident.status.clone().unwrap_or_default(),
    }
}

async fn write_status(
    ctx: &Context,
    incident: &Incident,
    status: &IncidentStatus,
) -> Result<(), Error> {
    let name = incident.name_any();
    let patch = json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident", "status": status});
    Api::<Incident>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_error("write status of", format!("Incident {name}")))?;
    ctx.written
        .lock()
        .await
        .insert(name, (incident.uid(), status.clone()));
    Ok(())
}

async fn publish(ctx: &Context, incident: &Incident, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Respond".into(),
        secondary: None,
    };
    // An event that cannot be written must not stop an incident response.
    if let Err(error) = ctx
        .recorder
        .publish(&event, &incident.object_ref(&()))
        .await
    {
        warn!(incident = %incident.name_any(), %error, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;
    use crate::api::access_policy::{AccessMode, AccessPolicyStatus};

    #[test]
    fn a_closed_incident_held_by_a_stalled_policy_is_stalled_and_names_it() {
        let incident: Incident = crate::yaml::from_str(
            "apiVersion: resurgo.dev/v1alpha1\nkind: Incident\nmetadata: {name: ransomware, generation: 3}\nspec:\n  compromisedSince: '2021-07-31T00:00:00Z'\n  state: Closed\n  accessPolicies: [staff]\n",
        )
        .unwrap();
        let mut policy: AccessPolicy = crate::yaml::from_str(
            "apiVersion: resurgo.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: staff, generation: 4}\nspec: {mode: Normal}\n",
        )
        .unwrap();
        policy.status = Some(AccessPolicyStatus {
            mode: Some(AccessMode::Lockdown),
            conditions: vec![Condition {
                type_: "Stalled".into(),
                status: "True".into(),
                reason: "ApplyFailed".into(),
                message: "NetworkPolicy resurgo.remote.staff.vpn: port 0".into(),
                observed_generation: Some(4),
                last_transition_time: Time(Timestamp::from_second(1).unwrap()),
            }],
            ..Default::default()
        });
        let mut observed = Observed::default();
        observed.policies.insert("staff".into(), policy);
        let now = Timestamp::from_second(1_700_000_000).unwrap();

        let mut status = timeline::advance(
            &incident.spec,
            &IncidentStatus::default(),
            now,
            |step, s| checks::check(step, &incident, s, &observed),
        )
        .status;
        finish(&incident, &mut status, now);

        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(stalled.status, "True");
        assert_eq!(stalled.reason, "AccessPolicyStalled");
        assert_eq!(
            stalled.message,
            "LiftLockdown: accesspolicy staff is Stalled and cannot leave Lockdown until its spec is corrected: ApplyFailed: NetworkPolicy resurgo.remote.staff.vpn: port 0"
        );
        let progressing = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(progressing.status, "False");
    }
}
