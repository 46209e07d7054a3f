//! What a policy asks for at a given moment, built from the policy alone: the bindings of
//! its grants in force, the ClusterRoles of its own roles, the NetworkPolicies of its
//! remote-access rules in force, and when the next of them ends.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
        rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject as RbacSubject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, OwnerReference, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::api::ObjectMeta;

use crate::{
    api::access_policy::{AccessMode, AccessPolicySpec, Grant, RemoteAccess, Subject, SubjectKind},
    labels,
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Name of the bindings that carry a grant.
pub fn binding_name(policy: &str, grant: &str) -> String {
    format!("resurgo.grant.{policy}.{grant}")
}

/// Name of the ClusterRole of a policy-defined role.
pub fn cluster_role_name(policy: &str, role: &str) -> String {
    format!("resurgo.role.{policy}.{role}")
}

/// Name of the NetworkPolicy of a remote-access rule, in each of its namespaces.
pub fn network_policy_name(policy: &str, rule: &str) -> String {
    format!("resurgo.remote.{policy}.{rule}")
}

/// The policy as the controller applies it, given the open Real incidents that name it
/// (`locking`): in Lockdown while its own mode says so or any such incident is open. The API
/// server refuses grants without expiry only when the policy's own mode is Lockdown; during
/// a lockdown an incident imposes, such grants are not in force, and their names are
/// returned so that the status can say so.
pub fn effective(spec: &AccessPolicySpec, locking: &[String]) -> (AccessPolicySpec, Vec<String>) {
    let mut spec = spec.clone();
    if locking.is_empty() {
        return (spec, Vec::new());
    }
    spec.mode = AccessMode::Lockdown;
    let refused = spec
        .grants
        .iter()
        .filter(|g| g.expires_at.is_none())
        .map(|g| g.name.clone())
        .collect();
    spec.grants.retain(|g| g.expires_at.is_some());
    (spec, refused)
}

/// Whether something that ends at `expires_at` is still in force at `now`: up to the second
/// before, not at it.
pub fn in_force(expires_at: Option<&Time>, now: Timestamp) -> bool {
    expires_at.is_none_or(|t| now < t.0)
}

/// The grants in force at `now`.
pub fn active_grants(spec: &AccessPolicySpec, now: Timestamp) -> Vec<&Grant> {
    spec.grants
        .iter()
        .filter(|g| in_force(g.expires_at.as_ref(), now))
        .collect()
}

/// The remote-access rules in force at `now`: not expired, and in Lockdown only those
/// marked `allowDuringLockdown`.
pub fn active_remote_access(spec: &AccessPolicySpec, now: Timestamp) -> Vec<&RemoteAccess> {
    spec.remote_access
        .iter()
        .filter(|r| in_force(r.expires_at.as_ref(), now))
        .filter(|r| spec.mode == AccessMode::Normal || r.allow_during_lockdown)
        .collect()
}

/// The soonest moment after `now` at which a grant or a remote-access rule in force ends:
/// the time of the next reconcile.
pub fn next_expiry(spec: &AccessPolicySpec, now: Timestamp) -> Option<Timestamp> {
    let grants = active_grants(spec, now)
        .into_iter()
        .filter_map(|g| g.expires_at.as_ref());
    let rules = active_remote_access(spec, now)
        .into_iter()
        .filter_map(|r| r.expires_at.as_ref());
    grants.chain(rules).map(|t| t.0).min()
}

fn labels_for(policy: &str, part: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY_KEY.to_owned(),
            labels::MANAGED_BY.to_owned(),
        ),
        (labels::ACCESS_POLICY.to_owned(), policy.to_owned()),
        (labels::PART.to_owned(), part.to_owned()),
    ])
}

fn rbac_subject(subject: &Subject) -> RbacSubject {
    match subject.kind {
        SubjectKind::ServiceAccount => RbacSubject {
            kind: "ServiceAccount".into(),
            name: subject.name.clone(),
            namespace: subject.namespace.clone(),
            api_group: None,
        },
        kind => RbacSubject {
            kind: format!("{kind:?}"),
            name: subject.name.clone(),
            namespace: None,
            api_group: Some(RBAC_GROUP.into()),
        },
    }
}

