//! Access policies on the real control plane, with RBAC enforced and the operator that
//! tests/run.sh runs. Access is asserted the way the API server decides it
//! (`kubectl auth can-i --as`), and expiry from a watch of the bindings, never from the
//! operator's logs.
//!
//! A lockdown suspends human bindings cluster-wide, so only one test here locks down, and it
//! uses its own users and groups. The tests' admin is in `system:masters`, which a lockdown
//! never touches, and the other tests' grants are left alone (grants are not suspended).

use std::{collections::BTreeMap, time::Duration};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject},
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{wait::await_condition, watcher},
};
use resurgo::{
    access::{
        lockdown::{Binding, BindingKind, BindingRef, Entry},
        saved,
    },
    api::{AccessPolicy, Incident, SuspendedBinding, access_policy::AccessMode},
};
use resurgo_tests::{
    access::{access, deleted, eventually, has_event, namespace, policy, ready, set_mode},
    client, install_crds, kubectl, unique_name,
};
use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io";

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn an_expired_grant_loses_access_within_a_second() {
    install_crds().await;
    let client = client().await;
    let ns = namespace(&client, "grant").await;
    let technician = unique_name("technician");
    let staff = unique_name("staff");
    let name = unique_name("grants");
    let policies: Api<AccessPolicy> = Api::all(client.clone());

    // Every change to the namespace's RoleBindings, stamped when the watch delivers it.
    let (sender, mut deletions) = tokio::sync::mpsc::unbounded_channel();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        let mut stream = watcher(bindings, watcher::Config::default()).boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            if let watcher::Event::Delete(rb) = event
                && sender.send((rb.name_any(), Timestamp::now())).is_err()
            {
                return;
            }
        }
    });

    // Whole seconds: expiresAt is written to the second.
    let expiry = Timestamp::from_second(Timestamp::now().as_second() + 10).unwrap();
    let spec = json!({
        "roles": [{"name": "pod-reader", "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}],
        "grants": [
            {"name": "remote-technician", "subject": {"kind": "User", "name": technician},
             "clusterRole": "edit", "namespaces": [ns], "expiresAt": expiry.to_string(),
             "reason": "vendor session, ticket SEC-1"},
            {"name": "staff", "subject": {"kind": "Group", "name": staff},
             "policyRole": "pod-reader", "reason": "clinical IT"}
        ],
        "remoteAccess": [{"name": "wan", "namespaces": [ns], "sourceCIDRs": ["10.12.0.0/16"], "ports": [8443]}]
    });
    policies
        .create(&PostParams::default(), &policy(&name, spec))
        .await
        .unwrap();
    let applied = ready(&policies, &name).await;

    // The grants are in force and the status says until when.
    let status = applied.status.unwrap();
    assert_eq!(status.active_grant_count, 2);
    assert_eq!(status.next_expiry.map(|t| t.0), Some(expiry));
    let binding_name = format!("resurgo.grant.{name}.remote-technician");
    let technician_grant = status
        .active_grants
        .iter()
        .find(|g| g.name == "remote-technician")
        .unwrap();
    assert_eq!(
        technician_grant.bindings,
        [format!("RoleBinding/{ns}/{binding_name}")]
    );
    assert!(access(&technician, &[], "create", "deployments", Some(&ns)).await);
    assert!(!access(&technician, &[], "create", "deployments", Some("default")).await);
    assert!(access("someone", &[&staff], "list", "pods", None).await);
    assert!(!access("someone", &[&staff], "delete", "pods", None).await);

    // The operator owns what it made, under its field manager.
    let rb = Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(&binding_name)
        .await
        .unwrap();
    let owner = &rb.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("AccessPolicy", name.as_str())
    );
    assert_eq!(rb.labels()["resurgo.dev/access-policy"], name);
    assert!(
        rb.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("resurgo")),
        "{:?}",
        rb.managed_fields()
    );
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(&format!("resurgo.remote.{name}.wan"))
        .await
        .unwrap();
    let from = np.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap();
    assert_eq!(from[0].ip_block.as_ref().unwrap().cidr, "10.12.0.0/16");
    has_event(&client, &name, "GrantApplied", "remote-technician").await;

    // The binding goes at the expiry second, not before, and within a second after it.
    let (deleted_name, deleted_at) = loop {
        let event = tokio::time::timeout(Duration::from_secs(30), deletions.recv())
            .await
            .expect("the grant's binding was deleted within 30 s")
            .unwrap();
        if event.0 == binding_name {
            break event;
        }
    };
    assert_eq!(deleted_name, binding_name);
    eprintln!(
        "the grant's binding was deleted {} after its expiry",
        deleted_at.duration_since(expiry)
    );
    assert!(
        deleted_at >= expiry,
        "deleted at {deleted_at}, before {expiry}"
    );
    assert!(
        deleted_at.duration_since(expiry) <= SignedDuration::from_secs(1),
        "deleted at {deleted_at}, more than a second after {expiry}"
    );
    eventually(
        "the technician has lost access",
        Duration::from_secs(2),
        || {
            let technician = technician.clone();
            let ns = ns.clone();
            async move { !access(&technician, &[], "create", "deployments", Some(&ns)).await }
        },
    )
    .await;
    assert!(
        access("someone", &[&staff], "list", "pods", None).await,
        "the other grant stays"
    );
    has_event(&client, &name, "GrantRevoked", "remote-technician: expired").await;
    let after = ready(&policies, &name).await.status.unwrap();
    assert_eq!(after.active_grant_count, 1);
    assert_eq!(after.next_expiry, None);

    // Deleting the policy takes its grants, roles and network policies away.
    deleted(&policies, &name).await;
    let crb = format!("resurgo.grant.{name}.staff");
    assert!(
        Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&crb)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&format!("resurgo.role.{name}.pod-reader"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
            .get_opt(&format!("resurgo.remote.{name}.wan"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!access("someone", &[&staff], "list", "pods", None).await);
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC.into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

fn view() -> RoleRef {
    RoleRef {
        api_group: RBAC.into(),
        kind: "ClusterRole".into(),
        name: "view".into(),
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(BTreeMap::from([("team".into(), format!("{name}-team"))])),
        annotations: Some(BTreeMap::from([
            ("ticket".into(), format!("IT-{name}")),
            ("note".into(), "made by hand by the admin".into()),
        ])),
        ..Default::default()
    }
}

/// The parts of a binding a restore must give back byte for byte.
fn essence(binding: &Binding) -> Value {
    json!({
        "subjects": binding.subjects, "roleRef": binding.role_ref,
        "labels": binding.labels, "annotations": binding.annotations,
    })
}

async fn role_binding(client: &Client, ns: &str, name: &str) -> Option<Binding> {
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .map(|rb| saved::from_role_binding(&rb))
}

async fn cluster_role_binding(client: &Client, name: &str) -> Option<Binding> {
    Api::<ClusterRoleBinding>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
        .map(|crb| saved::from_cluster_role_binding(&crb))
}

/// The remote-access rules rendered in a namespace, by rule name.
async fn remote_rules(client: &Client, ns: &str) -> Vec<String> {
    let mut rules: Vec<String> = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("resurgo.dev/part=remote-access"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|np| np.name_any().rsplit('.').next().unwrap().to_owned())
        .collect();
    rules.sort();
    rules
}

/// An object the API server refuses (here: a NetworkPolicy in a namespace being deleted)
/// stalls the policy with the object and the API server's reason, instead of a silent
/// retry loop with no status.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_refused_object_stalls_the_policy_naming_it() {
    install_crds().await;
    let client = client().await;
    let ns = namespace(&client, "terminating").await;
    let name = unique_name("refused");
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    // A ConfigMap whose finalizer nobody removes keeps the namespace terminating.
    let hold = "resurgo.test/hold";
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": [hold]}}))
                .unwrap(),
        )
        .await
        .unwrap();
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    let story = async {
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &name,
                    json!({"mode": "Normal", "remoteAccess": [
                        {"name": "wan", "namespaces": [ns], "sourceCIDRs": ["10.12.0.0/16"]}
                    ]}),
                ),
            )
            .await
            .unwrap();
        let stalled = await_condition(policies.clone(), &name, |p: Option<&AccessPolicy>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True")
            })
        });
        let stalled = tokio::time::timeout(Duration::from_secs(30), stalled)
            .await
            .expect("the policy says it is stalled within 30 s")
            .unwrap()
            .unwrap();
        let conditions = stalled.status.unwrap().conditions;
        let condition = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(condition.reason, "ApplyFailed", "{condition:?}");
        assert!(
            condition
                .message
                .contains(&format!("NetworkPolicy {ns}/resurgo.remote.{name}.wan")),
            "{}",
            condition.message
        );
        assert!(
            condition.message.contains("being terminated"),
            "{}",
            condition.message
        );
        has_event(&client, &name, "ApplyFailed", "being terminated").await;
    };
    let outcome = std::panic::AssertUnwindSafe(story).catch_unwind().await;
    deleted(&policies, &name).await;
    let _ = configmaps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_grant_waits_for_its_namespace_and_the_policy_says_so() {
    install_crds().await;
    let client = client().await;
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    let name = unique_name("waiting");
    let ns = unique_name("not-yet");
    let user = unique_name("pharmacist");
    policies
        .create(
            &PostParams::default(),
            &policy(
                &name,
                json!({"grants": [{"name": "pharmacy", "subject": {"kind": "User", "name": user},
                                   "clusterRole": "view", "namespaces": [ns], "reason": "pharmacy staff"}]}),
            ),
        )
        .await
        .unwrap();
    let stalled = await_condition(policies.clone(), &name, |p: Option<&AccessPolicy>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Stalled" && c.status == "True" && c.reason == "NamespaceNotFound"
            })
        })
    });
    let policy = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("Stalled within 30 s")
        .unwrap()
        .unwrap();
    let status = policy.status.unwrap();
    let ready_condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready_condition.status, "False");
    assert!(
        ready_condition.message.contains(&ns),
        "{}",
        ready_condition.message
    );
    assert_eq!(
        ready_condition.observed_generation,
        policy.metadata.generation
    );
    has_event(&client, &name, "NamespaceNotFound", &ns).await;

    // The namespace appears: the Namespace watch brings the policy back, no polling.
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let applied = ready(&policies, &name).await;
    let stalled = applied.status.unwrap().conditions;
    assert!(
        stalled
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "False")
    );
    eventually(
        "the pharmacist has access",
        Duration::from_secs(2),
        || async { access(&user, &[], "list", "pods", Some(&ns)).await },
    )
    .await;
    deleted(&policies, &name).await;
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// One test covers every lockdown step, so no two lockdowns overlap; whatever happens, the
/// policy is deleted at the end, which restores what it suspended.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn lockdown_suspends_every_human_binding_and_normal_restores_them_exactly() {
    install_crds().await;
    let client = client().await;
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    let name = unique_name("lockdown");
    let ns = namespace(&client, "lockdown").await;
    let incident = unique_name("ransomware");
    let outcome =
        std::panic::AssertUnwindSafe(lockdown_story(&client, &policies, &name, &ns, &incident))
            .catch_unwind()
            .await;
    let _ = Api::<Incident>::all(client.clone())
        .delete(&incident, &DeleteParams::default())
        .await;
    deleted(&policies, &name).await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn lockdown_story(
    client: &Client,
    policies: &Api<AccessPolicy>,
    name: &str,
    ns: &str,
    incident: &str,
) {
    let nurse = unique_name("nurse");
    let clinical = unique_name("clinical-it");
    let contractor = unique_name("contractor");
    let officer = unique_name("duty-officer");
    let technician = unique_name("technician");
    let late = unique_name("late-user");
    // A name an attacker picks to pass for the control plane.
    let control_plane = format!("system:{}", unique_name("component"));
    let account = format!("system:serviceaccount:{ns}:dispatch");
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let post = PostParams::default();

    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &post,
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("dispatch".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Bindings the admin made by hand: the operator never made them.
    let clinical_crb = unique_name("clinical-view");
    let made = [
        ("by-hand", vec![subject("User", &nurse)]),
        (
            "mixed",
            vec![
                subject("User", &contractor),
                Subject {
                    api_group: Some(String::new()),
                    kind: "ServiceAccount".into(),
                    name: "dispatch".into(),
                    namespace: Some(ns.into()),
                },
            ],
        ),
        ("officers", vec![subject("User", &officer)]),
        ("control-plane", vec![subject("User", &control_plane)]),
    ];
    for (rb_name, subjects) in made {
        rbs.create(
            &post,
            &RoleBinding {
                metadata: meta(rb_name, Some(ns)),
                role_ref: view(),
                subjects: Some(subjects),
            },
        )
        .await
        .unwrap();
    }
    crbs.create(
        &post,
        &ClusterRoleBinding {
            metadata: meta(&clinical_crb, None),
            role_ref: view(),
            subjects: Some(vec![subject("Group", &clinical)]),
        },
    )
    .await
    .unwrap();
    let mut originals = BTreeMap::new();
    for rb_name in ["by-hand", "mixed", "officers", "control-plane"] {
        originals.insert(
            rb_name.to_owned(),
            role_binding(client, ns, rb_name).await.unwrap(),
        );
    }
    let crb_original = cluster_role_binding(client, &clinical_crb).await.unwrap();

    let expiry = Timestamp::from_second(Timestamp::now().as_second() + 3600).unwrap();
    policies
        .create(
            &post,
            &policy(
                name,
                json!({
                    "mode": "Normal",
                    "breakGlass": [{"kind": "User", "name": officer}],
                    "grants": [{"name": "technician", "subject": {"kind": "User", "name": technician},
                                "clusterRole": "view", "namespaces": [ns], "expiresAt": expiry.to_string(),
                                "reason": "remote session on request"}],
                    "remoteAccess": [
                        {"name": "wan", "namespaces": [ns], "sourceCIDRs": ["10.12.0.0/16"]},
                        {"name": "vendor", "namespaces": [ns], "sourceCIDRs": ["203.0.113.24/32"], "ports": [8443],
                         "allowDuringLockdown": true, "expiresAt": expiry.to_string(), "reason": "ticket SEC-2"}
                    ]
                }),
            ),
        )
        .await
        .unwrap();
    ready(policies, name).await;
    assert_eq!(remote_rules(client, ns).await, ["vendor", "wan"]);
    for (user, groups) in [
        (nurse.as_str(), vec![]),
        ("anyone", vec![clinical.as_str()]),
        (contractor.as_str(), vec![]),
        (officer.as_str(), vec![]),
        (technician.as_str(), vec![]),
        (control_plane.as_str(), vec![]),
        (account.as_str(), vec![]),
    ] {
        assert!(
            access(user, &groups, "list", "pods", Some(ns)).await,
            "{user} {groups:?} has access before the lockdown"
        );
    }

    // Lockdown.
    let locked = set_mode(policies, name, "Lockdown").await;
    let status = locked.status.unwrap();
    assert_eq!(status.mode, Some(AccessMode::Lockdown));
    assert_eq!(status.suspended_bindings, 4, "{status:?}");
    assert_eq!(
        remote_rules(client, ns).await,
        ["vendor"],
        "only remote access allowed during the lockdown stays"
    );
    assert!(role_binding(client, ns, "by-hand").await.is_none());
    assert!(cluster_role_binding(client, &clinical_crb).await.is_none());
    let mixed = role_binding(client, ns, "mixed").await.unwrap();
    assert_eq!(mixed.subjects.len(), 1);
    assert_eq!(mixed.subjects[0].kind, "ServiceAccount");
    assert_eq!(
        role_binding(client, ns, "officers").await.as_ref(),
        Some(&originals["officers"])
    );
    assert!(
        role_binding(client, ns, "control-plane").await.is_none(),
        "a `system:` name is no pass"
    );
    for (user, groups, allowed) in [
        (nurse.as_str(), vec![], false),
        ("anyone", vec![clinical.as_str()], false),
        (contractor.as_str(), vec![], false),
        (officer.as_str(), vec![], true),
        (technician.as_str(), vec![], true),
        (control_plane.as_str(), vec![], false),
        (account.as_str(), vec![], true),
    ] {
        eventually(
            &format!("{user} {groups:?} access is {allowed} in lockdown"),
            Duration::from_secs(2),
            || {
                let groups = groups.clone();
                async move { access(user, &groups, "list", "pods", Some(ns)).await == allowed }
            },
        )
        .await;
    }
    has_event(
        client,
        name,
        "BindingSuspended",
        &format!("RoleBinding/{ns}/by-hand"),
    )
    .await;
    has_event(
        client,
        name,
        "BindingSuspended",
        &format!("ClusterRoleBinding/{clinical_crb}"),
    )
    .await;
    has_event(client, name, "LockdownStarted", "suspending").await;

    // A human binding made during the lockdown is suspended at once.
    rbs.create(
        &post,
        &RoleBinding {
            metadata: meta("late", Some(ns)),
            role_ref: view(),
            subjects: Some(vec![subject("User", &late)]),
        },
    )
    .await
    .unwrap();
    let late_original = {
        // What the API server stored, defaults included, is what must come back.
        let mut b = saved::from_role_binding(&RoleBinding {
            metadata: meta("late", Some(ns)),
            role_ref: view(),
            subjects: Some(vec![subject("User", &late)]),
        });
        b.binding.namespace = Some(ns.into());
        b
    };
    eventually(
        "the late binding is suspended",
        Duration::from_secs(5),
        || async { role_binding(client, ns, "late").await.is_none() },
    )
    .await;

    // Crash points, made by hand as a killed operator would leave them: one binding saved
    // but not yet deleted, one deleted after being saved. The operator converges.
    let ledger: Api<SuspendedBinding> = Api::all(client.clone());
    let entry = |binding: &Binding| Entry {
        binding: binding.clone(),
        policy: name.to_owned(),
        created: None,
        suspended_at: Timestamp::now(),
        held: false,
        release: false,
    };
    let saved_not_deleted = Binding {
        binding: BindingRef {
            kind: BindingKind::RoleBinding,
            namespace: Some(ns.into()),
            name: "crash-saved".into(),
        },
        labels: BTreeMap::from([("team".into(), "radiology".into())]),
        annotations: BTreeMap::from([("ticket".into(), "IT-9".into())]),
        owner_references: Vec::new(),
        subjects: vec![subject("User", &unique_name("radiologist"))],
        role_ref: view(),
    };
    let deleted_after_save = Binding {
        binding: BindingRef {
            kind: BindingKind::ClusterRoleBinding,
            namespace: None,
            name: unique_name("crash-deleted"),
        },
        labels: BTreeMap::from([("team".into(), "lab".into())]),
        annotations: BTreeMap::new(),
        owner_references: Vec::new(),
        subjects: vec![subject("Group", &unique_name("lab-staff"))],
        role_ref: view(),
    };
    for binding in [&saved_not_deleted, &deleted_after_save] {
        ledger
            .create(&post, &saved::to_object(&entry(binding), None))
            .await
            .unwrap();
    }
    rbs.create(&post, &saved::to_role_binding(&saved_not_deleted))
        .await
        .unwrap();
    eventually(
        "the saved-but-not-deleted binding is deleted",
        Duration::from_secs(5),
        || async { role_binding(client, ns, "crash-saved").await.is_none() },
    )
    .await;
    // Touch the policy as a restarted operator would reconcile it, and see the count.
    policies
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"resurgo.test/touch": "1"}}})),
        )
        .await
        .unwrap();
    eventually(
        "the status counts seven suspended bindings",
        Duration::from_secs(5),
        || async {
            policies
                .get(name)
                .await
                .unwrap()
                .status
                .unwrap_or_default()
                .suspended_bindings
                == 7
        },
    )
    .await;

    // A subject made break-glass during the lockdown gets its binding back at once.
    let released = policies
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"breakGlass": [
                {"kind": "User", "name": officer}, {"kind": "User", "name": nurse}
            ]}})),
        )
        .await
        .unwrap();
    assert_eq!(released.spec.mode, AccessMode::Lockdown);
    let status = ready(policies, name).await.status.unwrap();
    assert_eq!(status.suspended_bindings, 6, "{status:?}");
    assert_eq!(
        essence(&role_binding(client, ns, "by-hand").await.unwrap()),
        essence(&originals["by-hand"])
    );
    eventually(
        "the nurse, now break-glass, has access",
        Duration::from_secs(2),
        || async { access(&nurse, &[], "list", "pods", Some(ns)).await },
    )
    .await;

    // Back to Normal: every binding returns exactly as it was, but the one made during the
    // lockdown, which stays suspended.
    let normal = set_mode(policies, name, "Normal").await;
    assert_eq!(normal.status.unwrap().suspended_bindings, 1);
    assert_eq!(remote_rules(client, ns).await, ["vendor", "wan"]);
    for (rb_name, original) in &originals {
        let now = role_binding(client, ns, rb_name).await.unwrap();
        assert_eq!(essence(&now), essence(original), "{rb_name}");
    }
    let crb_now = cluster_role_binding(client, &clinical_crb).await.unwrap();
    assert_eq!(essence(&crb_now), essence(&crb_original));
    assert!(role_binding(client, ns, "late").await.is_none());
    let held = ledger
        .get(&saved::save_name(&late_original.binding))
        .await
        .unwrap();
    assert!(held.spec.held_after_lockdown, "{held:?}");
    assert!(!access(&late, &[], "list", "pods", Some(ns)).await);
    // A cluster admin releases it: it comes back as it was made.
    ledger
        .patch(
            &held.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"release": true}})),
        )
        .await
        .unwrap();
    eventually(
        "the released binding comes back",
        Duration::from_secs(5),
        || async { role_binding(client, ns, "late").await.is_some() },
    )
    .await;
    assert_eq!(
        essence(&role_binding(client, ns, "late").await.unwrap()),
        essence(&late_original)
    );
    assert_eq!(
        essence(&role_binding(client, ns, "crash-saved").await.unwrap()),
        essence(&saved_not_deleted)
    );
    assert_eq!(
        essence(
            &cluster_role_binding(client, &deleted_after_save.binding.name)
                .await
                .unwrap()
        ),
        essence(&deleted_after_save)
    );
    eventually(
        "no entry of the policy is left",
        Duration::from_secs(5),
        || async {
            ledger
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|e| e.spec.policy != name)
        },
    )
    .await;
    for (user, groups) in [
        (nurse.as_str(), vec![]),
        ("anyone", vec![clinical.as_str()]),
        (contractor.as_str(), vec![]),
        (late.as_str(), vec![]),
    ] {
        eventually(
            &format!("{user} {groups:?} has access again"),
            Duration::from_secs(2),
            || {
                let groups = groups.clone();
                async move { access(user, &groups, "list", "pods", Some(ns)).await }
            },
        )
        .await;
    }
    has_event(
        client,
        name,
        "BindingRestored",
        &format!("RoleBinding/{ns}/by-hand"),
    )
    .await;

    // The crash point of a restore: the binding is back but its save is not yet forgotten.
    // The operator forgets the save and leaves the binding alone.
    let restored_not_forgotten = saved::from_role_binding(&rbs.get("officers").await.unwrap());
    let before = rbs.get("officers").await.unwrap().resource_version();
    let save_name = saved::save_name(&restored_not_forgotten.binding);
    ledger
        .create(
            &post,
            &saved::to_object(&entry(&restored_not_forgotten), None),
        )
        .await
        .unwrap();
    policies
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"resurgo.test/touch": "2"}}})),
        )
        .await
        .unwrap();
    eventually(
        "the stale save is forgotten",
        Duration::from_secs(5),
        || async { ledger.get_opt(&save_name).await.unwrap().is_none() },
    )
    .await;
    assert_eq!(
        rbs.get("officers").await.unwrap().resource_version(),
        before
    );

    // An open Real incident naming the policy locks it down while its own mode stays
    // Normal; a grant without expiry is then not in force, and the policy says why.
    let permanent = unique_name("permanent");
    policies
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"grants": [
                {"name": "technician", "subject": {"kind": "User", "name": technician},
                 "clusterRole": "view", "namespaces": [ns], "expiresAt": expiry.to_string(),
                 "reason": "remote session on request"},
                {"name": "permanent", "subject": {"kind": "User", "name": permanent},
                 "clusterRole": "view", "namespaces": [ns], "reason": "no expiry"}
            ]}})),
        )
        .await
        .unwrap();
    ready(policies, name).await;
    assert!(access(&permanent, &[], "list", "pods", Some(ns)).await);
    let incidents: Api<Incident> = Api::all(client.clone());
    incidents
        .create(
            &post,
            &serde_json::from_value(json!({
                "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
                "metadata": {"name": incident},
                "spec": {"mode": "Real", "compromisedSince": "2026-11-01T00:00:00Z", "accessPolicies": [name]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let locked = await_condition(policies.clone(), name, |p: Option<&AccessPolicy>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.mode == Some(AccessMode::Lockdown)
                && s.conditions.iter().any(|c| {
                    c.type_ == "Stalled" && c.status == "True" && c.reason == "GrantWithoutExpiry"
                })
        })
    });
    let locked = tokio::time::timeout(Duration::from_secs(30), locked)
        .await
        .expect("the incident locked the policy down within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(locked.spec.mode, AccessMode::Normal);
    let stalled = locked.status.unwrap().conditions;
    let stalled = stalled.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert!(stalled.message.contains("permanent"), "{}", stalled.message);
    assert!(stalled.message.contains(incident), "{}", stalled.message);
    assert!(cluster_role_binding(client, &clinical_crb).await.is_none());
    for (user, groups, allowed) in [
        ("anyone", vec![clinical.as_str()], false),
        (permanent.as_str(), vec![], false),
        (technician.as_str(), vec![], true),
        (officer.as_str(), vec![], true),
        // Its binding was made after the compromise: it may be the attacker's way back.
        (account.as_str(), vec![], false),
    ] {
        eventually(
            &format!("{user} {groups:?} access is {allowed} under the incident"),
            Duration::from_secs(2),
            || {
                let groups = groups.clone();
                async move { access(user, &groups, "list", "pods", Some(ns)).await == allowed }
            },
        )
        .await;
    }

    // Closing the incident lifts the lockdown and the grant comes back.
    incidents
        .patch(
            incident,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "Closed"}})),
        )
        .await
        .unwrap();
    let lifted = ready(policies, name).await.status.unwrap();
    assert_eq!(lifted.mode, Some(AccessMode::Normal));
    assert_eq!(lifted.suspended_bindings, 0);
    assert_eq!(
        essence(&cluster_role_binding(client, &clinical_crb).await.unwrap()),
        essence(&crb_original)
    );
    for user in [permanent.as_str(), contractor.as_str(), account.as_str()] {
        eventually(
            &format!("{user} has access again"),
            Duration::from_secs(2),
            || async { access(user, &[], "list", "pods", Some(ns)).await },
        )
        .await;
    }

    for crb in [&clinical_crb, &deleted_after_save.binding.name] {
        crbs.delete(crb, &DeleteParams::default()).await.unwrap();
    }
}

