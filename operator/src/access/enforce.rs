//! The cluster's one lockdown, enforced: reads every policy, open incident, binding and
//! ledger entry, asks [`lockdown::plan`] what to do, and does it, the most powerful bindings
//! first and many requests at a time.
//!
//! Every policy's reconcile calls [`converge`], whatever its own mode: lifting one policy
//! while another is in Lockdown must bring nothing back, and lifting the last one must
//! bring everything back. A mutex makes the runs one at a time, so that two policies never
//! plan from the same stale view.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        rbac::v1::{ClusterRoleBinding, RoleBinding, Subject as RbacSubject},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
        Preconditions,
    },
    runtime::events::EventType,
};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::{
    Context, Error, binding_reference, desired,
    lockdown::{self, Binding, BindingKind, BindingRef, Entry, Found, Rules, Step},
    publish, saved,
};
use crate::api::{
    access_policy::{AccessMode, AccessPolicy},
    incident::{Incident, IncidentMode, IncidentState},
    suspended_binding::SuspendedBinding,
};

/// How many requests a lockdown makes at once.
const PARALLEL: usize = 32;

/// The lockdown as a run left it.
#[derive(Debug, Default)]
pub struct Summary {
    /// Policies in Lockdown.
    pub locked_by: Vec<String>,
    /// When the lockdown in force began.
    pub since: Option<Timestamp>,
    /// Ledger entries: bindings held suspended.
    pub suspended: u32,
    /// Saved bindings that could not come back, each with why.
    pub not_restored: Vec<String>,
}

/// The lockdown state shared by the policies' reconciles.
#[derive(Default)]
pub struct Ledger {
    lock: tokio::sync::Mutex<()>,
    operator: OnceCell<String>,
}

/// Brings every binding to what the cluster's lockdown asks for. `reconciling` is the policy
/// whose reconcile runs it (Events go on it); `deleting` names a policy being deleted, which
/// no longer counts.
pub async fn converge(
    ctx: &Context,
    reconciling: &AccessPolicy,
    deleting: Option<&str>,
) -> Result<Summary, Error> {
    let _one_at_a_time = ctx.ledger.lock.lock().await;
    let now = Timestamp::now();
    let operator = ctx
        .ledger
        .operator
        .get_or_try_init(|| whoami(ctx))
        .await?
        .clone();

    let policies = Api::<AccessPolicy>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "AccessPolicies"))?;
    // With several operators in one cluster (`--selector`), each enforces the lockdowns of
    // its own policies and restores what they saved; break-glass subjects and grants count
    // whoever's policy names them.
    let mine: BTreeSet<String> = match &ctx.selector {
        None => policies.items.iter().map(|p| p.name_any()).collect(),
        Some(selector) => Api::<AccessPolicy>::all(ctx.client.clone())
            .list_metadata(&ListParams::default().labels(selector))
            .await
            .map_err(super::kube_error("list", "AccessPolicies"))?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect(),
    };
    let existing: BTreeSet<String> = policies.items.iter().map(|p| p.name_any()).collect();
    let incidents = Api::<Incident>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "Incidents"))?;
    let (mut rules, locked_by) = rules_of(
        &policies.items,
        &incidents.items,
        &Selection {
            mine: &mine,
            deleting,
        },
        now,
    );
    rules.operator = Some(operator);
    rules.saver = reconciling.name_any();

    // The entries this operator restores: its policies', and those of policies gone.
    let ledger: BTreeMap<BindingRef, Entry> = read_ledger(ctx)
        .await?
        .into_iter()
        .filter(|(_, e)| mine.contains(&e.policy) || !existing.contains(&e.policy))
        .collect();
    let found = read_bindings(ctx).await?;
    if rules.active {
        // A run cut short may have saved before the policy's status said when the lockdown
        // began: the earliest save of this lockdown bounds it too.
        let earliest = ledger
            .values()
            .filter(|e| !e.held)
            .map(|e| e.suspended_at)
            .min();
        rules.since = Some(min(rules.since, earliest).unwrap_or(now));
    }

    let chains = lockdown::plan(&found, &ledger, &rules, now);
    let versions: BTreeMap<BindingRef, Found> = found
        .into_iter()
        .map(|f| (f.binding.binding.clone(), f))
        .collect();
    // Started in plan order (most powerful first), PARALLEL always in flight: `buffered`
    // would count finished chains waiting for an earlier one as in flight.
    let results: Vec<Result<Option<String>, Error>> = stream::iter(chains)
        .map(|chain| run_chain(ctx, reconciling, chain, &versions))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut not_restored = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(Some(why)) => not_restored.push(why),
            Ok(None) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let suspended = Api::<SuspendedBinding>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "SuspendedBindings"))?
        .items
        .len() as u32;
    Ok(Summary {
        locked_by,
        since: rules.since,
        suspended,
        not_restored,
    })
}