/// The objects a policy wants at `now`.
#[derive(Debug, Default)]
pub struct Desired {
    pub cluster_roles: Vec<ClusterRole>,
    /// With the grant each carries.
    pub role_bindings: Vec<(String, RoleBinding)>,
    pub cluster_role_bindings: Vec<(String, ClusterRoleBinding)>,
    pub network_policies: Vec<NetworkPolicy>,
}

/// Everything `spec` wants at `now`, owned by `owner` (the policy).
pub fn desired(
    spec: &AccessPolicySpec,
    policy: &str,
    owner: &OwnerReference,
    now: Timestamp,
) -> Desired {
    let meta = |name: String,
                namespace: Option<&str>,
                mut labels: BTreeMap<String, String>,
                extra: Option<(&str, &str)>| {
        if let Some((key, value)) = extra {
            labels.insert(key.to_owned(), value.to_owned());
        }
        ObjectMeta {
            name: Some(name),
            namespace: namespace.map(str::to_owned),
            labels: Some(labels),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        }
    };
    let mut out = Desired::default();
    for role in &spec.roles {
        out.cluster_roles.push(ClusterRole {
            metadata: meta(
                cluster_role_name(policy, &role.name),
                None,
                labels_for(policy, "policy-role"),
                None,
            ),
            rules: Some(role.rules.clone()),
            aggregation_rule: None,
        });
    }
    for grant in active_grants(spec, now) {
        let role_ref = match (&grant.cluster_role, &grant.policy_role) {
            (Some(cluster_role), _) => cluster_role.clone(),
            (None, Some(role)) => cluster_role_name(policy, role),
            (None, None) => continue,
        };
        let role_ref = RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: role_ref,
        };
        let subjects = Some(vec![rbac_subject(&grant.subject)]);
        let name = binding_name(policy, &grant.name);
        let grant_label = Some((labels::GRANT, grant.name.as_str()));
        if grant.namespaces.is_empty() {
            out.cluster_role_bindings.push((
                grant.name.clone(),
                ClusterRoleBinding {
                    metadata: meta(name, None, labels_for(policy, "grant"), grant_label),
                    role_ref,
                    subjects,
                },
            ));
        } else {
            for namespace in &grant.namespaces {
                out.role_bindings.push((
                    grant.name.clone(),
                    RoleBinding {
                        metadata: meta(
                            name.clone(),
                            Some(namespace),
                            labels_for(policy, "grant"),
                            grant_label,
                        ),
                        role_ref: role_ref.clone(),
                        subjects: subjects.clone(),
                    },
                ));
            }
        }
    }
    for rule in active_remote_access(spec, now) {
        let ports = (!rule.ports.is_empty()).then(|| {
            rule.ports
                .iter()
                .map(|port| NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(i32::from(*port))),
                    end_port: None,
                })
                .collect()
        });
        let from: Vec<NetworkPolicyPeer> = rule
            .source_cidrs
            .iter()
            .map(|cidr| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.clone(),
                    except: None,
                }),
                ..Default::default()
            })
            .collect();
        for namespace in &rule.namespaces {
            out.network_policies.push(NetworkPolicy {
                metadata: meta(
                    network_policy_name(policy, &rule.name),
                    Some(namespace),
                    labels_for(policy, "remote-access"),
                    None,
                ),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(vec!["Ingress".into()]),
                    ingress: Some(vec![NetworkPolicyIngressRule {
                        from: Some(from.clone()),
                        ports: ports.clone(),
                    }]),
                    egress: None,
                }),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> AccessPolicySpec {
        serde_json::from_value(value).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "resurgo.dev/v1alpha1".into(),
            kind: "AccessPolicy".into(),
            name: "p".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn example() -> AccessPolicySpec {
        spec(json!({
            "mode": "Normal",
            "roles": [{"name": "reader", "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}],
            "grants": [
                {"name": "staff", "subject": {"kind": "Group", "name": "clinical-it"}, "clusterRole": "edit",
                 "namespaces": ["radiology", "laboratory"], "reason": "staff"},
                {"name": "tech", "subject": {"kind": "User", "name": "m.rossi"}, "policyRole": "reader",
                 "expiresAt": "2026-12-01T20:00:00Z", "reason": "ticket"},
                {"name": "old", "subject": {"kind": "ServiceAccount", "name": "robot", "namespace": "ops"},
                 "clusterRole": "view", "expiresAt": "2026-01-01T00:00:00Z", "reason": "gone"}
            ],
            "remoteAccess": [
                {"name": "wan", "namespaces": ["radiology"], "sourceCIDRs": ["10.12.0.0/16"], "ports": [8443]},
                {"name": "vendor", "namespaces": ["radiology"], "sourceCIDRs": ["203.0.113.24/32"],
                 "allowDuringLockdown": true, "expiresAt": "2026-12-01T18:00:00Z", "reason": "ticket"}
            ]
        }))
    }

    #[test]
    fn grants_become_role_bindings_per_namespace_or_one_cluster_role_binding() {
        let d = desired(&example(), "p", &owner(), at("2026-11-01T00:00:00Z"));
        let names: Vec<_> = d
            .role_bindings
            .iter()
            .map(|(g, rb)| (g.as_str(), rb.metadata.namespace.clone().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("staff", "radiology".into()),
                ("staff", "laboratory".into())
            ]
        );
        let (grant, crb) = &d.cluster_role_bindings[0];
        assert_eq!(grant, "tech");
        assert_eq!(crb.role_ref.name, "resurgo.role.p.reader");
        assert_eq!(crb.subjects.as_ref().unwrap()[0].name, "m.rossi");
        assert_eq!(
            d.cluster_role_bindings.len(),
            1,
            "the expired grant has no binding"
        );
        assert_eq!(
            d.cluster_roles[0].metadata.name.as_deref(),
            Some("resurgo.role.p.reader")
        );
        let meta = &crb.metadata;
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "u");
        assert_eq!(meta.labels.as_ref().unwrap()[labels::GRANT], "tech");
    }

    #[test]
    fn a_grant_ends_at_its_expiry_second() {
        let s = example();
        let before = at("2026-12-01T19:59:59.999Z");
        let expiry = at("2026-12-01T20:00:00Z");
        assert!(active_grants(&s, before).iter().any(|g| g.name == "tech"));
        assert!(!active_grants(&s, expiry).iter().any(|g| g.name == "tech"));
    }

    #[test]
    fn the_next_expiry_is_the_soonest_of_grants_and_remote_rules_in_force() {
        let s = example();
        assert_eq!(
            next_expiry(&s, at("2026-11-01T00:00:00Z")),
            Some(at("2026-12-01T18:00:00Z"))
        );
        assert_eq!(
            next_expiry(&s, at("2026-12-01T18:00:00Z")),
            Some(at("2026-12-01T20:00:00Z"))
        );
        assert_eq!(next_expiry(&s, at("2026-12-01T20:00:00Z")), None);
    }

    #[test]
    fn an_open_incident_locks_the_policy_down_and_grants_without_expiry_are_not_in_force() {
        let s = example();
        let (same, refused) = effective(&s, &[]);
        assert_eq!((same, refused), (s.clone(), vec![]));
        let (locked, refused) = effective(&s, &["ransomware".into()]);
        assert_eq!(locked.mode, AccessMode::Lockdown);
        assert_eq!(refused, ["staff"]);
        let names: Vec<_> = locked.grants.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["tech", "old"]);
    }

    #[test]
    fn lockdown_keeps_only_remote_access_allowed_during_it() {
        let mut s = example();
        let now = at("2026-11-01T00:00:00Z");
        let normal = desired(&s, "p", &owner(), now);
        assert_eq!(normal.network_policies.len(), 2);
        s.mode = AccessMode::Lockdown;
        let locked = desired(&s, "p", &owner(), now);
        assert_eq!(locked.network_policies.len(), 1);
        let policy = &locked.network_policies[0];
        assert_eq!(
            policy.metadata.name.as_deref(),
            Some("resurgo.remote.p.vendor")
        );
        let rule = &policy.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        assert_eq!(
            rule.from.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "203.0.113.24/32"
        );
    }
}
