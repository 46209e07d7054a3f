//! The attacker suite: each test plays an attacker with namespace-admin rights (impersonated
//! with `--as`, or a real ServiceAccount token) against the real API server and the operator
//! that tests/run.sh runs, and asserts the outcome the way the API server decides it
//! (SelfSubjectAccessReview, `kubectl auth can-i`) and from watches, never from the
//! operator's logs. docs/security.md lists what each one proves.
//!
//! A lockdown suspends human bindings cluster-wide: the tests here take turns (LOCKDOWN),
//! and no other test binary runs meanwhile.

use std::{collections::BTreeMap, time::Duration};

use futures::{FutureExt, TryStreamExt};
use k8s_openapi::{
    api::{
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::{Namespace, Secret},
        rbac::v1::{ClusterRoleBinding, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    config::AuthInfo,
    runtime::{WatchStreamExt, watcher},
};
use resurgo::{
    access::{lockdown::Binding, saved},
    api::{AccessPolicy, Incident, SuspendedBinding},
};
use resurgo_tests::{
    access::{access, deleted, eventually, namespace, policy, ready, set_mode},
    client, install_crds, kubectl, kubectl_ok, unique_name,
};
use serde_json::json;

static LOCKDOWN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace of the attacker's: `mallory` is its admin, bound by the cluster admin before
/// anything happens.
struct Foothold {
    ns: String,
    mallory: String,
}

async fn foothold(client: &Client) -> Foothold {
    let ns = namespace(client, "atk").await;
    let mallory = unique_name("mallory");
    apply_as(
        None,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "mallory-admin", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": mallory}]
        }),
    );
    Foothold { ns, mallory }
}

/// `kubectl apply` of one object, as `user` (impersonated) or as the cluster admin.
fn apply_as(user: Option<&str>, object: &serde_json::Value) {
    let text = object.to_string();
    let mut args = vec!["apply", "-f", "-"];
    let as_user;
    if let Some(user) = user {
        as_user = format!("--as={user}");
        args.push(&as_user);
    }
    kubectl_ok(&args, Some(&text)).unwrap_or_else(|e| panic!("apply as {user:?}: {e}"));
}

fn role_binding_to_admin(
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    subject: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [subject]
    })
}

fn user(name: &str) -> serde_json::Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

fn group(name: &str) -> serde_json::Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

