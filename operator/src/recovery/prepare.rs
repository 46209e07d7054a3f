//! A Rebuild service's ground: its hardened namespace, the network policies of that
//! namespace and its `default` ServiceAccount, made when the service starts or, for the
//! services next in line, ahead of their turn.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, ServiceAccount},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::{Context, Error, Known, desired, kube_error, manifests};
use crate::{
    api::recovery_plan::{RecoveryPlan, Service, ServiceAction, ServicePhase, ServiceStatus},
    labels::FIELD_MANAGER,
    planner,
};

/// How far a service's ground was prepared ahead of its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Preparation {
    Running,
    Done,
    /// Not prepared: not a Rebuild, restored from a backup, or its workload cannot be had
    /// now (it then fails at its turn, without a namespace).
    Skipped,
}

/// A Rebuild service's hardened namespace, with its network policies and `default`
/// ServiceAccount: nothing of the service runs there yet.
///
/// The namespace first, then what goes into it side by side: each is a round trip to the
/// API server, and a service's workload waits for all of them.
pub(super) async fn prepare(
    ctx: &Context,
    plan: &RecoveryPlan,
    service: &Service,
) -> Result<(), Error> {
    let plan_name = plan.name_any();
    let namespace = &service.namespace;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let ns = desired::namespace(namespace, &plan_name);
    Api::<Namespace>::all(ctx.client.clone())
        .patch(namespace, &apply, &Patch::Apply(&ns))
        .await
        .map_err(kube_error("apply", format!("Namespace {namespace}")))?;
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let policies = desired::network_policies(&plan.spec, &plan_name, namespace)
        .into_iter()
        .map(|policy| {
            let policies = &policies;
            let apply = &apply;
            async move {
                let policy_name = policy.name_any();
                policies
                    .patch(&policy_name, apply, &Patch::Apply(&policy))
                    .await
                    .map_err(kube_error(
                        "apply",
                        format!("NetworkPolicy {namespace}/{policy_name}"),
                    ))
                    .map(drop)
            }
        });
    futures::future::try_join(
        default_account(ctx, namespace),
        futures::future::try_join_all(policies),
    )
    .await
    .map(drop)
}

/// How many services' namespaces are prepared ahead at once: in the background, beside
/// the recovery's own requests.
const PREPARED_IN_FLIGHT: usize = 4;

/// Prepares, in the background, the namespaces of the services that will start next: those
/// of the first unfinished tier and of the tier after it that wait for something, unless
/// they wait behind a failure. When their turn comes, their workload is then one request
/// away, not three. Nothing that runs is created ahead: no workload, Job or credential.
/// A service whose workload cannot be had now (a missing ConfigMap) is not prepared, so
/// that it fails at its turn without a namespace, and one restored from a backup is not
/// either, since finding its backup costs more than the preparation saves.
pub(super) fn prepare_ahead(
    ctx: &Arc<Context>,
    known: &Arc<Known>,
    steps: &planner::NextSteps,
    services: &BTreeMap<String, ServiceStatus>,
) {
    let Ok(order) = &known.order else {
        return;
    };
    let tier_of: HashMap<&str, usize> = order
        .tiers
        .iter()
        .enumerate()
        .flat_map(|(index, tier)| tier.services.iter().map(move |s| (s.as_str(), index)))
        .collect();
    let waiting = steps.blocked.iter().filter(|b| !b.behind_failure);
    let unfinished = services.values().filter(|s| {
        !matches!(
            s.phase,
            ServicePhase::Ready | ServicePhase::Failed | ServicePhase::Blocked
        )
    });
    let Some(first) = unfinished
        .filter_map(|s| tier_of.get(s.name.as_str()))
        .min()
        .copied()
    else {
        return;
    };
    let todo: Vec<String> = {
        let mut prepared = known.prepared.lock().expect("never poisoned");
        let mut todo = Vec::new();
        for blocked in waiting.filter(|b| tier_of[b.service.as_str()] <= first + 1) {
            if !prepared.contains_key(&blocked.service) {
                prepared.insert(blocked.service.clone(), Preparation::Running);
                todo.push(blocked.service.clone());
            }
        }
        todo
    };
    if todo.is_empty() {
        return;
    }
    let ctx = ctx.clone();
    let known = known.clone();
    tokio::spawn(async move {
        futures::stream::iter(todo)
            .for_each_concurrent(PREPARED_IN_FLIGHT, |name| {
                let ctx = &ctx;
                let known = &known;
                async move {
                    let plan = &known.plan;
                    let Some(service) = plan.spec.services.iter().find(|s| s.name == name) else {
                        return;
                    };
                    let outcome = if service.action != ServiceAction::Rebuild
                        || service
                            .workload
                            .as_ref()
                            .is_some_and(|w| w.from_backup.is_some())
                    {
                        Ok(Preparation::Skipped)
                    } else {
                        match manifests(ctx, plan, service).await {
                            Ok(Ok(_)) => prepare(ctx, plan, service)
                                .await
                                .map(|()| Preparation::Done),
                            Ok(Err(_)) => Ok(Preparation::Skipped),
                            Err(error) => Err(error),
                        }
                    };
                    let mut prepared = known.prepared.lock().expect("never poisoned");
                    match outcome {
                        Ok(outcome) => {
                            prepared.insert(name, outcome);
                        }
                        // Tried again by a later reconcile, or done at the service's turn.
                        Err(error) => {
                            tracing::debug!(service = %name, %error, "not prepared ahead");
                            prepared.remove(&name);
                        }
                    }
                }
            })
            .await;
    });
}

/// Creates the namespace's `default` ServiceAccount unless it exists.
///
/// Pods are refused until it exists, and the Job and ReplicaSet controllers then back off
/// for many seconds. Creating it here (the ServiceAccount controller would, a moment later)
/// removes that wait.
async fn default_account(ctx: &Context, namespace: &str) -> Result<(), Error> {
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
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(error) => Err(kube_error(
            "create",
            format!("ServiceAccount {namespace}/default"),
        )(error)),
    }
}