/// A control plane of its own, with an operator of its own that the test can kill: the
/// shared operator of tests/run.sh must not act on what this test examines.
struct PrivateCluster {
    dir: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    operator: Option<std::process::Child>,
}

impl PrivateCluster {
    fn up() -> PrivateCluster {
        let dir = std::path::PathBuf::from(format!(
            "/dev/shm/resurgo-access-crash-{}",
            std::process::id()
        ));
        let output =
            std::process::Command::new(resurgo_tests::repo_root().join("tests/cluster/up.sh"))
                .arg(&dir)
                .output()
                .expect("run up.sh");
        assert!(
            output.status.success(),
            "up.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kubeconfig = dir.join("kubeconfig");
        let cluster = PrivateCluster {
            dir,
            kubeconfig,
            operator: None,
        };
        let crds = resurgo_tests::repo_root().join("crds");
        cluster.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds.to_str().unwrap(),
        ]);
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        let output = kubectl(&all, None);
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    fn start_operator(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("operator.log"))
            .unwrap();
        let child =
            std::process::Command::new(resurgo_tests::repo_root().join("target/debug/resurgo"))
                .arg("run")
                .env("KUBECONFIG", &self.kubeconfig)
                .env("RUST_LOG", "warn,resurgo=info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the operator (cargo build -p resurgo first)");
        self.operator = Some(child);
    }

    /// SIGKILL: no graceful shutdown, in-flight steps are cut wherever they are.
    fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.kill_operator();
        let _ =
            std::process::Command::new(resurgo_tests::repo_root().join("tests/cluster/down.sh"))
                .arg(&self.dir)
                .output();
    }
}