/// Runs `story`, then, whatever happened, deletes what it names and waits until the
/// policies are gone (their finalizers have run, so nothing stays suspended).
async fn with_cleanup<F>(client: &Client, policies: &[&str], namespaces: &[&str], story: F)
where
    F: std::future::Future<Output = ()>,
{
    let outcome = std::panic::AssertUnwindSafe(story).catch_unwind().await;
    let api: Api<AccessPolicy> = Api::all(client.clone());
    for name in policies {
        deleted(&api, name).await;
    }
    for ns in namespaces {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Attacks 1 and 2 of issue 17: a binding dressed as a grant, `system:authenticated` bound
/// to admin, and a user named like a control-plane component, all made by a namespace admin
/// before the lockdown. Each must lose its access in the lockdown.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn look_alike_grants_and_system_names_do_not_survive_a_lockdown() {
    let _turn = LOCKDOWN.lock().await;
    install_crds().await;
    let client = client().await;
    let at = foothold(&client).await;
    let name = unique_name("atk-lockdown");
    let (ns, mallory) = (at.ns.clone(), at.mallory.clone());
    let friend = unique_name("friend");
    let fake_component = format!("system:{}", unique_name("kube-helper"));
    let bystander = unique_name("bystander");
    let story = async {
        // What the namespace admin plants.
        apply_as(
            Some(&mallory),
            &role_binding_to_admin(
                &ns,
                &format!("resurgo.grant.{name}.ghost"),
                json!({"resurgo.dev/access-policy": "no-such-policy", "resurgo.dev/grant": "ghost",
                       "app.kubernetes.io/managed-by": "resurgo"}),
                user(&friend),
            ),
        );
        apply_as(
            Some(&mallory),
            &role_binding_to_admin(&ns, "everyone", json!({}), group("system:authenticated")),
        );
        apply_as(
            Some(&mallory),
            &role_binding_to_admin(&ns, "component", json!({}), user(&fake_component)),
        );
        for (who, groups) in [
            (friend.as_str(), vec![]),
            (bystander.as_str(), vec!["system:authenticated"]),
            (fake_component.as_str(), vec![]),
            (mallory.as_str(), vec![]),
        ] {
            assert!(
                access(who, &groups, "create", "deployments", Some(&ns)).await,
                "{who} is admin in {ns} before the lockdown"
            );
        }

        let policies: Api<AccessPolicy> = Api::all(client.clone());
        policies
            .create(
                &PostParams::default(),
                &policy(&name, json!({"mode": "Normal"})),
            )
            .await
            .unwrap();
        ready(&policies, &name).await;
        set_mode(&policies, &name, "Lockdown").await;
        for (who, groups) in [
            (friend.as_str(), vec![]),
            (bystander.as_str(), vec!["system:authenticated"]),
            (fake_component.as_str(), vec![]),
            (mallory.as_str(), vec![]),
        ] {
            eventually(
                &format!("{who} {groups:?} loses admin in {ns}"),
                Duration::from_secs(5),
                || {
                    let groups = groups.clone();
                    let ns = ns.clone();
                    async move { !access(who, &groups, "create", "deployments", Some(&ns)).await }
                },
            )
            .await;
        }
        // The control plane keeps what the bootstrap policy gave it.
        assert!(access("system:kube-scheduler", &[], "list", "pods", None).await);
        assert!(
            access(
                "anyone",
                &["system:authenticated"],
                "create",
                "selfsubjectreviews.authentication.k8s.io",
                None
            )
            .await
        );

        set_mode(&policies, &name, "Normal").await;
        for (who, groups) in [
            (friend.as_str(), vec![]),
            (bystander.as_str(), vec!["system:authenticated"]),
            (mallory.as_str(), vec![]),
        ] {
            eventually(
                &format!("{who} {groups:?} is admin again after the lockdown"),
                Duration::from_secs(5),
                || {
                    let groups = groups.clone();
                    let ns = ns.clone();
                    async move { access(who, &groups, "create", "deployments", Some(&ns)).await }
                },
            )
            .await;
        }
    };
    with_cleanup(&client, &[&name], &[&at.ns], story).await;
}

/// The essence of the RoleBindings of a namespace: what must come back byte for byte.
async fn bindings_of(client: &Client, ns: &str) -> BTreeMap<String, Binding> {
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rb| (rb.name_any(), saved::from_role_binding(rb)))
        .collect()
}

