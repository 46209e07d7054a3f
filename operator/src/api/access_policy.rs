//! AccessPolicy: who may do what, until when, and the lockdown that takes it all away.

use k8s_openapi::{
    api::rbac::v1::PolicyRule,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::DNS_LABEL;

/// Access to the cluster as a policy: time-bound grants that the operator turns into
/// RoleBindings and revokes at expiry, break-glass subjects, remote-access rules, and a
/// `Lockdown` mode that suspends every human binding not break-glass, saving each one so
/// that returning to `Normal` restores it exactly.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    doc = "Time-bound access grants, break-glass subjects, remote-access rules, and a reversible Lockdown that suspends every human binding that is not break-glass.",
    plural = "accesspolicies",
    shortname = "ap",
    category = "resurgo",
    status = "AccessPolicyStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(
        name = "Grants",
        type_ = "integer",
        json_path = ".status.activeGrantCount",
        description = "Grants in force"
    ),
    printcolumn(
        name = "Suspended",
        type_ = "integer",
        json_path = ".status.suspendedBindings",
        description = "Bindings suspended by the lockdown"
    ),
    printcolumn(name = "Next-Expiry", type_ = "date", json_path = ".status.nextExpiry"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The name is the value of the `resurgo.dev/access-policy` label on everything the
    // policy makes and saves, and label values have at most 63 characters.
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("an AccessPolicy name has at most 63 characters: it labels every binding the policy makes")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Lockdown' || !has(self.grants) || self.grants.all(g, has(g.expiresAt))")
    .message("while mode is Lockdown every grant must have expiresAt")
    .field_path(".grants")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.grants) || self.grants.all(g, !has(g.policyRole) || (has(self.roles) && self.roles.exists(r, r.name == g.policyRole)))")
    .message("every grant's policyRole must be the name of one of spec.roles")
    .field_path(".grants"))]
pub struct AccessPolicySpec {
    /// `Normal`, or `Lockdown`: every RoleBinding and ClusterRoleBinding of a human subject
    /// (User or Group, other than system: ones and break-glass subjects) is suspended,
    /// including bindings the operator did not create, and only grants with an expiry and
    /// break-glass subjects keep access. ServiceAccount subjects are never suspended. A
    /// binding is saved (a Secret in the operator's namespace) before it is deleted, or
    /// before its human subjects are removed when it also binds ServiceAccounts; returning
    /// to `Normal` restores each one exactly (subjects, roleRef, labels, annotations).
    #[serde(default)]
    pub mode: AccessMode,

    /// Roles defined by this policy, for grants that need less than the built-in
    /// ClusterRoles. Each becomes a ClusterRole `resurgo.role.POLICY.ROLE` owned by the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub roles: Vec<PolicyRole>,

    /// Access given to a subject, on some namespaces or cluster-wide, until an expiry. A
    /// lockdown leaves grants in place (in Lockdown every grant must have an expiry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub grants: Vec<Grant>,

    /// Subjects whose bindings a lockdown never suspends: the emergency services' accounts
    /// and the people who must be able to act during an incident. Users and Groups match by
    /// kind and name. A subject added during a lockdown gets back at once every suspended
    /// binding whose human subjects are then all break-glass. ServiceAccounts keep their
    /// access in a lockdown anyway; listing them
    /// documents that they must. Break-glass is about RBAC only: network access from
    /// outside the cluster is what remoteAccess says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub break_glass: Vec<Subject>,

    /// Network sources allowed to reach namespaces from outside the cluster, rendered as
    /// NetworkPolicies. In Lockdown only the rules with allowDuringLockdown stay; the others
    /// are removed and come back with Normal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub remote_access: Vec<RemoteAccess>,
}

/// Normal operation or lockdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    #[default]
    Normal,
    Lockdown,
}

/// A role defined by the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRole {
    /// Name of the role within the policy.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// The RBAC rules of the role.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<PolicyRule>,
}

/// Access for one subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clusterRole) != has(self.policyRole)")
    .message("set exactly one of clusterRole or policyRole"))]
