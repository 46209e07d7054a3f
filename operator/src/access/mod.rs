//! The AccessPolicy controller: time-bound grants, a reversible lockdown, and remote-access
//! rules rendered as NetworkPolicies.
//!
//! Every reconcile of a policy:
//! 1. makes the ClusterRoles of the policy's own roles, the RoleBindings and
//!    ClusterRoleBindings of its grants in force, and the NetworkPolicies of its
//!    remote-access rules in force (server-side apply, field manager `resurgo`, labelled and
//!    owned by the policy), and deletes those of expired or removed grants and rules;
//! 2. brings the cluster's one lockdown up to date ([`enforce`]): while any policy is in
//!    `Lockdown` (its own, or while an open Real Incident names it), every binding of a
//!    human path is saved in the ledger and suspended (see [`lockdown`]); once none is,
//!    what the ledger holds comes back exactly;
//! 3. writes the status once and asks to run again at the next expiry, to the second. The
//!    rest is driven by watches: the policies, all RoleBindings and ClusterRoleBindings (a
//!    human binding made during a lockdown is suspended at once), the objects the policy
//!    owns, and Namespaces (a grant waiting for its namespace).
//!
//! A finalizer (`resurgo.dev/access`) takes a deleted policy out of the lockdown (its
//! bindings come back unless another policy holds them) and deletes what it made.
//!
//! # RBAC the controller needs
//!
//! The chart's ClusterRole has it, rule by rule with the code that needs it
//! (charts/resurgo/templates/clusterrole.yaml, "AccessPolicy controller"), and README.md
//! tables it from the rendered chart.

mod bootstrap;
mod desired;
mod enforce;
pub mod lockdown;
pub mod saved;
mod status;

use crate::operator::Shared;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration as StdDuration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, ObjectReference},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{self, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use self::lockdown::{Binding, BindingKind, BindingRef};
use crate::{
    api::{
        access_policy::{AccessMode, AccessPolicy, AccessPolicySpec, AccessPolicyStatus},
        incident::Incident,
        suspended_binding::SuspendedBinding,
    },
    labels::{self, FIELD_MANAGER},
};

/// The finalizer that restores a deleted policy's suspended bindings.
pub const FINALIZER: &str = "resurgo.dev/access";

/// The namespace where suspended bindings are saved: `RESURGO_NAMESPACE`, else the pod's
/// namespace (`POD_NAMESPACE`), else `resurgo-system`.
pub fn operator_namespace() -> String {
    ["RESURGO_NAMESPACE", "POD_NAMESPACE"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "resurgo-system".into())
}

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
    #[error("AccessPolicy {policy}: {source}")]
    Finalizer {
        policy: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
}

impl Error {
    /// The API server's refusal of an object as invalid (422), malformed (400) or not the
    /// operator's to write (403: RBAC or an admission policy of the chart), with the object
    /// and its message: retrying the same request cannot succeed until something changes.
    fn refusal(&self) -> Option<String> {
        match self {
            Error::Kube {
                action,
                object,
                source: kube::Error::Api(status),
            } if matches!(status.code, 400 | 403 | 422) => {
                Some(format!("{action} {object}: {}", status.message))
            }
            _ => None,
        }
    }
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
    /// The cluster's one lockdown.
    ledger: enforce::Ledger,
    /// `--selector`: the policies this operator enforces.
    selector: Option<String>,
}

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    shared.kind_listed(Api::<AccessPolicy>::all(client.clone()));
    let metrics = shared.metrics.clone();
    let reporter = crate::events::reporter();
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: crate::events::Recorder::new(client.clone(), reporter),
        ledger: enforce::Ledger::default(),
        selector: shared.selector().map(str::to_owned),
    });
    let controller = shared.controller(Api::<AccessPolicy>::all(client.clone()));
    let policies = controller.store();
    let (for_rb, for_crb, for_ns) = (policies.clone(), policies.clone(), policies.clone());
    let ours = watcher::Config::default().labels(labels::ACCESS_POLICY);
    controller
        .watches(
            Api::<RoleBinding>::all(client.clone()),
            watcher::Config::default(),
            move |rb| concerned(&for_rb, &saved::from_role_binding(&rb)),
        )
        .watches(
            Api::<ClusterRoleBinding>::all(client.clone()),
            watcher::Config::default(),
            move |crb| concerned(&for_crb, &saved::from_cluster_role_binding(&crb)),
        )
        .watches(
            Api::<NetworkPolicy>::all(client.clone()),
            ours.clone(),
            policy_of,
        )
        .watches(Api::<ClusterRole>::all(client.clone()), ours, policy_of)
        // A cluster admin releasing a held entry, or removing one.
        .watches(
            Api::<SuspendedBinding>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                policies
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Incident>::all(client.clone()),
            watcher::Config::default(),
            |incident| {
                incident
                    .spec
                    .access_policies
                    .iter()
                    .map(|name| ObjectRef::new(name))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Namespace>::all(client),
            watcher::Config::default(),
            move |ns| naming(&for_ns, &ns.name_any()),
        )
        .trigger_backoff(crate::operator::TriggerBackoff::default())
        .graceful_shutdown_on(shared.shutdown())
        .run(reconcile, error_policy, context)
        .inspect(move |result| match result {
            Ok(_) => metrics.reconciled("AccessPolicy"),
            Err(_) => metrics.reconcile_failed("AccessPolicy"),
        })
        .for_each(|result| async move {
            match result {
                Ok((policy, _)) => tracing::debug!(policy = %policy.name, "reconciled"),
                // A policy deleted while a requeue was pending: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(policy)) => {
                    tracing::debug!(%policy, "gone before its requeue")
                }
                Err(error) => warn!(%error, "access reconcile failed"),
            }
        })
        .await;
}