/// Attack 4 of issue 17: two policies in Lockdown, one lifted. Nothing may come back while
/// the other holds, seen from a watch of the namespace's RoleBindings; when the last is
/// lifted, everything comes back exactly and the ledger is empty of them.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn lifting_one_of_two_lockdowns_brings_nothing_back_and_loses_nothing() {
    let _turn = LOCKDOWN.lock().await;
    install_crds().await;
    let client = client().await;
    let ns = namespace(&client, "atk-two").await;
    let (first, second) = (unique_name("atk-first"), unique_name("atk-second"));
    let story = async {
        let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        for i in 0..12 {
            apply_as(
                None,
                &role_binding_to_admin(
                    &ns,
                    &format!("staff-{i}"),
                    json!({"team": format!("t{i}")}),
                    user(&format!("staff-{i}-{ns}")),
                ),
            );
        }
        let originals = bindings_of(&client, &ns).await;
        let policies: Api<AccessPolicy> = Api::all(client.clone());
        for name in [&first, &second] {
            policies
                .create(
                    &PostParams::default(),
                    &policy(name, json!({"mode": "Lockdown"})),
                )
                .await
                .unwrap();
            ready(&policies, name).await;
        }
        assert!(bindings_of(&client, &ns).await.is_empty());

        // From here on, every RoleBinding that appears in the namespace is seen.
        let (tx, mut appeared) = tokio::sync::mpsc::unbounded_channel();
        let watch = tokio::spawn(
            watcher(rbs.clone(), watcher::Config::default())
                .applied_objects()
                .try_for_each(move |rb| {
                    let _ = tx.send(rb.name_any());
                    async { Ok(()) }
                }),
        );
        set_mode(&policies, &first, "Normal").await;
        // The first policy's reconcile is done (its status says Normal); give any late
        // write time to show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut early = Vec::new();
        while let Ok(name) = appeared.try_recv() {
            early.push(name);
        }
        assert!(
            early.is_empty(),
            "came back while a lockdown holds: {early:?}"
        );
        assert!(
            !access(
                &format!("staff-0-{ns}"),
                &[],
                "create",
                "deployments",
                Some(&ns)
            )
            .await
        );

        set_mode(&policies, &second, "Normal").await;
        eventually("every binding is back", Duration::from_secs(10), || async {
            bindings_of(&client, &ns).await.len() == originals.len()
        })
        .await;
        watch.abort();
        let back = bindings_of(&client, &ns).await;
        assert_eq!(back, originals, "every binding exactly as it was");
        let ledger: Api<SuspendedBinding> = Api::all(client.clone());
        let left: Vec<String> = ledger
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.spec.binding.namespace.as_deref() == Some(ns.as_str()))
            .map(|e| e.spec.binding.name.clone())
            .collect();
        assert!(left.is_empty(), "entries left: {left:?}");
    };
    with_cleanup(&client, &[&first, &second], &[&ns], story).await;
}

/// Attack 6 of issue 17: a save forged where saves used to live (a Secret in the operator's
/// namespace) is never restored, and a namespace admin cannot write the ledger.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_forged_save_is_never_restored() {
    let _turn = LOCKDOWN.lock().await;
    install_crds().await;
    let client = client().await;
    let at = foothold(&client).await;
    let name = unique_name("atk-forge");
    let forged_crb = unique_name("forged-cluster-admin");
    let operator_ns = resurgo::access::operator_namespace();
    let story = async {
        // The ledger is cluster-scoped: no namespace admin writes it, even of the operator's
        // own namespace.
        let _ = Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": operator_ns}})).unwrap(),
            )
            .await;
        apply_as(
            None,
            &role_binding_to_admin(
                &operator_ns,
                &format!("{}-admin", at.mallory),
                json!({}),
                user(&at.mallory),
            ),
        );
        for verb in ["create", "update", "patch", "delete"] {
            assert!(
                !access(
                    &at.mallory,
                    &[],
                    verb,
                    "suspendedbindings.resurgo.dev",
                    None
                )
                .await,
                "a namespace admin may {verb} ledger entries"
            );
        }
        let _ = kubectl(
            &[
                "delete",
                "rolebinding",
                "-n",
                &operator_ns,
                &format!("{}-admin", at.mallory),
            ],
            None,
        );

        // The forged save, in the format saves once had.
        let crb = json!({
            "binding": {"kind": "ClusterRoleBinding", "namespace": null, "name": forged_crb},
            "labels": {}, "annotations": {}, "ownerReferences": [],
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": at.mallory}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}
        });
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": unique_name("suspended"), "namespace": operator_ns,
                         "labels": {"resurgo.dev/part": "suspended-binding", "resurgo.dev/access-policy": name,
                                    "app.kubernetes.io/managed-by": "resurgo"}},
            "type": "resurgo.dev/suspended-binding",
            "stringData": {"binding.json": crb.to_string()}
        }))
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &operator_ns);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();

        let policies: Api<AccessPolicy> = Api::all(client.clone());
        policies
            .create(
                &PostParams::default(),
                &policy(&name, json!({"mode": "Lockdown"})),
            )
            .await
            .unwrap();
        ready(&policies, &name).await;
        set_mode(&policies, &name, "Normal").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            Api::<ClusterRoleBinding>::all(client.clone())
                .get_opt(&forged_crb)
                .await
                .unwrap()
                .is_none(),
            "the forged save was restored"
        );
        assert!(!access(&at.mallory, &[], "delete", "nodes", None).await);
        let _ = secrets
            .delete(&secret.name_any(), &DeleteParams::default())
            .await;
    };
    with_cleanup(&client, &[&name], &[&at.ns], story).await;
}