/// Which policies this operator enforces.
pub struct Selection<'a> {
    /// Its policies (`--selector`).
    pub mine: &'a BTreeSet<String>,
    /// A policy being deleted: it no longer counts.
    pub deleting: Option<&'a str>,
}

/// The cluster's lockdown rules, from every policy and incident, and the policies in
/// Lockdown. `since` is the earliest start any of them recorded (the caller bounds it by the
/// ledger); `operator` and `saver` are left for the caller.
pub fn rules_of(
    policies: &[AccessPolicy],
    incidents: &[Incident],
    selection: &Selection,
    now: Timestamp,
) -> (Rules, Vec<String>) {
    let open: Vec<&Incident> = incidents.iter().filter(|i| locks(i)).collect();
    let mut rules = Rules::default();
    let mut locked_by = Vec::new();
    for policy in policies {
        let name = policy.name_any();
        // A subject break-glass in any policy is never suspended by any policy.
        rules
            .break_glass
            .extend(policy.spec.break_glass.iter().cloned());
        if Some(name.as_str()) == selection.deleting || policy.meta().deletion_timestamp.is_some() {
            continue;
        }
        let locking: Vec<&Incident> = open
            .iter()
            .copied()
            .filter(|i| i.spec.access_policies.contains(&name))
            .collect();
        let names: Vec<String> = locking.iter().map(|i| i.name_any()).collect();
        let (spec, _) = desired::effective(&policy.spec, &names);
        // Grants count whoever's policy asks for them.
        if let Some(owner) = policy.controller_owner_ref(&()) {
            let wanted = desired::desired(&spec, &name, &owner, now);
            let role_bindings = wanted
                .role_bindings
                .iter()
                .map(|(_, rb)| saved::from_role_binding(rb));
            let cluster_role_bindings = wanted
                .cluster_role_bindings
                .iter()
                .map(|(_, crb)| saved::from_cluster_role_binding(crb));
            rules
                .grants
                .extend(role_bindings.chain(cluster_role_bindings));
        }
        if spec.mode != AccessMode::Lockdown || !selection.mine.contains(&name) {
            continue;
        }
        let began = policy
            .status
            .as_ref()
            .and_then(|s| s.lockdown_since.as_ref())
            .map(|t| t.0);
        rules.since = min(rules.since, began);
        // The bindings to ServiceAccounts made after the compromise of an incident that
        // locks a policy down may be the attacker's: they go with the humans'.
        for incident in locking {
            rules.service_accounts_since = min(
                rules.service_accounts_since,
                Some(incident.spec.compromised_since.0),
            );
        }
        locked_by.push(name);
    }
    rules.active = !locked_by.is_empty();
    (rules, locked_by)
}

fn min(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether an incident holds the policies it names in Lockdown: a Real one, while open.
pub fn locks(incident: &Incident) -> bool {
    incident.spec.mode == IncidentMode::Real && incident.spec.state == IncidentState::Open
}

/// The operator's own user name, as the API server authenticates it.
async fn whoami(ctx: &Context) -> Result<String, Error> {
    let review = Api::<SelfSubjectReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(super::kube_error("create", "SelfSubjectReview"))?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

async fn read_ledger(ctx: &Context) -> Result<BTreeMap<BindingRef, Entry>, Error> {
    let entries = Api::<SuspendedBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "SuspendedBindings"))?;
    Ok(entries
        .items
        .iter()
        .filter_map(saved::from_object)
        .map(|e| (e.binding.binding.clone(), e))
        .collect())
}