fn policy_of<K: Resource>(object: K) -> Option<ObjectRef<AccessPolicy>> {
    object
        .labels()
        .get(labels::ACCESS_POLICY)
        .map(|name| ObjectRef::new(name))
}

/// The policies a binding event concerns: the policy whose grant it may be (its label only
/// brings that policy to look, which then compares the binding with what it wants), and
/// every policy in Lockdown (the binding may have to be suspended). The control plane's own
/// bindings concern none.
fn concerned(policies: &Store<AccessPolicy>, binding: &Binding) -> Vec<ObjectRef<AccessPolicy>> {
    if bootstrap::is_bootstrap(binding) {
        return Vec::new();
    }
    let mut concerned: Vec<ObjectRef<AccessPolicy>> = binding
        .labels
        .get(labels::ACCESS_POLICY)
        .map(|name| ObjectRef::new(name))
        .into_iter()
        .collect();
    concerned.extend(
        policies
            .state()
            .iter()
            .filter(|p| in_lockdown(p))
            .map(|p| ObjectRef::from_obj(p.as_ref())),
    );
    concerned
}

fn in_lockdown(policy: &AccessPolicy) -> bool {
    policy.spec.mode == AccessMode::Lockdown
        || policy.status.as_ref().and_then(|s| s.mode) == Some(AccessMode::Lockdown)
}

/// The policies whose grants or remote-access rules name a namespace.
fn naming(policies: &Store<AccessPolicy>, namespace: &str) -> Vec<ObjectRef<AccessPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| namespaces_named(&p.spec).contains(namespace))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

fn namespaces_named(spec: &AccessPolicySpec) -> BTreeSet<&str> {
    spec.grants
        .iter()
        .flat_map(|g| g.namespaces.iter())
        .chain(spec.remote_access.iter().flat_map(|r| r.namespaces.iter()))
        .map(String::as_str)
        .collect()
}

fn error_policy(policy: Arc<AccessPolicy>, error: &Error, _: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "will retry");
    Action::requeue(StdDuration::from_secs(5))
}

