//! The status a reconcile writes, from the policy, the moment, what the reconcile found
//! missing and how many bindings the lockdown holds: mode, grants in force with their
//! bindings, the next expiry, and the kstatus conditions `Ready` and `Stalled`.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::desired::{self, binding_name};
use crate::{
    api::access_policy::{AccessMode, AccessPolicy, AccessPolicyStatus, ActiveGrant},
    conditions::conditions,
};

/// What a reconcile saw beyond the policy: the cluster's lockdown, and an apply the API
/// server refused.
#[derive(Debug, Default)]
pub struct Observed {
    /// Bindings held suspended in the ledger, cluster-wide.
    pub suspended: u32,
    /// When the lockdown in force began (none in force: `None`).
    pub since: Option<Timestamp>,
    /// Every policy in Lockdown.
    pub locked_by: Vec<String>,
    /// Saved bindings the API server refused to restore, each with why.
    pub not_restored: Vec<String>,
    /// An object of the policy the API server refused, and its message.
    pub failed: Option<String>,
}

/// The status after a reconcile that applied everything it could. `missing` lists the
/// namespaces that grants or remote-access rules name and that do not exist: their objects
/// could not be made, so the policy is not Ready, and Stalled until the namespaces appear.
///
/// `policy` carries the effective spec (see [`desired::effective`]); `locking` names the
/// open incidents that lock it down and `refused` the grants without expiry that such a
/// lockdown keeps out of force: they stall the policy until they get an expiry.
pub fn compute(
    policy: &AccessPolicy,
    previous: &AccessPolicyStatus,
    missing: &[String],
    locking: &[String],
    refused: &[String],
    lockdown: &Observed,
    now: Timestamp,
) -> AccessPolicyStatus {
    let suspended = lockdown.suspended;
    let spec = &policy.spec;
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let generation = policy.metadata.generation;
    let active_grants: Vec<ActiveGrant> = desired::active_grants(spec, now)
        .into_iter()
        .map(|grant| ActiveGrant {
            name: grant.name.clone(),
            expires_at: grant.expires_at.clone(),
            bindings: if grant.namespaces.is_empty() {
                vec![format!(
                    "ClusterRoleBinding/{}",
                    binding_name(name, &grant.name)
                )]
            } else {
                grant
                    .namespaces
                    .iter()
                    .filter(|ns| !missing.contains(ns))
                    .map(|ns| format!("RoleBinding/{ns}/{}", binding_name(name, &grant.name)))
                    .collect()
            },
        })
        .collect();
    let by = if locking.is_empty() {
        String::new()
    } else {
        format!(" (by Incident {})", locking.join(", "))
    };
    let mut problems = Vec::new();
    if let Some(failed) = &lockdown.failed {
        problems.push(("ApplyFailed", failed.clone()));
    }
    if !lockdown.not_restored.is_empty() {
        problems.push((
            "BindingNotRestored",
            format!(
                "{} saved bindings could not be restored: {}",
                lockdown.not_restored.len(),
                lockdown.not_restored.join("; ")
            ),
        ));
    }
    if !refused.is_empty() {
        problems.push((
            "GrantWithoutExpiry",
            format!(
                "grants {} have no expiresAt, which a lockdown requires{by}: they are not in force until they get one",
                refused.join(", ")
            ),
        ));
    }
    if !missing.is_empty() {
        problems.push((
            "NamespaceNotFound",
            format!(
                "namespaces {} do not exist: the grants and remote-access rules there wait for them",
                missing.join(", ")
            ),
        ));
    }
    // A grant applied after its expiry gives no access; saying so tells whoever wrote it
    // why the binding they expected is not there.
    let expired: Vec<String> = spec
        .grants
        .iter()
        .filter_map(|g| {
            let at = g.expires_at.as_ref()?;
            (!desired::in_force(Some(at), now)).then(|| format!("{} at {}", g.name, at.0))
        })
        .collect();
    let expired = if expired.is_empty() {
        String::new()
    } else {
        format!(" (expired: {})", expired.join(", "))
    };
    let (ready, stalled) = if problems.is_empty() {
        let message = match spec.mode {
            AccessMode::Normal if lockdown.locked_by.is_empty() => format!(
                "{} grants in force{expired}; no binding suspended",
                active_grants.len()
            ),
            AccessMode::Normal => format!(
                "{} grants in force{expired}; {suspended} bindings stay suspended while {} in Lockdown",
                active_grants.len(),
                lockdown.locked_by.join(", ")
            ),
            AccessMode::Lockdown => format!(
                "locked down{by}: {suspended} bindings suspended; {} grants in force{expired}",
                active_grants.len()
            ),
        };
        let reason = match spec.mode {
            AccessMode::Normal => "Applied",
            AccessMode::Lockdown => "LockedDown",
        };
        (
            (true, reason, message),
            (false, reason, "nothing blocks the policy".to_owned()),
        )
    } else {
        let reason = problems[0].0;
        let message = problems
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        ((false, reason, message.clone()), (true, reason, message))
    };
    AccessPolicyStatus {
        observed_generation: generation,
        mode: Some(spec.mode),
        conditions: conditions(
            &previous.conditions,
            generation,
            now,
            [
                ("Ready", ready.0, ready.1, &ready.2),
                ("Stalled", stalled.0, stalled.1, &stalled.2),
            ],
        ),
        active_grant_count: active_grants.len() as u32,
        active_grants,
        next_expiry: desired::next_expiry(spec, now).map(Time),
        suspended_bindings: suspended,
        lockdown_since: match spec.mode {
            AccessMode::Lockdown => lockdown.since.map(Time),
            AccessMode::Normal => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy() -> AccessPolicy {
        serde_json::from_value(json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": "p", "generation": 4},
            "spec": {
                "mode": "Lockdown",
                "grants": [
                    {"name": "tech", "subject": {"kind": "User", "name": "m.rossi"}, "clusterRole": "edit",
                     "namespaces": ["radiology"], "expiresAt": "2026-12-01T20:00:00Z", "reason": "ticket"},
                    {"name": "old", "subject": {"kind": "User", "name": "x"}, "clusterRole": "view",
                     "expiresAt": "2026-01-01T00:00:00Z", "reason": "gone"}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_locked_down_policy_reports_its_grants_and_suspended_bindings() {
        let now: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let status = compute(
            &policy(),
            &AccessPolicyStatus::default(),
            &[],
            &[],
            &[],
            &Observed {
                suspended: 3,
                ..Default::default()
            },
            now,
        );
        assert_eq!(status.mode, Some(AccessMode::Lockdown));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.active_grant_count, 1);
        assert_eq!(
            status.active_grants[0].bindings,
            ["RoleBinding/radiology/resurgo.grant.p.tech"]
        );
        assert_eq!(
            status.next_expiry.clone().unwrap().0,
            "2026-12-01T20:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(status.suspended_bindings, 3);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(status.conditions[1].status, "False");

        // A later reconcile keeps the transition time of a condition that did not change.
        let later = now + std::time::Duration::from_secs(60);
        let again = compute(
            &policy(),
            &status,
            &[],
            &[],
            &[],
            &Observed {
                suspended: 3,
                ..Default::default()
            },
            later,
        );
        assert_eq!(
            again.conditions[0].last_transition_time,
            ready.last_transition_time
        );
    }

    #[test]
    fn a_grant_without_expiry_under_an_incident_lockdown_stalls_the_policy() {
        let now: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let status = compute(
            &policy(),
            &AccessPolicyStatus::default(),
            &[],
            &["ransomware".into()],
            &["on-call".into()],
            &Observed {
                suspended: 2,
                ..Default::default()
            },
            now,
        );
        assert_eq!(status.mode, Some(AccessMode::Lockdown));
        let stalled = &status.conditions[1];
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "GrantWithoutExpiry")
        );
        assert!(stalled.message.contains("on-call"), "{}", stalled.message);
        assert!(
            stalled.message.contains("Incident ransomware"),
            "{}",
            stalled.message
        );
        assert_eq!(status.conditions[0].status, "False");
    }

    #[test]
    fn a_missing_namespace_stalls_the_policy() {
        let now: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let status = compute(
            &policy(),
            &AccessPolicyStatus::default(),
            &["radiology".into()],
            &[],
            &[],
            &Observed::default(),
            now,
        );
        assert_eq!(status.conditions[0].status, "False");
        assert_eq!(status.conditions[1].status, "True");
        assert!(status.conditions[1].message.contains("radiology"));
        assert!(status.active_grants[0].bindings.is_empty());
    }
}