async fn read_bindings(ctx: &Context) -> Result<Vec<Found>, Error> {
    let created = |meta: &kube::api::ObjectMeta| meta.creation_timestamp.as_ref().map(|t| t.0);
    let mut found = Vec::new();
    let rbs = Api::<RoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "RoleBindings"))?;
    for rb in &rbs.items {
        found.push(Found {
            binding: saved::from_role_binding(rb),
            uid: rb.metadata.uid.clone(),
            resource_version: rb.metadata.resource_version.clone(),
            created: created(&rb.metadata),
        });
    }
    let crbs = Api::<ClusterRoleBinding>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(super::kube_error("list", "ClusterRoleBindings"))?;
    for crb in &crbs.items {
        found.push(Found {
            binding: saved::from_cluster_role_binding(crb),
            uid: crb.metadata.uid.clone(),
            resource_version: crb.metadata.resource_version.clone(),
            created: created(&crb.metadata),
        });
    }
    Ok(found)
}

/// Runs one binding's steps in order. `Ok(Some(why))` when a saved binding cannot come
/// back (its entry is kept).
async fn run_chain(
    ctx: &Context,
    policy: &AccessPolicy,
    chain: Vec<Step>,
    versions: &BTreeMap<BindingRef, Found>,
) -> Result<Option<String>, Error> {
    for step in chain {
        match step {
            Step::Save(entry) => {
                let uid = versions
                    .get(&entry.binding.binding)
                    .and_then(|f| f.uid.clone());
                save(ctx, &entry, uid).await?;
            }
            Step::Delete(binding, uid) => {
                if !delete_binding(ctx, &binding, uid).await? {
                    // Gone already: nothing more to do for it.
                    return Ok(None);
                }
                let note = format!(
                    "{binding} deleted; saved in SuspendedBinding {}",
                    saved::save_name(&binding)
                );
                suspended(ctx, policy, &binding, note).await;
            }
            Step::Reduce(binding, kept, version) => {
                reduce(ctx, &binding, &kept, version).await?;
                let note = format!(
                    "{binding}: suspended subjects removed, {} kept; saved in SuspendedBinding {}",
                    describe_subjects(&kept),
                    saved::save_name(&binding)
                );
                suspended(ctx, policy, &binding, note).await;
            }
            Step::Restore(binding) => {
                let current = versions.get(&binding.binding);
                if let Some(why) = restore(ctx, policy, &binding, current).await? {
                    return Ok(Some(why));
                }
            }
            Step::Forget(binding) => forget(ctx, &binding).await?,
        }
    }
    Ok(None)
}

/// The API of the binding's kind, in its namespace. Dynamic, so that one code path serves
/// RoleBindings and ClusterRoleBindings alike.
fn binding_api(ctx: &Context, binding: &BindingRef) -> Api<DynamicObject> {
    match binding.kind {
        BindingKind::RoleBinding => Api::namespaced_with(
            ctx.client.clone(),
            binding.namespace.as_deref().unwrap_or_default(),
            &ApiResource::erase::<RoleBinding>(&()),
        ),
        BindingKind::ClusterRoleBinding => Api::all_with(
            ctx.client.clone(),
            &ApiResource::erase::<ClusterRoleBinding>(&()),
        ),
    }
}

/// The saved binding as an object to create or replace.
fn object_of(binding: &Binding) -> DynamicObject {
    let value = match binding.binding.kind {
        BindingKind::RoleBinding => serde_json::to_value(saved::to_role_binding(binding)),
        BindingKind::ClusterRoleBinding => {
            serde_json::to_value(saved::to_cluster_role_binding(binding))
        }
    };
    let mut value = value.expect("a binding serialises");
    let kind = format!("{:?}", binding.binding.kind);
    value["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
    value["kind"] = kind.into();
    serde_json::from_value(value).expect("a binding is an object")
}

/// Writes the ledger entry; one that exists already (a run cut short) is the first save,
/// the one that returns.
async fn save(ctx: &Context, entry: &Entry, uid: Option<String>) -> Result<(), Error> {
    let object = saved::to_object(entry, uid);
    match Api::<SuspendedBinding>::all(ctx.client.clone())
        .create(&PostParams::default(), &object)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(error) => Err(super::kube_error("save", entry.binding.binding.to_string())(error)),
    }
}