/// The ledger entries in the private cluster.
async fn save_count(ledger: &Api<SuspendedBinding>) -> usize {
    ledger
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
}

/// Every hand-made binding is either there exactly as made, or saved exactly: nothing lost.
async fn nothing_lost(
    rbs: &Api<RoleBinding>,
    ledger: &Api<SuspendedBinding>,
    originals: &BTreeMap<String, Binding>,
) {
    let present: BTreeMap<String, Binding> = rbs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rb| (rb.name_any(), saved::from_role_binding(rb)))
        .collect();
    let saves: BTreeMap<String, Binding> = ledger
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(saved::from_object)
        .map(|e| (e.binding.binding.name.clone(), e.binding))
        .collect();
    for (name, original) in originals {
        let kept = present
            .get(name)
            .is_some_and(|b| essence(b) == essence(original));
        let saved = saves
            .get(name)
            .is_some_and(|b| essence(b) == essence(original));
        assert!(kept || saved, "{name} is neither in place nor saved");
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn an_operator_killed_mid_lockdown_and_mid_restore_loses_nothing() {
    // Enough that a lockdown of parallel requests is still under way when the kill comes.
    const BINDINGS: usize = 1000;
    let mut cluster = PrivateCluster::up();
    let client = cluster.client().await;
    let ns = namespace(&client, "crash").await;
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    futures::stream::iter(0..BINDINGS)
        .for_each_concurrent(16, |i| {
            let (rbs, ns) = (rbs.clone(), ns.clone());
            async move {
                rbs.create(
                    &PostParams::default(),
                    &RoleBinding {
                        metadata: meta(&format!("staff-{i}"), Some(&ns)),
                        role_ref: view(),
                        subjects: Some(vec![subject("User", &format!("staff-{i}"))]),
                    },
                )
                .await
                .unwrap();
            }
        })
        .await;
    let originals: BTreeMap<String, Binding> = rbs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rb| (rb.name_any(), saved::from_role_binding(rb)))
        .collect();
    assert_eq!(originals.len(), BINDINGS);

    cluster.start_operator();
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    policies
        .create(
            &PostParams::default(),
            &policy("crash", json!({"mode": "Normal"})),
        )
        .await
        .unwrap();
    ready(&policies, "crash").await;
    let ledger: Api<SuspendedBinding> = Api::all(client.clone());

    // Kill the operator a few bindings into the lockdown.
    policies
        .patch(
            "crash",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": "Lockdown"}})),
        )
        .await
        .unwrap();
    eventually(
        "the lockdown has begun",
        Duration::from_secs(30),
        || async { save_count(&ledger).await >= 10 },
    )
    .await;
    cluster.kill_operator();
    let at_kill = save_count(&ledger).await;
    assert!(
        at_kill < BINDINGS,
        "the kill came after the lockdown finished ({at_kill} saves)"
    );
    eprintln!("killed the operator with {at_kill} of {BINDINGS} bindings saved");
    nothing_lost(&rbs, &ledger, &originals).await;

    // The restarted operator finishes the lockdown.
    cluster.start_operator();
    let status = ready(&policies, "crash").await.status.unwrap();
    assert_eq!(status.suspended_bindings as usize, BINDINGS);
    assert!(
        rbs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    nothing_lost(&rbs, &ledger, &originals).await;

    // Kill it again a few bindings into the restore.
    policies
        .patch(
            "crash",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": "Normal"}})),
        )
        .await
        .unwrap();
    eventually("the restore has begun", Duration::from_secs(30), || async {
        save_count(&ledger).await <= BINDINGS - 10
    })
    .await;
    cluster.kill_operator();
    let at_kill = save_count(&ledger).await;
    assert!(at_kill > 0, "the kill came after the restore finished");
    eprintln!("killed the operator with {at_kill} of {BINDINGS} bindings still to restore");
    nothing_lost(&rbs, &ledger, &originals).await;

    cluster.start_operator();
    let status = ready(&policies, "crash").await.status.unwrap();
    assert_eq!(status.suspended_bindings, 0);
    assert_eq!(save_count(&ledger).await, 0);
    let restored: BTreeMap<String, Binding> = rbs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rb| (rb.name_any(), saved::from_role_binding(rb)))
        .collect();
    assert_eq!(restored.len(), BINDINGS);
    for (name, original) in &originals {
        assert_eq!(essence(&restored[name]), essence(original), "{name}");
    }
}