async fn reconcile(policy: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<AccessPolicy>::all(ctx.client.clone());
    let name = policy.name_any();
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            finalizer::Event::Apply(policy) => apply(&policy, &ctx).await,
            finalizer::Event::Cleanup(policy) => cleanup(&policy, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        // Cleaned up already: a second clean-up raced the first and found the policy gone.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(status)))
            if status.is_not_found() =>
        {
            Ok(Action::await_change())
        }
        Err(source) => Err(Error::Finalizer {
            policy: name,
            source: Box::new(source),
        }),
    }
}

/// Brings the cluster to what the policy says now.
async fn apply(policy: &AccessPolicy, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let name = policy.name_any();
    // An open Real incident that names the policy locks it down, whatever its own mode.
    let locking = locking_incidents(ctx, &name).await?;
    let (spec, refused) = desired::effective(&policy.spec, &locking);
    let effective = AccessPolicy {
        metadata: policy.metadata.clone(),
        spec,
        status: policy.status.clone(),
    };
    let policy = &effective;
    let owner = policy
        .controller_owner_ref(&())
        .expect("a policy from the API server has a uid");
    let mut wanted = desired::desired(&policy.spec, &name, &owner, now);

    // A grant or rule whose namespace does not exist yet waits for it; the Namespace watch
    // brings the policy back when it appears.
    let mut missing = Vec::new();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    for namespace in namespaces_named(&policy.spec) {
        let found = namespaces
            .get_opt(namespace)
            .await
            .map_err(kube_error("read", format!("Namespace {namespace}")))?;
        if found.is_none() {
            missing.push(namespace.to_owned());
        }
    }
    let here = |meta: &ObjectMeta| !missing.contains(meta.namespace.as_ref().expect("namespaced"));
    wanted.role_bindings.retain(|(_, rb)| here(&rb.metadata));
    wanted.network_policies.retain(|np| here(&np.metadata));

    let previous = policy.status.clone().unwrap_or_default();
    let started = previous.mode != Some(policy.spec.mode);
    match policy.spec.mode {
        AccessMode::Lockdown if started => {
            let note = "suspending every human binding that is not break-glass";
            publish(
                ctx,
                policy,
                EventType::Normal,
                "LockdownStarted",
                note.into(),
                None,
            )
            .await;
        }
        AccessMode::Normal if started && previous.mode.is_some() => {
            let note =
                "leaving Lockdown: suspended bindings come back once no policy is in Lockdown";
            publish(
                ctx,
                policy,
                EventType::Normal,
                "LockdownLifted",
                note.into(),
                None,
            )
            .await;
        }
        _ => {}
    }

    // The lockdown goes first, and nothing else failing holds it back: a grant that cannot
    // be written (say, its namespace is terminating) must not keep anyone's access.
    let mut first_error = None;
    let mut observed = status::Observed::default();
    match enforce::converge(ctx, policy, None).await {
        Ok(summary) => {
            observed.suspended = summary.suspended;
            observed.since = summary.since;
            observed.locked_by = summary.locked_by;
            observed.not_restored = summary.not_restored;
        }
        Err(error) => {
            first_error.get_or_insert(error);
        }
    }
    let steps = [
        apply_roles(ctx, policy, &wanted.cluster_roles).await,
        apply_grants(ctx, policy, &wanted, now, &refused).await,
        apply_remote_access(ctx, policy, &wanted.network_policies).await,
    ];
    for result in steps {
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    }
    if let Some(error) = first_error {
        // An object the API server refuses as invalid stays refused until the policy
        // changes: the status says which and why, instead of a silent retry loop.
        let Some(refusal) = error.refusal() else {
            return Err(error);
        };
        observed.failed = Some(refusal);
    }

    let status = status::compute(
        policy, &previous, &missing, &locking, &refused, &observed, now,
    );
    let stalled = |s: &AccessPolicyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) =
        stalled(&status).filter(|now| stalled(&previous).as_ref() != Some(now))
    {
        publish(ctx, policy, EventType::Warning, &reason, message, None).await;
    }
    if policy.status.as_ref() != Some(&status) {
        write_status(ctx, &name, &status).await?;
    }
    if observed.failed.is_some() {
        // Retried slowly: the spec changing brings the policy back at once.
        return Ok(Action::requeue(StdDuration::from_secs(60)));
    }
    Ok(match desired::next_expiry(&policy.spec, now) {
        Some(expiry) => {
            let wait = StdDuration::try_from(expiry.duration_since(now)).unwrap_or_default();
            // A few milliseconds late rather than early: at the expiry the grant is gone.
            Action::requeue(wait + StdDuration::from_millis(5))
        }
        None => Action::await_change(),
    })
}