/// Deletes the binding if it is still the one with `uid`; `false` when it was gone.
async fn delete_binding(
    ctx: &Context,
    binding: &BindingRef,
    uid: Option<String>,
) -> Result<bool, Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match binding_api(ctx, binding)
        .delete(&binding.name, &params)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(error) => Err(super::kube_error("suspend", binding.to_string())(error)),
    }
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
    binding_api(ctx, binding)
        .patch(&binding.name, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(super::kube_error("suspend", binding.to_string()))
}

async fn suspended(ctx: &Context, policy: &AccessPolicy, binding: &BindingRef, note: String) {
    info!(policy = %policy.name_any(), binding = %binding, "binding suspended");
    let related = Some(binding_reference(binding));
    publish(
        ctx,
        policy,
        EventType::Normal,
        "BindingSuspended",
        note,
        related,
    )
    .await;
}

/// Puts the saved binding back and says so. `Ok(Some(why))` when it cannot come back and
/// its entry stays for a cluster admin.
async fn restore(
    ctx: &Context,
    policy: &AccessPolicy,
    binding: &Binding,
    current: Option<&Found>,
) -> Result<Option<String>, Error> {
    let name = policy.name_any();
    let related = Some(binding_reference(&binding.binding));
    match put_back(ctx, binding, current).await? {
        Ok(()) => {
            info!(policy = %name, binding = %binding.binding, "binding restored");
            let note = format!("{} restored as it was saved", binding.binding);
            publish(
                ctx,
                policy,
                EventType::Normal,
                "BindingRestored",
                note,
                related,
            )
            .await;
            Ok(None)
        }
        Err(Unrestorable { why, drop }) => {
            warn!(policy = %name, binding = %binding.binding, %why, "binding not restored");
            let note = format!("{}: {why}", binding.binding);
            publish(
                ctx,
                policy,
                EventType::Warning,
                "BindingNotRestored",
                note.clone(),
                related,
            )
            .await;
            // Kept in the ledger unless it can never come back: nothing is lost, a cluster
            // admin can act.
            Ok((!drop).then_some(note))
        }
    }
}

/// Deletes the ledger entry of a binding that is back.
async fn forget(ctx: &Context, binding: &BindingRef) -> Result<(), Error> {
    let save = saved::save_name(binding);
    match Api::<SuspendedBinding>::all(ctx.client.clone())
        .delete(&save, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(super::kube_error(
            "delete",
            format!("SuspendedBinding {save}"),
        )(error)),
    }
}

