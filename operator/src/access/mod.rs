//! The AccessPolicy controller: time-bound grants, a reversible lockdown, and remote-access
//! rules rendered as NetworkPolicies.
//!
//! Every reconcile of a policy:
//! 1. makes the ClusterRoles of the policy's own roles, the RoleBindings and
//!    ClusterRoleBindings of its grants in force, and the NetworkPolicies of its
//!    remote-access rules in force (server-side apply, field manager `resurgo`, labelled and
//!    owned by the policy), and deletes those of expired or removed grants and rules;
//! 2. in `Lockdown` (its own, or while an open Real Incident names it), saves and then suspends every binding of a human subject (see
//!    [`lockdown`]); in `Normal`, restores exactly what the policy's lockdown saved;
//! 3. writes the status once and asks to run again at the next expiry, to the second. The
//!    rest is driven by watches: the policies, all RoleBindings and ClusterRoleBindings (a
//!    human binding made during a lockdown is suspended at once), the objects the policy
//!    owns, and Namespaces (a grant waiting for its namespace).
//!
//! A finalizer (`resurgo.dev/access`) restores the policy's suspended bindings and deletes
//! what it made before a deleted policy goes away.
//!
//! # RBAC the controller needs
//!
//! | apiGroups | resources | verbs | why |
//! |---|---|---|---|
//! | `resurgo.dev` | `accesspolicies` | list, watch, patch | read policies; add and remove the finalizer (JSON patch) |
//! | `resurgo.dev` | `accesspolicies/status` | patch | write the status (server-side apply) |
//! | `rbac.authorization.k8s.io` | `rolebindings`, `clusterrolebindings` | get, list, watch, create, update, patch, delete | grants (apply), suspending (delete, patch), restoring (create, update) |
//! | `rbac.authorization.k8s.io` | `clusterroles` | list, watch, create, patch, delete, bind, escalate | policy-defined roles (`escalate`), binding any ClusterRole a grant or a restored binding names (`bind`) |
//! | `rbac.authorization.k8s.io` | `roles` | bind | restoring a suspended RoleBinding whose roleRef is a Role |
//! | `networking.k8s.io` | `networkpolicies` | list, watch, create, patch, delete | remote-access rules |
//! | `""` | `namespaces` | get, list, watch, create | grants wait for their namespace; the operator namespace is created if missing |
//! | `""` | `secrets` (operator namespace only: a Role) | list, create, delete | saved bindings |
//! | `resurgo.dev` | `incidents` | list, watch | an open Real incident naming the policy locks it down |
//! | `events.k8s.io` | `events` | create, patch | Events on the policy |
//!
//! The operator must run as a ServiceAccount: lockdown never touches ServiceAccount subjects,
//! so its own access survives. A User it ran as would be suspended like any other.

mod desired;
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
        core::v1::{Namespace, ObjectReference, Secret},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, Subject as RbacSubject},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
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

use self::lockdown::{Binding, BindingKind, BindingRef, Step};
use crate::{
    api::{
        access_policy::{AccessMode, AccessPolicy, AccessPolicySpec, AccessPolicyStatus},
        incident::{Incident, IncidentMode, IncidentState},
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
    /// Where suspended bindings are saved.
    namespace: String,
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
        namespace: operator_namespace(),
    });
    let controller = shared.controller(Api::<AccessPolicy>::all(client.clone()));
    let policies = controller.store();
    let (for_rb, for_crb, for_ns) = (policies.clone(), policies.clone(), policies);
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