/// The open Real incidents that name the policy.
async fn locking_incidents(ctx: &Context, policy: &str) -> Result<Vec<String>, Error> {
    let incidents = Api::<Incident>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "Incidents"))?;
    Ok(incidents
        .items
        .iter()
        .filter(|i| enforce::locks(i) && i.spec.access_policies.iter().any(|p| p == policy))
        .map(ResourceExt::name_any)
        .collect())
}

/// A deleted policy: what it made goes, and its lockdown no longer counts (the bindings come
/// back unless another policy is in Lockdown).
async fn cleanup(policy: &AccessPolicy, ctx: &Context) -> Result<Action, Error> {
    enforce::converge(ctx, policy, Some(&policy.name_any())).await?;
    let empty = desired::Desired::default();
    apply_remote_access(ctx, policy, &empty.network_policies).await?;
    apply_grants(ctx, policy, &empty, Timestamp::now(), &[]).await?;
    apply_roles(ctx, policy, &empty.cluster_roles).await?;
    info!(policy = %policy.name_any(), "policy deleted: its lockdown no longer counts and its grants are revoked");
    Ok(Action::await_change())
}

fn owned_by(policy: &str) -> ListParams {
    ListParams::default().labels(&format!("{}={policy}", labels::ACCESS_POLICY))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_roles(
    ctx: &Context,
    policy: &AccessPolicy,
    wanted: &[ClusterRole],
) -> Result<(), Error> {
    let api: Api<ClusterRole> = Api::all(ctx.client.clone());
    let existing = api
        .list(&owned_by(&policy.name_any()))
        .await
        .map_err(kube_error("list", "ClusterRoles"))?;
    for role in wanted {
        let name = role.name_any();
        let current = existing.items.iter().find(|r| r.name_any() == name);
        if current.is_some_and(|c| c.rules == role.rules && c.labels() == role.labels()) {
            continue;
        }
        api.patch(&name, &apply_params(), &Patch::Apply(role))
            .await
            .map_err(kube_error("apply", format!("ClusterRole {name}")))?;
    }
    for role in &existing.items {
        let name = role.name_any();
        if !wanted.iter().any(|w| w.name_any() == name) {
            delete(&api, &name, &format!("ClusterRole {name}")).await?;
        }
    }
    Ok(())
}

async fn delete<K>(api: &Api<K>, name: &str, what: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(kube_error("delete", what)(error)),
    }
}