/// A client that authenticates with nothing but this bearer token.
async fn client_with_token(token: &str) -> Client {
    let mut config = Config::infer().await.unwrap();
    config.auth_info = AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// Whether the API server lets the client create Deployments in `ns`.
async fn may_create_deployments(client: &Client, ns: &str) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                verb: Some("create".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

/// Attack 3 of issue 17: a ServiceAccount that a namespace admin made after the compromise
/// and bound to admin. Under the Incident's lockdown its real token no longer gives admin;
/// a ServiceAccount bound before the compromise (a life-critical workload) keeps its access.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_service_account_bound_after_the_compromise_loses_its_access_under_the_incident() {
    let _turn = LOCKDOWN.lock().await;
    install_crds().await;
    let client = client().await;
    let at = foothold(&client).await;
    let name = unique_name("atk-sa");
    let incident = unique_name("atk-incident");
    let ns = at.ns.clone();
    let story = async {
        for sa in ["backdoor", "dispatch"] {
            kubectl_ok(
                &[
                    "create",
                    "serviceaccount",
                    sa,
                    "-n",
                    &ns,
                    &format!("--as={}", at.mallory),
                ],
                None,
            )
            .unwrap();
            apply_as(
                Some(&at.mallory),
                &role_binding_to_admin(
                    &ns,
                    &format!("{sa}-admin"),
                    json!({}),
                    json!({"kind": "ServiceAccount", "name": sa, "namespace": ns}),
                ),
            );
        }
        let token = kubectl_ok(&["create", "token", "backdoor", "-n", &ns], None).unwrap();
        let backdoor = client_with_token(token.trim()).await;
        assert!(may_create_deployments(&backdoor, &ns).await);

        let policies: Api<AccessPolicy> = Api::all(client.clone());
        policies
            .create(
                &PostParams::default(),
                &policy(&name, json!({"mode": "Normal",
                    "breakGlass": [{"kind": "ServiceAccount", "name": "dispatch", "namespace": ns}]})),
            )
            .await
            .unwrap();
        ready(&policies, &name).await;
        // Without an incident, ServiceAccounts keep their access in a lockdown.
        let compromised = Timestamp::from_second(Timestamp::now().as_second() - 600).unwrap();
        let incidents: Api<Incident> = Api::all(client.clone());
        incidents
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
                    "metadata": {"name": incident},
                    "spec": {"mode": "Real", "compromisedSince": compromised.to_string(), "accessPolicies": [name]}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        eventually(
            "the backdoor's token loses admin",
            Duration::from_secs(30),
            || async { !may_create_deployments(&backdoor, &ns).await },
        )
        .await;
        assert!(
            access(
                &format!("system:serviceaccount:{ns}:dispatch"),
                &[],
                "create",
                "deployments",
                Some(&ns)
            )
            .await,
            "a break-glass ServiceAccount keeps its access"
        );
        incidents
            .patch(
                &incident,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"state": "Closed"}})),
            )
            .await
            .unwrap();
        eventually(
            "the backdoor's binding is back after the incident",
            Duration::from_secs(30),
            || async { may_create_deployments(&backdoor, &ns).await },
        )
        .await;
    };
    let outcome = std::panic::AssertUnwindSafe(story).catch_unwind().await;
    let _ = Api::<Incident>::all(client.clone())
        .delete(&incident, &DeleteParams::default())
        .await;
    with_cleanup(&client, &[&name], &[&at.ns], async {
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    })
    .await;
}