fn describe_subjects(subjects: &[RbacSubject]) -> String {
    subjects
        .iter()
        .map(|s| format!("{} {}", s.kind, s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a saved binding did not come back; `drop` when it never can (its namespace is gone)
/// and the entry goes.
struct Unrestorable {
    why: String,
    drop: bool,
}

/// Whether the API server refused a write because its namespace is being deleted.
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Creates the saved binding again, or replaces what has its name.
async fn put_back(
    ctx: &Context,
    binding: &Binding,
    current: Option<&Found>,
) -> Result<Result<(), Unrestorable>, Error> {
    let what = binding.binding.to_string();
    let api = binding_api(ctx, &binding.binding);
    let mut object = object_of(binding);
    let post = PostParams::default();
    // The role of a binding cannot change: a binding of the same name with another role is
    // deleted first.
    let result = match current {
        Some(found) if found.binding.role_ref == binding.role_ref => {
            object.metadata.resource_version = found.resource_version.clone();
            api.replace(&binding.binding.name, &post, &object).await
        }
        Some(_) => {
            super::delete(&api, &binding.binding.name, &what).await?;
            api.create(&post, &object).await
        }
        None => api.create(&post, &object).await,
    };
    let namespace = binding.binding.namespace.as_deref().unwrap_or_default();
    match result {
        Ok(_) => Ok(Ok(())),
        // A namespace gone, or being deleted, takes its RoleBindings with it.
        Err(kube::Error::Api(status))
            if binding.binding.kind == BindingKind::RoleBinding
                && (status.is_not_found() || namespace_terminating(&status)) =>
        {
            Ok(Err(Unrestorable {
                why: format!(
                    "namespace {namespace} no longer exists or is being deleted: the binding is dropped"
                ),
                drop: true,
            }))
        }
        // The operator may not bind this role (the chart's grantable roles), or an
        // admission policy refuses it: a cluster admin has to put it back.
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
            Ok(Err(Unrestorable {
                why: format!(
                    "the API server refused to restore it ({}); it stays saved in SuspendedBinding {} for a cluster admin",
                    status.message,
                    saved::save_name(&binding.binding)
                ),
                drop: false,
            }))
        }
        Err(error) => Err(super::kube_error("restore", what)(error)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(name: &str, spec: serde_json::Value) -> AccessPolicy {
        serde_json::from_value(json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": spec
        }))
        .unwrap()
    }

    fn incident(name: &str, state: &str, policies: &[&str]) -> Incident {
        serde_json::from_value(json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
            "metadata": {"name": name},
            "spec": {"mode": "Real", "state": state, "compromisedSince": "2026-11-01T00:00:00Z",
                     "accessPolicies": policies}
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn any_policy_in_lockdown_locks_the_cluster_and_break_glass_of_any_counts() {
        let policies = [
            policy(
                "a",
                json!({"mode": "Normal",
                "breakGlass": [{"kind": "Group", "name": "duty-officers"}],
                "grants": [{"name": "g", "subject": {"kind": "User", "name": "tech"},
                            "clusterRole": "view", "namespaces": ["ns"],
                            "expiresAt": "2027-01-01T00:00:00Z", "reason": "r"}]}),
            ),
            policy("b", json!({"mode": "Lockdown"})),
        ];
        let mine = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let selection = Selection {
            mine: &mine,
            deleting: None,
        };
        let (rules, locked_by) = rules_of(&policies, &[], &selection, now());
        assert!(rules.active);
        assert_eq!(locked_by, ["b"]);
        assert_eq!(rules.break_glass.len(), 1);
        assert_eq!(rules.grants.len(), 1);
        assert_eq!(rules.grants[0].binding.name, "resurgo.grant.a.g");
        assert_eq!(rules.service_accounts_since, None);

        // The one in Lockdown being deleted: no lockdown any more; nor when another
        // operator's policy.
        let deleting = Selection {
            mine: &mine,
            deleting: Some("b"),
        };
        assert!(!rules_of(&policies, &[], &deleting, now()).0.active);
        let only_a = BTreeSet::from(["a".to_owned()]);
        let other = Selection {
            mine: &only_a,
            deleting: None,
        };
        assert!(!rules_of(&policies, &[], &other, now()).0.active);
    }

    #[test]
    fn an_open_real_incident_locks_its_policies_and_dates_service_account_bindings() {
        let policies = [policy("a", json!({"mode": "Normal"}))];
        let mine = BTreeSet::from(["a".to_owned()]);
        let selection = Selection {
            mine: &mine,
            deleting: None,
        };
        let open = [incident("ransomware", "Open", &["a"])];
        let (rules, locked_by) = rules_of(&policies, &open, &selection, now());
        assert_eq!(locked_by, ["a"]);
        assert_eq!(
            rules.service_accounts_since,
            Some("2026-11-01T00:00:00Z".parse().unwrap())
        );
        let closed = [incident("ransomware", "Closed", &["a"])];
        let (rules, _) = rules_of(&policies, &closed, &selection, now());
        assert!(!rules.active);
        assert_eq!(rules.service_accounts_since, None);
    }
}