pub struct Grant {
    /// Name of the grant, unique within the policy; it names the bindings created.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// Who is given access.
    pub subject: Subject,
    /// A ClusterRole that exists in the cluster, such as view, edit or admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_role: Option<String>,
    /// A role from this policy's spec.roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub policy_role: Option<String>,
    /// The namespaces the role applies in (a RoleBinding `resurgo.grant.POLICY.GRANT` in
    /// each, owned by the policy). Empty: cluster-wide (one ClusterRoleBinding of that name).
    /// A namespace that does not exist yet stalls the policy until it is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// When the access ends; the operator removes the bindings at this second. Required
    /// while the policy is in Lockdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Why the access is given, such as the ticket or request it answers.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// An RBAC subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' ? has(self.namespace) : !has(self.namespace)")
    .message("a ServiceAccount subject needs a namespace; a User or Group must not have one")
    .field_path(".namespace"))]
pub struct Subject {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// The user, group or service account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: Option<String>,
}

/// Kind of RBAC subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

/// Remote access to namespaces from given network sources. Each rule becomes, in each of
/// its namespaces, a NetworkPolicy `resurgo.remote.POLICY.RULE` owned by the policy, that
/// selects every pod and allows ingress from sourceCIDRs on the ports. NetworkPolicies only
/// allow: pair the namespaces with a default-deny policy (RecoveryPlan namespaces have one),
/// so that from outside the cluster only these sources get in. In Lockdown only the rules
/// with allowDuringLockdown remain, until their expiresAt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.allowDuringLockdown || has(self.expiresAt)")
    .message("remote access kept during a lockdown must have expiresAt")
    .field_path(".expiresAt")
    .reason(Reason::FieldValueRequired))]
pub struct RemoteAccess {
    /// Name of the rule; it names the NetworkPolicies created.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// Namespaces the sources may reach.
    #[schemars(length(min = 1, max = 64), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// Source address ranges, such as 10.12.0.0/16: network addresses, with no bit set
    /// after the prefix length (10.12.0.5/16 is refused: write 10.12.0.0/16, or
    /// 10.12.0.5/32 for the one host).
    #[serde(rename = "sourceCIDRs")]
    #[schemars(length(min = 1, max = 64), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))")
        .message("every entry must be a CIDR such as 10.12.0.0/16 or 2001:db8::/32"))]
    // The API server refuses a NetworkPolicy whose ipBlock has host bits, so the schema
    // must too: accepted here, the rule could never be applied. `isCIDR` alone allows them.
    #[x_kube(validation = Rule::new("self.all(c, !isCIDR(c) || cidr(c) == cidr(c).masked())")
        .message("every entry must be a network address with no bit set after the prefix length, such as 10.12.0.0/16 (not 10.12.0.5/16) or 2001:db8::/32; a single host is 10.12.0.5/32"))]
    pub source_cidrs: Vec<String>,
    /// TCP ports allowed, from 1 to 65535; all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    // Port 0 fits a u16 but a NetworkPolicy refuses it.
    #[schemars(inner(range(min = 1)))]
    pub ports: Vec<u16>,
    /// Keep this rule while the policy is in Lockdown (a case-by-case remote access, on
    /// request). Requires expiresAt. Rules without it are removed during a lockdown.
    #[serde(default)]
    pub allow_during_lockdown: bool,
    /// When the rule ends; the operator removes its NetworkPolicies at this second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Why remote access is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Access as it stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The mode in force (it can lag the spec while a lockdown or its lifting is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AccessMode>,
    /// Ready (the policy is fully applied) and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Grants in force, with their expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_grants: Vec<ActiveGrant>,
    /// Number of grants in force.
    #[serde(default)]
    pub active_grant_count: u32,
    /// The soonest expiry among grants and remote-access rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<Time>,
    /// Bindings the cluster's lockdown holds suspended (SuspendedBindings), whichever policy
    /// suspended them.
    #[serde(default)]
    pub suspended_bindings: u32,
    /// When the lockdown in force began: bindings made after it stay suspended when it ends
    /// (see SuspendedBinding `heldAfterLockdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockdown_since: Option<Time>,
}

/// A grant in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveGrant {
    /// Name of the grant.
    pub name: String,
    /// When it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The bindings that carry it, as `RoleBinding/NAMESPACE/NAME` or `ClusterRoleBinding/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<String>,
}