/// Makes the bindings of the grants in force and deletes the others, with an Event per
/// grant given and per grant revoked.
async fn apply_grants(
    ctx: &Context,
    policy: &AccessPolicy,
    wanted: &desired::Desired,
    now: Timestamp,
    refused: &[String],
) -> Result<(), Error> {
    let name = policy.name_any();
    // The grants given and revoked, each with one of its bindings, which their Events name.
    let mut given = BTreeMap::new();
    let mut revoked = BTreeMap::new();

    let rb_api: Api<RoleBinding> = Api::all(ctx.client.clone());
    let existing = rb_api
        .list(&owned_by(&name))
        .await
        .map_err(kube_error("list", "RoleBindings"))?;
    for (grant, rb) in &wanted.role_bindings {
        let namespace = rb.namespace().expect("namespaced");
        let current = existing
            .items
            .iter()
            .find(|c| c.name_any() == rb.name_any() && c.namespace() == rb.namespace());
        if current.is_some_and(|c| {
            lockdown::same_binding(&saved::from_role_binding(c), &saved::from_role_binding(rb))
        }) {
            continue;
        }
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &namespace);
        let what = format!("RoleBinding {namespace}/{}", rb.name_any());
        if let Some(current) = current
            && current.role_ref != rb.role_ref
        {
            // The role of a binding cannot change: it is made again.
            delete(&api, &rb.name_any(), &what).await?;
        }
        api.patch(&rb.name_any(), &apply_params(), &Patch::Apply(rb))
            .await
            .map_err(kube_error("apply", what))?;
        given.entry(grant.clone()).or_insert_with(|| {
            reference(BindingKind::RoleBinding, Some(&namespace), &rb.name_any())
        });
    }
    for rb in &existing.items {
        if !wanted
            .role_bindings
            .iter()
            .any(|(_, w)| w.name_any() == rb.name_any() && w.namespace() == rb.namespace())
        {
            let namespace = rb.namespace().unwrap_or_default();
            let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &namespace);
            delete(
                &api,
                &rb.name_any(),
                &format!("RoleBinding {namespace}/{}", rb.name_any()),
            )
            .await?;
            if let Some(grant) = rb.labels().get(labels::GRANT) {
                revoked.entry(grant.clone()).or_insert_with(|| {
                    reference(BindingKind::RoleBinding, Some(&namespace), &rb.name_any())
                });
            }
        }
    }

    let crb_api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let existing = crb_api
        .list(&owned_by(&name))
        .await
        .map_err(kube_error("list", "ClusterRoleBindings"))?;
    for (grant, crb) in &wanted.cluster_role_bindings {
        let current = existing
            .items
            .iter()
            .find(|c| c.name_any() == crb.name_any());
        if current.is_some_and(|c| {
            lockdown::same_binding(
                &saved::from_cluster_role_binding(c),
                &saved::from_cluster_role_binding(crb),
            )
        }) {
            continue;
        }
        let what = format!("ClusterRoleBinding {}", crb.name_any());
        if let Some(current) = current
            && current.role_ref != crb.role_ref
        {
            delete(&crb_api, &crb.name_any(), &what).await?;
        }
        crb_api
            .patch(&crb.name_any(), &apply_params(), &Patch::Apply(crb))
            .await
            .map_err(kube_error("apply", what))?;
        given
            .entry(grant.clone())
            .or_insert_with(|| reference(BindingKind::ClusterRoleBinding, None, &crb.name_any()));
    }
    for crb in &existing.items {
        if !wanted
            .cluster_role_bindings
            .iter()
            .any(|(_, w)| w.name_any() == crb.name_any())
        {
            delete(
                &crb_api,
                &crb.name_any(),
                &format!("ClusterRoleBinding {}", crb.name_any()),
            )
            .await?;
            if let Some(grant) = crb.labels().get(labels::GRANT) {
                revoked.entry(grant.clone()).or_insert_with(|| {
                    reference(BindingKind::ClusterRoleBinding, None, &crb.name_any())
                });
            }
        }
    }

    for (grant_name, binding) in &given {
        let Some(grant) = policy.spec.grants.iter().find(|g| &g.name == grant_name) else {
            continue;
        };
        let role = grant
            .cluster_role
            .clone()
            .or_else(|| {
                grant
                    .policy_role
                    .as_ref()
                    .map(|r| format!("policy role {r}"))
            })
            .unwrap_or_default();
        let scope = if grant.namespaces.is_empty() {
            "cluster-wide".to_owned()
        } else {
            format!("in {}", grant.namespaces.join(", "))
        };
        let until = grant
            .expires_at
            .as_ref()
            .map_or_else(|| "with no expiry".to_owned(), |t| format!("until {}", t.0));
        let note = format!(
            "grant {}: {:?} {} has {role} {scope} {until} ({})",
            grant.name, grant.subject.kind, grant.subject.name, grant.reason
        );
        info!(policy = %name, grant = %grant.name, "grant applied");
        let related = Some(binding.clone());
        publish(
            ctx,
            policy,
            EventType::Normal,
            "GrantApplied",
            note,
            related,
        )
        .await;
    }
    for (grant_name, binding) in revoked.iter().filter(|(g, _)| !given.contains_key(*g)) {
        let why = match policy.spec.grants.iter().find(|g| &g.name == grant_name) {
            _ if policy.meta().deletion_timestamp.is_some() => "the policy is deleted".to_owned(),
            Some(grant) if !desired::in_force(grant.expires_at.as_ref(), now) => format!(
                "expired at {}",
                grant
                    .expires_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
            Some(_) => "its namespace is gone".to_owned(),
            None if refused.contains(grant_name) => {
                "it has no expiresAt and the policy is locked down".to_owned()
            }
            None => "removed from the policy".to_owned(),
        };
        info!(policy = %name, grant = %grant_name, %why, "grant revoked");
        publish(
            ctx,
            policy,
            EventType::Normal,
            "GrantRevoked",
            format!("grant {grant_name}: {why}; its bindings are deleted"),
            Some(binding.clone()),
        )
        .await;
    }
    Ok(())
}

