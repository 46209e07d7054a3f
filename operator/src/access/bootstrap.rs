//! The control plane's own bindings, which a lockdown never touches: the RoleBindings and
//! ClusterRoleBindings the API server's bootstrap policy creates, matched by name, subjects
//! and role. A binding that merely has one of their names, or their `system:` prefix, or
//! their labels, is not one of them.
//!
//! The YAML files are the bootstrap policy's own golden files from Kubernetes
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/testdata`, v1.36.3, Apache-2.0), which
//! its tests keep equal to what the API server creates.

use std::sync::LazyLock;

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use serde::Deserialize;

use super::{lockdown::Binding, saved};

const FILES: &[&str] = &[
    include_str!("bootstrap/cluster-role-bindings.yaml"),
    include_str!("bootstrap/controller-role-bindings.yaml"),
    include_str!("bootstrap/namespace-role-bindings.yaml"),
];

#[derive(Deserialize)]
struct List {
    items: Vec<serde_json::Value>,
}

static BOOTSTRAP: LazyLock<Vec<Binding>> = LazyLock::new(|| {
    FILES
        .iter()
        .flat_map(|text| {
            serde_yaml::from_str::<List>(text)
                .expect("the bootstrap policy files are valid YAML lists")
                .items
        })
        .map(|item| match item["kind"].as_str() {
            Some("ClusterRoleBinding") => saved::from_cluster_role_binding(
                &serde_json::from_value::<ClusterRoleBinding>(item)
                    .expect("a bootstrap ClusterRoleBinding"),
            ),
            Some("RoleBinding") => saved::from_role_binding(
                &serde_json::from_value::<RoleBinding>(item).expect("a bootstrap RoleBinding"),
            ),
            other => panic!("unexpected kind {other:?} in the bootstrap policy"),
        })
        .collect()
});

/// Whether the binding is one of the control plane's bootstrap bindings, exactly: same
/// kind, namespace and name, same subjects, same role.
pub fn is_bootstrap(binding: &Binding) -> bool {
    BOOTSTRAP.iter().any(|b| {
        b.binding == binding.binding
            && b.subjects == binding.subjects
            && b.role_ref == binding.role_ref
    })
}

/// How many bootstrap bindings there are of each kind.
#[cfg(test)]
fn count(kind: super::lockdown::BindingKind) -> usize {
    BOOTSTRAP.iter().filter(|b| b.binding.kind == kind).count()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::Subject;

    use super::*;
    use crate::access::lockdown::BindingKind;

    fn system_discovery() -> Binding {
        BOOTSTRAP
            .iter()
            .find(|b| b.binding.name == "system:discovery")
            .expect("system:discovery is a bootstrap binding")
            .clone()
    }

    #[test]
    fn the_bootstrap_policy_is_read() {
        assert!(count(BindingKind::ClusterRoleBinding) > 40);
        assert!(count(BindingKind::RoleBinding) >= 7);
        assert!(is_bootstrap(&system_discovery()));
    }

    #[test]
    fn a_look_alike_is_not_bootstrap() {
        // Same name and role, one more subject: an attacker's edit.
        let mut widened = system_discovery();
        widened.subjects.push(Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: "system:unauthenticated".into(),
            namespace: None,
        });
        assert!(!is_bootstrap(&widened));
        // Same content under another name, in a namespace.
        let mut renamed = system_discovery();
        renamed.binding.kind = BindingKind::RoleBinding;
        renamed.binding.namespace = Some("team-a".into());
        assert!(!is_bootstrap(&renamed));
    }
}