/// The policies a binding event concerns: the policy whose grant it carries, or, for a
/// binding of a human subject, every policy in Lockdown (it may have to be suspended).
fn concerned(policies: &Store<AccessPolicy>, binding: &Binding) -> Vec<ObjectRef<AccessPolicy>> {
    if lockdown::is_grant(binding) {
        return binding
            .labels
            .get(labels::ACCESS_POLICY)
            .map(|name| ObjectRef::new(name))
            .into_iter()
            .collect();
    }
    if !lockdown::is_suspendable(binding, &[]) {
        return Vec::new();
    }
    policies
        .state()
        .iter()
        .filter(|p| {
            p.spec.mode == AccessMode::Lockdown
                || p.status.as_ref().and_then(|s| s.mode) == Some(AccessMode::Lockdown)
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
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
            let note = "restoring the bindings the lockdown suspended";
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
    let mut suspended = 0;
    if policy.spec.mode == AccessMode::Lockdown {
        match lock_down(ctx, policy).await {
            Ok(count) => suspended = count,
            Err(error) => {
                first_error.get_or_insert(error);
            }
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
    if policy.spec.mode == AccessMode::Normal
        && let Err(error) = lift(ctx, policy).await
    {
        first_error.get_or_insert(error);
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    let status = status::compute(
        policy, &previous, &missing, &locking, &refused, suspended, now,
    );
    let stalled = |s: &AccessPolicyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
            .map(|c| c.message.clone())
    };
    if let Some(message) = stalled(&status).filter(|_| stalled(&previous).is_none()) {
        publish(
            ctx,
            policy,
            EventType::Warning,
            &status.conditions[1].reason.clone(),
            message,
            None,
        )
        .await;
    }
    if policy.status.as_ref() != Some(&status) {
        write_status(ctx, &name, &status).await?;
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
        .filter(|i| locks(i) && i.spec.access_policies.iter().any(|p| p == policy))
        .map(ResourceExt::name_any)
        .collect())
}

/// Whether an incident holds the policies it names in Lockdown: a Real one, while open.
fn locks(incident: &Incident) -> bool {
    incident.spec.mode == IncidentMode::Real && incident.spec.state == IncidentState::Open
}

/// A deleted policy: its suspended bindings come back, and what it made goes.
async fn cleanup(policy: &AccessPolicy, ctx: &Context) -> Result<Action, Error> {
    lift(ctx, policy).await?;
    let empty = desired::Desired::default();
    apply_remote_access(ctx, policy, &empty.network_policies).await?;
    apply_grants(ctx, policy, &empty, Timestamp::now(), &[]).await?;
    apply_roles(ctx, policy, &empty.cluster_roles).await?;
    info!(policy = %policy.name_any(), "policy deleted: its bindings are restored and its grants revoked");
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
            same_binding(&saved::from_role_binding(c), &saved::from_role_binding(rb))
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
            same_binding(
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

/// Whether a binding as it is already says what the wanted one says (ignoring what others
/// added: annotations).
fn same_binding(current: &Binding, wanted: &Binding) -> bool {
    current.subjects == wanted.subjects
        && current.role_ref == wanted.role_ref
        && current.owner_references == wanted.owner_references
        && wanted
            .labels
            .iter()
            .all(|(k, v)| current.labels.get(k) == Some(v))
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

fn saves_api(ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &ctx.namespace)
}

fn saves_of(policy: Option<&str>) -> ListParams {
    let mut selector = format!("{}={}", labels::PART, saved::PART);
    if let Some(policy) = policy {
        selector.push_str(&format!(",{}={policy}", labels::ACCESS_POLICY));
    }
    ListParams::default().labels(&selector)
}

/// Saves and suspends every human binding that is not break-glass; returns how many
/// bindings this policy holds suspended.
async fn lock_down(ctx: &Context, policy: &AccessPolicy) -> Result<u32, Error> {
    let name = policy.name_any();
    ensure_namespace(ctx).await?;
    // Bindings whose subjects became break-glass during the lockdown come back first.
    let released = lockdown::released(
        &saves_of_policy(ctx, &name).await?,
        &policy.spec.break_glass,
    );
    restore_saved(ctx, policy, &released).await?;

    let secrets = saves_api(ctx);
    let saves = secrets
        .list(&saves_of(None))
        .await
        .map_err(kube_error("list", format!("Secrets in {}", ctx.namespace)))?;
    let saved: BTreeMap<BindingRef, Binding> = saves
        .items
        .iter()
        .filter_map(saved::from_secret)
        .map(|b| (b.binding.clone(), b))
        .collect();

    // Every binding in the cluster, with what deleting or changing exactly it needs.
    let mut bindings = Vec::new();
    let mut versions: BTreeMap<BindingRef, (Option<String>, Option<String>)> = BTreeMap::new();
    let rbs = Api::<RoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "RoleBindings"))?;
    for rb in &rbs.items {
        let binding = saved::from_role_binding(rb);
        versions.insert(binding.binding.clone(), (rb.uid(), rb.resource_version()));
        bindings.push(binding);
    }
    let crbs = Api::<ClusterRoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "ClusterRoleBindings"))?;
    for crb in &crbs.items {
        let binding = saved::from_cluster_role_binding(crb);
        versions.insert(binding.binding.clone(), (crb.uid(), crb.resource_version()));
        bindings.push(binding);
    }

    let steps = lockdown::suspend(&bindings, &saved, &policy.spec.break_glass);
    for step in &steps {
        match step {
            Step::Save(binding) => {
                let secret = saved::to_secret(binding, &name, &ctx.namespace);
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {}
                    // Saved already (by a run cut short, or by another policy): the first
                    // save is the one that returns.
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                    Err(error) => {
                        return Err(kube_error("save", binding.binding.to_string())(error));
                    }
                }
            }
            Step::Delete(binding) => {
                let (uid, _) = versions.get(binding).cloned().unwrap_or_default();
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let result = match binding.kind {
                    BindingKind::RoleBinding => Api::<RoleBinding>::namespaced(
                        ctx.client.clone(),
                        binding.namespace.as_deref().unwrap_or_default(),
                    )
                    .delete(&binding.name, &params)
                    .await
                    .map(|_| ()),
                    BindingKind::ClusterRoleBinding => {
                        Api::<ClusterRoleBinding>::all(ctx.client.clone())
                            .delete(&binding.name, &params)
                            .await
                            .map(|_| ())
                    }
                };
                match result {
                    Ok(()) => {}
                    Err(kube::Error::Api(status)) if status.is_not_found() => continue,
                    Err(error) => return Err(kube_error("suspend", binding.to_string())(error)),
                }
                info!(policy = %name, binding = %binding, "binding suspended");
                publish(
                    ctx,
                    policy,
                    EventType::Normal,
                    "BindingSuspended",
                    format!(
                        "{binding} deleted; saved in Secret {}/{}",
                        ctx.namespace,
                        saved::save_name(binding)
                    ),
                    Some(binding_reference(binding)),
                )
                .await;
            }
            Step::Reduce(binding, kept) => {
                let (_, version) = versions.get(binding).cloned().unwrap_or_default();
                reduce(ctx, binding, kept, version).await?;
                info!(policy = %name, binding = %binding, "binding suspended");
                publish(
                    ctx,
                    policy,
                    EventType::Normal,
                    "BindingSuspended",
                    format!(
                        "{binding}: human subjects removed, {} kept; saved in Secret {}/{}",
                        describe_subjects(kept),
                        ctx.namespace,
                        saved::save_name(binding)
                    ),
                    Some(binding_reference(binding)),
                )
                .await;
            }
            Step::Restore(_) | Step::Forget(_) => {
                unreachable!("a lockdown only saves and suspends")
            }
        }
    }

    let ours = secrets
        .list_metadata(&saves_of(Some(&name)))
        .await
        .map_err(kube_error("list", format!("Secrets in {}", ctx.namespace)))?;
    Ok(ours.items.len() as u32)
}

fn describe_subjects(subjects: &[RbacSubject]) -> String {
    subjects
        .iter()
        .map(|s| format!("{} {}", s.kind, s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps only `kept` subjects on a binding, if it has not changed since it was read.
async fn reduce(
    ctx: &Context,
    binding: &BindingRef,
    kept: &[RbacSubject],
    version: Option<String>,
) -> Result<(), Error> {
    let patch = Patch::Merge(json!({
        "metadata": {"resourceVersion": version},
        "subjects": kept,
    }));
    let params = PatchParams::default();
    let result = match binding.kind {
        BindingKind::RoleBinding => Api::<RoleBinding>::namespaced(
            ctx.client.clone(),
            binding.namespace.as_deref().unwrap_or_default(),
        )
        .patch(&binding.name, &params, &patch)
        .await
        .map(|_| ()),
        BindingKind::ClusterRoleBinding => Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .patch(&binding.name, &params, &patch)
            .await
            .map(|_| ()),
    };
    result.map_err(kube_error("suspend", binding.to_string()))
}

/// Restores every binding this policy's lockdown saved, then forgets the save.
async fn lift(ctx: &Context, policy: &AccessPolicy) -> Result<(), Error> {
    let saved = saves_of_policy(ctx, &policy.name_any()).await?;
    restore_saved(ctx, policy, &saved).await
}

/// The bindings this policy's lockdown saved.
async fn saves_of_policy(
    ctx: &Context,
    policy: &str,
) -> Result<BTreeMap<BindingRef, Binding>, Error> {
    let saves = saves_api(ctx)
        .list(&saves_of(Some(policy)))
        .await
        .map_err(kube_error("list", format!("Secrets in {}", ctx.namespace)))?;
    Ok(saves
        .items
        .iter()
        .filter_map(saved::from_secret)
        .map(|b| (b.binding.clone(), b))
        .collect())
}

/// Puts back each saved binding exactly, then forgets its save.
async fn restore_saved(
    ctx: &Context,
    policy: &AccessPolicy,
    saved: &BTreeMap<BindingRef, Binding>,
) -> Result<(), Error> {
    let name = policy.name_any();
    let secrets = saves_api(ctx);
    let mut current = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for binding in saved.keys() {
        if let Some((found, version)) = read_binding(ctx, binding).await? {
            current.insert(binding.clone(), found);
            versions.insert(binding.clone(), version);
        }
    }
    for step in lockdown::restore(saved, &current) {
        match step {
            Step::Restore(binding) => {
                let outcome = put_back(
                    ctx,
                    &binding,
                    current.get(&binding.binding),
                    versions.get(&binding.binding),
                )
                .await?;
                let (type_, reason, note) = match outcome {
                    Ok(()) => (
                        EventType::Normal,
                        "BindingRestored",
                        format!("{} restored as it was saved", binding.binding),
                    ),
                    Err(why) => (
                        EventType::Warning,
                        "BindingNotRestored",
                        format!("{}: {why}", binding.binding),
                    ),
                };
                info!(policy = %name, binding = %binding.binding, reason, "lockdown lifted for binding");
                let related = Some(binding_reference(&binding.binding));
                publish(ctx, policy, type_, reason, note, related).await;
            }
            Step::Forget(binding) => {
                let save = saved::save_name(&binding);
                delete(&secrets, &save, &format!("Secret {}/{save}", ctx.namespace)).await?;
            }
            Step::Save(_) | Step::Delete(_) | Step::Reduce(..) => {
                unreachable!("lifting a lockdown only restores and forgets")
            }
        }
    }
    Ok(())
}

async fn read_binding(
    ctx: &Context,
    binding: &BindingRef,
) -> Result<Option<(Binding, String)>, Error> {
    let found = match binding.kind {
        BindingKind::RoleBinding => Api::<RoleBinding>::namespaced(
            ctx.client.clone(),
            binding.namespace.as_deref().unwrap_or_default(),
        )
        .get_opt(&binding.name)
        .await
        .map(|rb| rb.map(|rb| (saved::from_role_binding(&rb), rb.resource_version()))),
        BindingKind::ClusterRoleBinding => Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .get_opt(&binding.name)
            .await
            .map(|crb| {
                crb.map(|crb| {
                    (
                        saved::from_cluster_role_binding(&crb),
                        crb.resource_version(),
                    )
                })
            }),
    }
    .map_err(kube_error("read", binding.to_string()))?;
    Ok(found.map(|(b, version)| (b, version.unwrap_or_default())))
}

/// Creates the saved binding again, or replaces what has its name. `Ok(Err(why))` when it
/// cannot come back: its namespace is gone.
async fn put_back(
    ctx: &Context,
    binding: &Binding,
    current: Option<&Binding>,
    version: Option<&String>,
) -> Result<Result<(), String>, Error> {
    let what = binding.binding.to_string();
    let namespace = binding.binding.namespace.clone().unwrap_or_default();
    // The role of a binding cannot change: a binding of the same name with another role is
    // deleted first.
    let replace = current.is_some_and(|c| c.role_ref == binding.role_ref);
    let post = PostParams::default();
    let result = match binding.binding.kind {
        BindingKind::RoleBinding => {
            let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &namespace);
            let mut object = saved::to_role_binding(binding);
            if replace {
                object.metadata.resource_version = version.cloned();
                api.replace(&binding.binding.name, &post, &object)
                    .await
                    .map(|_| ())
            } else {
                if current.is_some() {
                    delete(&api, &binding.binding.name, &what).await?;
                }
                api.create(&post, &object).await.map(|_| ())
            }
        }
        BindingKind::ClusterRoleBinding => {
            let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
            let mut object = saved::to_cluster_role_binding(binding);
            if replace {
                object.metadata.resource_version = version.cloned();
                api.replace(&binding.binding.name, &post, &object)
                    .await
                    .map(|_| ())
            } else {
                if current.is_some() {
                    delete(&api, &binding.binding.name, &what).await?;
                }
                api.create(&post, &object).await.map(|_| ())
            }
        }
    };
    match result {
        Ok(()) => Ok(Ok(())),
        Err(kube::Error::Api(status))
            if status.is_not_found() && binding.binding.kind == BindingKind::RoleBinding =>
        {
            Ok(Err(format!(
                "namespace {namespace} no longer exists: the binding is dropped"
            )))
        }
        Err(error) => Err(kube_error("restore", what)(error)),
    }
}

/// The operator's namespace, where saves live, made if it is missing.
async fn ensure_namespace(ctx: &Context) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let what = format!("Namespace {}", ctx.namespace);
    if api
        .get_opt(&ctx.namespace)
        .await
        .map_err(kube_error("read", what.clone()))?
        .is_some()
    {
        return Ok(());
    }
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ctx.namespace.clone()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY_KEY.to_owned(),
                labels::MANAGED_BY.to_owned(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(error) => Err(kube_error("create", what)(error)),
    }
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
