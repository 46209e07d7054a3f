//! SuspendedBinding: the lockdown ledger, one entry per binding a lockdown took away.
//!
//! Cluster-scoped on purpose: a namespace admin (the attacker a lockdown is for) cannot
//! create, change or delete one, so what comes back at the end of a lockdown is only what
//! the operator itself recorded. The operator writes these; people read them
//! (`kubectl get suspendedbindings`) and, as cluster admins, may release a held one.

use k8s_openapi::{
    api::rbac::v1::{RoleRef, Subject},
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A RoleBinding or ClusterRoleBinding that a lockdown suspended, saved exactly as it was,
/// so that the end of every lockdown that covers it puts it back as it was.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "SuspendedBinding",
    doc = "A RoleBinding or ClusterRoleBinding suspended by a lockdown, saved exactly as it was. Written by the operator; cluster-scoped so that only cluster admins and the operator can write it.",
    plural = "suspendedbindings",
    shortname = "sb",
    category = "resurgo",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.binding.kind"),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.binding.namespace"
    ),
    printcolumn(name = "Binding", type_ = "string", json_path = ".spec.binding.name"),
    printcolumn(
        name = "Role",
        type_ = "string",
        json_path = ".spec.binding.roleRef.name"
    ),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(
        name = "Held",
        type_ = "boolean",
        json_path = ".spec.heldAfterLockdown",
        description = "Made during a lockdown: stays suspended after it until released"
    ),
    printcolumn(name = "Suspended", type_ = "date", json_path = ".spec.suspendedAt")
)]
#[serde(rename_all = "camelCase")]
pub struct SuspendedBindingSpec {
    /// The binding as it was when it was suspended.
    pub binding: SavedBinding,
    /// The AccessPolicy whose reconcile saved it (for people; and, with several operators
    /// in one cluster, the operator whose policy it is restores it).
    #[serde(default)]
    pub policy: String,
    /// The binding's uid when it was suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// When the binding was created (its creationTimestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
    /// When the lockdown saved it.
    pub suspended_at: Time,
    /// The binding was made while a lockdown was in force: the end of the lockdown does not
    /// bring it back (it may be an attacker's). A cluster admin brings it back by setting
    /// `release`, or drops it by deleting this entry.
    #[serde(default)]
    pub held_after_lockdown: bool,
    /// Set by a cluster admin: restore this held binding once no lockdown is in force.
    #[serde(default)]
    pub release: bool,
}

/// A RoleBinding or ClusterRoleBinding without the fields the API server sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavedBinding {
    /// RoleBinding or ClusterRoleBinding.
    pub kind: SavedBindingKind,
    /// Namespace of a RoleBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the binding.
    pub name: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Its owner references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Its subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The role it binds.
    pub role_ref: RoleRef,
}

/// The kind of a saved binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SavedBindingKind {
    RoleBinding,
    ClusterRoleBinding,
}