async fn apply_remote_access(
    ctx: &Context,
    policy: &AccessPolicy,
    wanted: &[NetworkPolicy],
) -> Result<(), Error> {
    let name = policy.name_any();
    let existing = Api::<NetworkPolicy>::all(ctx.client.clone())
        .list(&owned_by(&name))
        .await
        .map_err(kube_error("list", "NetworkPolicies"))?;
    for np in wanted {
        let namespace = np.namespace().expect("namespaced");
        let current = existing
            .items
            .iter()
            .find(|c| c.name_any() == np.name_any() && c.namespace() == np.namespace());
        if current.is_some_and(|c| c.spec == np.spec && c.labels() == np.labels()) {
            continue;
        }
        let what = format!("NetworkPolicy {namespace}/{}", np.name_any());
        Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &namespace)
            .patch(&np.name_any(), &apply_params(), &Patch::Apply(np))
            .await
            .map_err(kube_error("apply", what.clone()))?;
        let related = Some(network_policy_reference(&namespace, &np.name_any()));
        publish(
            ctx,
            policy,
            EventType::Normal,
            "RemoteAccessOpened",
            what,
            related,
        )
        .await;
    }
    for np in &existing.items {
        if !wanted
            .iter()
            .any(|w| w.name_any() == np.name_any() && w.namespace() == np.namespace())
        {
            let namespace = np.namespace().unwrap_or_default();
            let what = format!("NetworkPolicy {namespace}/{}", np.name_any());
            delete(
                &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &namespace),
                &np.name_any(),
                &what,
            )
            .await?;
            let related = Some(network_policy_reference(&namespace, &np.name_any()));
            publish(
                ctx,
                policy,
                EventType::Normal,
                "RemoteAccessClosed",
                what,
                related,
            )
            .await;
        }
    }
    Ok(())
}

async fn write_status(ctx: &Context, name: &str, status: &AccessPolicyStatus) -> Result<(), Error> {
    let patch =
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy", "status": status});
    Api::<AccessPolicy>::all(ctx.client.clone())
        .patch_status(name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(kube_error(
            "write status of",
            format!("AccessPolicy {name}"),
        ))?;
    Ok(())
}

/// Publishes an Event about the policy. `related` names the binding or NetworkPolicy it is
/// about.
async fn publish(
    ctx: &Context,
    policy: &AccessPolicy,
    type_: EventType,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Access".into(),
        secondary: related,
    };
    // An event that cannot be written must not stop a lockdown.
    if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(policy = %policy.name_any(), %error, "could not publish event");
    }
}

fn reference(kind: BindingKind, namespace: Option<&str>, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("rbac.authorization.k8s.io/v1".into()),
        kind: Some(format!("{kind:?}")),
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn binding_reference(binding: &BindingRef) -> ObjectReference {
    reference(binding.kind, binding.namespace.as_deref(), &binding.name)
}

fn network_policy_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("NetworkPolicy".into()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}
