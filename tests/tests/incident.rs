//! Incidents on the real control plane, with the operator that tests/run.sh runs: a drill
//! rebuilds isolated copies and leaves nothing behind, a real incident starts a plan that
//! waits for it, rotates every credential that is not, unchanged, the operator's own write
//! since the compromise, and voids every token of the ServiceAccounts of the namespaces it
//! names but those it keeps.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::{ConfigMap, LocalObjectReference, Namespace, Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
    jiff::{self, SignedDuration, Timestamp, Unit},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::AuthInfo,
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use resurgo::api::{
    access_policy::AccessPolicy,
    incident::{Incident, IncidentPhase, StepState},
    recovery_plan::{PlanPhase, RecoveryPlan},
};
use resurgo_tests::{
    access::eventually, apply, client, deployment, install_crds, job_spec, kubectl, kubectl_ok,
    unique_name,
};
use serde_json::{Value, json};

fn plan(name: &str, namespaces: [&str; 3]) -> Value {
    let [critical, booking, finance] = namespaces;
    json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
        "metadata": {"name": name},
        "spec": {
            "trigger": "Incident",
            "tiers": [
                {"name": "life-critical", "rto": "15m"},
                {"name": "finance", "rto": "24h"},
                {"name": "booking", "rto": "72h"}
            ],
            "services": [
                {"name": "dispatch", "tier": "life-critical", "namespace": critical,
                 "workload": {"manifests": [deployment("dispatch", None)]},
                 "regenerateSecrets": [{"name": "dispatch-db", "keys": ["password"]}]},
                {"name": "ledger", "tier": "finance", "namespace": finance, "action": "Verify",
                 "readiness": {"checks": [{"name": "balance", "spec": job_spec()}]}},
                {"name": "cup", "tier": "booking", "namespace": booking, "dependsOn": ["dispatch", "ledger"],
                 "workload": {"manifests": [deployment("cup", None)]}}
            ]
        }
    })
}

fn incident(name: &str, plan: &str, mode: &str, compromised_since: &str) -> Value {
    json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
        "metadata": {"name": name},
        "spec": {"mode": mode, "compromisedSince": compromised_since, "recoveryPlans": [plan]}
    })
}

async fn until_incident(name: &str, what: &str, wanted: impl Fn(&Incident) -> bool) -> Incident {
    let api: Api<Incident> = Api::all(client().await);
    let matches = |i: Option<&Incident>| i.is_some_and(&wanted);
    match tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(api.clone(), name, matches),
    )
    .await
    {
        Ok(Ok(Some(incident))) => incident,
        _ => panic!(
            "incident/{name} never {what}: {:#?}",
            api.get(name).await.ok().and_then(|i| i.status)
        ),
    }
}

/// The messages of the Events of `reason` on the incident.
fn events(incident: &str, reason: &str) -> String {
    kubectl_ok(
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.kind=Incident,involvedObject.name={incident},reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    )
    .unwrap()
}

fn phase(incident: &Incident) -> Option<IncidentPhase> {
    incident.status.as_ref().and_then(|s| s.phase)
}

fn steps(incident: &Incident) -> Vec<(String, StepState)> {
    incident
        .status
        .as_ref()
        .map(|s| {
            s.timeline
                .iter()
                .map(|e| (e.step.clone(), e.state))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_drill_rebuilds_isolated_copies_measures_them_and_cleans_up() {
    install_crds().await;
    let client = client().await;
    let plan_name = unique_name("drilled");
    let critical = unique_name("drill-src-critical");
    let booking = unique_name("drill-src-booking");
    let finance = unique_name("drill-src-finance");
    // The finance data is real and must not be touched.
    kubectl_ok(&["create", "namespace", &finance], None).unwrap();
    kubectl_ok(
        &[
            "-n",
            &finance,
            "create",
            "configmap",
            "ledger",
            "--from-literal=balance=42",
        ],
        None,
    )
    .unwrap();
    let ledger_before = Api::<ConfigMap>::namespaced(client.clone(), &finance)
        .get("ledger")
        .await
        .unwrap();
    apply(&plan(&plan_name, [&critical, &booking, &finance]).to_string());

    // Every Deployment the drill's copy creates, seen through one watch.
    let copy_name = format!("drill-{plan_name}");
    let deployments: Api<Deployment> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={copy_name}"));
    let seen = tokio::spawn(async move {
        let mut namespaces = Vec::new();
        let mut stream = watcher(deployments, config).applied_objects().boxed();
        while let Ok(Some(deployment)) = stream.try_next().await {
            let namespace = deployment.namespace().unwrap_or_default();
            if !namespaces.contains(&namespace) {
                namespaces.push(namespace);
            }
            if namespaces.len() == 2 {
                break;
            }
        }
        namespaces
    });

    let name = unique_name("drill");
    apply(&incident(&name, &plan_name, "Drill", "2021-07-31T00:00:00Z").to_string());
    let done = until_incident(&name, "finished its drill", |i| {
        matches!(
            phase(i),
            Some(IncidentPhase::Recovered | IncidentPhase::Failed)
        )
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(phase(&done), Some(IncidentPhase::Recovered), "{status:#?}");
    assert_eq!(
        steps(&done),
        [
            ("ChooseRestorePoints".to_owned(), StepState::Done),
            ("Recover".to_owned(), StepState::Done),
            ("CleanUp".to_owned(), StepState::Done),
        ]
    );
    let recover = &status.timeline[1];
    assert!(
        recover.message.as_deref().unwrap().contains("recovered"),
        "{recover:?}"
    );

    // The copies ran in prefixed namespaces, and were measured against the RTOs.
    let mut copied = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .expect("the watch saw both copies")
        .unwrap();
    copied.sort();
    let mut expected = vec![format!("drill-{critical}"), format!("drill-{booking}")];
    expected.sort();
    assert_eq!(copied, expected);
    let tiers: Vec<(&str, Option<bool>, bool)> = status
        .tiers
        .iter()
        .map(|t| (t.tier.as_str(), t.met, t.time_to_ready.is_some()))
        .collect();
    assert_eq!(
        tiers,
        [
            ("life-critical", Some(true), true),
            ("booking", Some(true), true)
        ],
        "the verified-in-place finance tier is not drilled"
    );
    assert!(status.tiers.iter().all(|t| t.plan == plan_name));

    // `resurgo status --incident` shows the same: the steps and the measured tiers.
    let view = std::process::Command::new(resurgo_tests::resurgo_bin("resurgo"))
        .args(["status", "--incident", &name, "-o", "json"])
        .output()
        .expect("run resurgo status");
    assert!(
        view.status.success(),
        "{}",
        String::from_utf8_lossy(&view.stderr)
    );
    let view: Value = serde_json::from_slice(&view.stdout).expect("JSON");
    assert_eq!(view["phase"], json!("Recovered"));
    assert_eq!(view["mode"], json!("Drill"));
    assert_eq!(view["timeline"][2]["step"], json!("CleanUp"));
    assert_eq!(view["tiers"][0]["tier"], json!("life-critical"));

    // Nothing is left: the copy and its namespaces are gone.
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    assert!(plans.get_opt(&copy_name).await.unwrap().is_none());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for copy in &expected {
        let gone = tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(namespaces.clone(), copy, |n: Option<&Namespace>| {
                n.is_none()
            }),
        )
        .await;
        assert!(gone.is_ok(), "namespace {copy} was not removed");
    }

    // And the real side was never touched: the plan still waits, its namespaces were never
    // created, and the finance data is as it was.
    let real = plans.get(&plan_name).await.unwrap();
    let real_status = real.status.unwrap();
    assert_eq!(real_status.phase, Some(PlanPhase::Pending));
    assert!(real_status.services.iter().all(|s| s.started.is_none()));
    for namespace in [&critical, &booking] {
        assert!(namespaces.get_opt(namespace).await.unwrap().is_none());
    }
    let ledger_after = Api::<ConfigMap>::namespaced(client.clone(), &finance)
        .get("ledger")
        .await
        .unwrap();
    assert_eq!(
        ledger_after.resource_version(),
        ledger_before.resource_version()
    );
    let jobs = kubectl_ok(&["-n", &finance, "get", "jobs", "-o", "name"], None).unwrap();
    assert_eq!(jobs, "", "a drill ran checks in a real namespace");

    let _ = kubectl(&["delete", "incident", &name, "--wait=false"], None);
    let _ = kubectl(
        &["delete", "recoveryplan", &plan_name, "--wait=false"],
        None,
    );
    let _ = kubectl(&["delete", "namespace", &finance, "--wait=false"], None);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_real_incident_starts_its_plan_and_a_planted_credential_counts_for_nothing() {
    install_crds().await;
    let client = client().await;
    let plan_name = unique_name("incident-plan");
    let critical = unique_name("inc-critical");
    let booking = unique_name("inc-booking");
    let finance = unique_name("inc-finance");
    kubectl_ok(&["create", "namespace", &finance], None).unwrap();
    kubectl_ok(&["create", "namespace", &critical], None).unwrap();
    // A credential planted by the attacker to look like the plan's own regeneration: its
    // labels, a rotation annotation in the future and a key of its own. Neither the rebuild
    // nor the incident may take it for the operator's.
    apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "dispatch-db", "namespace": critical,
                         "labels": {"resurgo.dev/plan": plan_name, "resurgo.dev/service": "dispatch",
                                    "resurgo.dev/part": "secret"},
                         "annotations": {"resurgo.dev/rotated-at": "2999-01-01T00:00:00Z"}},
            "stringData": {"password": "before-the-attack", "backdoor": "attacker-key"}
        })
        .to_string(),
    );
    let spec = plan(&plan_name, [&critical, &booking, &finance]);
    apply(&spec.to_string());

    // Without an incident the plan creates nothing and says what it waits for.
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    let waiting = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(plans.clone(), &plan_name, |p: Option<&RecoveryPlan>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Progressing" && c.reason == "WaitingForIncident")
            })
        }),
    )
    .await;
    assert!(
        waiting.is_ok(),
        "the plan never said it waits for an incident"
    );
    let deployments: Api<Deployment> = Api::all(client.clone());
    let ours = ListParams::default().labels(&format!("resurgo.dev/plan={plan_name}"));
    assert!(deployments.list(&ours).await.unwrap().items.is_empty());

    // When the Secret was made does not matter: planted after the compromise, it is still
    // not the operator's. A second before now, so that the plan's regeneration, recorded to
    // the second, is after it.
    let compromised_since = (Timestamp::now() - SignedDuration::from_secs(1))
        .round(
            jiff::TimestampRound::new()
                .smallest(Unit::Second)
                .mode(jiff::RoundMode::Floor),
        )
        .unwrap()
        .to_string();
    let name = unique_name("ransomware");
    apply(&incident(&name, &plan_name, "Real", &compromised_since).to_string());
    let recovered = until_incident(&name, "recovered", |i| {
        matches!(
            phase(i),
            Some(IncidentPhase::Recovered | IncidentPhase::Failed)
        )
    })
    .await;
    let status = recovered.status.clone().unwrap();
    assert_eq!(
        phase(&recovered),
        Some(IncidentPhase::Recovered),
        "{status:#?}"
    );
    let order: Vec<&str> = status.timeline.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(
        order,
        [
            "Lockdown",
            "FreezePruning",
            "ChooseRestorePoints",
            "Recover",
            "RotateCredentials"
        ]
    );
    assert!(status.timeline.iter().all(|e| e.state == StepState::Done));
    assert!(
        status
            .timeline
            .windows(2)
            .all(|w| w[0].finished.as_ref().unwrap().0 <= w[1].started.0),
        "a step started before the one before it finished: {:#?}",
        status.timeline
    );
    // The plan started only once the incident reached its Recover step.
    let plan = plans.get(&plan_name).await.unwrap();
    let recover_started = status.timeline[3].started.0;
    let first_start = plan
        .status
        .as_ref()
        .unwrap()
        .services
        .iter()
        .filter_map(|s| s.started.as_ref().map(|t| t.0))
        .min()
        .unwrap();
    // Both times are to the second, as the API stores them.
    assert!(
        first_start >= recover_started,
        "the plan started at {first_start}, before the Recover step at {recover_started}"
    );
    assert_eq!(plan.status.unwrap().phase, Some(PlanPhase::Recovered));
    assert_eq!(status.tiers.len(), 3, "{:#?}", status.tiers);

    // The planted credential was replaced whole by the rebuild, after the compromise, and the
    // incident counted it from the plan's record of that write (uid and resourceVersion), not
    // from anything the Secret says about itself.
    let secret = Api::<Secret>::namespaced(client.clone(), &critical)
        .get("dispatch-db")
        .await
        .unwrap();
    let data = secret.data.clone().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["password"]);
    let password = data["password"].0.clone();
    assert_ne!(password, b"before-the-attack");
    assert_eq!(password.len(), 64, "32 random bytes, hex");
    assert!(!secret.annotations().contains_key("resurgo.dev/rotated-at"));
    let plan = plans.get(&plan_name).await.unwrap();
    let dispatch = &plan.status.as_ref().unwrap().services[0];
    let compromise: Timestamp = compromised_since.parse().unwrap();
    assert!(
        dispatch.regenerated_secrets.iter().any(|r| {
            Some(&r.uid) == secret.metadata.uid.as_ref()
                && Some(&r.resource_version) == secret.metadata.resource_version.as_ref()
                && r.written.0 > compromise
        }),
        "no record of the Secret as it is: {:?}",
        dispatch.regenerated_secrets
    );
    // Counted, not rotated a second time.
    assert!(
        status.rotated_secrets.is_empty(),
        "{:?}",
        status.rotated_secrets
    );
    assert_eq!(events(&name, "CredentialRotated"), "");

    // Closing the incident ends it.
    let mut closed = incident(&name, &plan_name, "Real", &compromised_since);
    closed["spec"]["state"] = json!("Closed");
    apply(&closed.to_string());
    let closed = until_incident(&name, "closed", |i| phase(i) == Some(IncidentPhase::Closed)).await;
    let order: Vec<String> = steps(&closed).into_iter().map(|(s, _)| s).collect();
    assert_eq!(&order[5..], ["LiftLockdown", "UnfreezePruning"]);
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Ready",
            "--timeout=10s",
            &format!("incident/{name}"),
        ],
        None,
    )
    .unwrap();

    let _ = kubectl(&["delete", "incident", &name, "--wait=false"], None);
    let _ = kubectl(
        &["delete", "recoveryplan", &plan_name, "--wait=false"],
        None,
    );
    for namespace in [&critical, &booking, &finance] {
        let _ = kubectl(&["delete", "namespace", namespace, "--wait=false"], None);
    }
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn an_incident_rotates_a_credential_changed_since_the_operator_wrote_it() {
    install_crds().await;
    let client = client().await;
    let plan_name = unique_name("tampered-plan");
    let namespace = unique_name("tampered");
    // Compromised since before the plan ran: the plan's own regeneration is newer, and an
    // untouched one would count as rotated.
    let compromised_since = (Timestamp::now() - SignedDuration::from_secs(60))
        .round(Unit::Second)
        .unwrap()
        .to_string();
    apply(
        &json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
            "metadata": {"name": plan_name},
            "spec": {
                "tiers": [{"name": "life-critical", "rto": "15m"}],
                "services": [{"name": "dispatch", "tier": "life-critical", "namespace": namespace,
                              "workload": {"manifests": [deployment("dispatch", None)]},
                              "regenerateSecrets": [{"name": "dispatch-db", "keys": ["password"]}]}]
            }
        })
        .to_string(),
    );
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    let recovered = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(plans.clone(), &plan_name, |p: Option<&RecoveryPlan>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.phase == Some(PlanPhase::Recovered))
        }),
    )
    .await;
    assert!(recovered.is_ok(), "the plan never recovered");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let regenerated = secrets.get("dispatch-db").await.unwrap();

    // The attacker adds a key to the Secret the plan regenerated, and leaves its labels.
    kubectl_ok(
        &[
            "-n",
            &namespace,
            "patch",
            "secret",
            "dispatch-db",
            "--type=merge",
            "-p",
            r#"{"stringData": {"backdoor": "attacker-key"}}"#,
        ],
        None,
    )
    .unwrap();

    let name = unique_name("tampering");
    apply(&incident(&name, &plan_name, "Real", &compromised_since).to_string());
    let done = until_incident(&name, "recovered", |i| {
        matches!(
            phase(i),
            Some(IncidentPhase::Recovered | IncidentPhase::Failed)
        )
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(phase(&done), Some(IncidentPhase::Recovered), "{status:#?}");

    // Rotated: the tampered Secret was not counted as the operator's, and the rotation
    // replaced it whole.
    let rotated = secrets.get("dispatch-db").await.unwrap();
    let data = rotated.data.clone().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password"],
        "the attacker's key survived"
    );
    assert_ne!(data["password"], regenerated.data.unwrap()["password"]);
    assert_eq!(data["password"].0.len(), 64, "32 random bytes, hex");
    assert!(rotated.annotations().contains_key("resurgo.dev/rotated-at"));
    assert_eq!(
        status.rotated_secrets.len(),
        1,
        "{:?}",
        status.rotated_secrets
    );
    let record = &status.rotated_secrets[0];
    assert_eq!(
        (record.namespace.as_str(), record.name.as_str()),
        (namespace.as_str(), "dispatch-db")
    );
    assert_eq!(Some(&record.uid), rotated.metadata.uid.as_ref());
    assert_eq!(
        Some(&record.resource_version),
        rotated.metadata.resource_version.as_ref()
    );
    let messages = events(&name, "CredentialRotated");
    assert!(
        messages.contains(&format!("{namespace}/dispatch-db")),
        "{messages:?}"
    );
    assert!(!messages.contains("attacker-key"));

    let _ = kubectl(&["delete", "incident", &name, "--wait=false"], None);
    let _ = kubectl(
        &["delete", "recoveryplan", &plan_name, "--wait=false"],
        None,
    );
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}

/// The condition `type_` of `incident`.
fn condition<'a>(incident: &'a Incident, type_: &str) -> Option<&'a Condition> {
    incident
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_closed_incident_says_which_stalled_policy_keeps_its_lockdown() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("stalled-lift");
    // The shared operator leaves this policy alone, so its status is what this test writes:
    // a policy still in Lockdown whose controller cannot apply what returning to Normal
    // needs (as when the API server refuses a NetworkPolicy it renders).
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    apply(
        &json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": name, "labels": {"resurgo.dev/test-operator": name}},
            "spec": {"mode": "Normal"}
        })
        .to_string(),
    );
    let why = "NetworkPolicy resurgo.remote.staff.vpn: spec.ingress[0].ports[0].port: must be between 1 and 65535";
    let set_status = |mode: &str, stalled: bool| {
        json!({"status": {"mode": mode, "conditions": [{
            "type": "Stalled", "status": if stalled { "True" } else { "False" },
            "reason": if stalled { "ApplyFailed" } else { "Applied" },
            "message": if stalled { why } else { "" },
            "observedGeneration": 1,
            "lastTransitionTime": Timestamp::now().round(Unit::Second).unwrap().to_string()
        }]}})
    };
    policies
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(set_status("Lockdown", true)),
        )
        .await
        .unwrap();

    // Closed from the start: only LiftLockdown and UnfreezePruning run, so nothing else in
    // the cluster is locked down or frozen by this test.
    apply(
        &json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
            "metadata": {"name": name},
            "spec": {"compromisedSince": "2021-07-31T23:00:00Z", "state": "Closed",
                     "accessPolicies": [name]}
        })
        .to_string(),
    );
    let stalled = until_incident(&name, "said which policy keeps the lockdown", |i| {
        condition(i, "Stalled").is_some_and(|c| c.status == "True")
    })
    .await;
    let condition_ = condition(&stalled, "Stalled").unwrap();
    assert_eq!(condition_.reason, "AccessPolicyStalled");
    assert_eq!(
        condition_.message,
        format!(
            "LiftLockdown: accesspolicy {name} is Stalled and cannot leave Lockdown until its spec is corrected: ApplyFailed: {why}"
        )
    );
    assert_eq!(
        condition(&stalled, "Progressing").map(|c| c.status.as_str()),
        Some("False")
    );

    // Once the policy is corrected and leaves Lockdown, the step goes on by itself.
    policies
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(set_status("Normal", false)),
        )
        .await
        .unwrap();
    let closed = until_incident(&name, "closed", |i| phase(i) == Some(IncidentPhase::Closed)).await;
    assert_eq!(
        condition(&closed, "Stalled").map(|c| c.status.as_str()),
        Some("False")
    );
    assert!(
        steps(&closed)
            .iter()
            .all(|(_, state)| *state == StepState::Done),
        "{:?}",
        steps(&closed)
    );

    kubectl_ok(&["delete", "incident", &name, "--wait=false"], None).unwrap();
    kubectl_ok(&["delete", "accesspolicy", &name, "--wait=false"], None).unwrap();
}

/// A client that authenticates with `token` alone.
async fn client_with_token(token: &str) -> Client {
    let mut config = Config::infer().await.unwrap();
    config.auth_info = AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// What the API server answers `token` when asked whether it may create Deployments in
/// `namespace`: whether it may, or the HTTP code it refused the token with.
async fn token_may_create_deployments(token: &str, namespace: &str) -> Result<bool, u16> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                verb: Some("create".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<SelfSubjectAccessReview>::all(client_with_token(token).await)
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(answer) => Ok(answer.status.is_some_and(|s| s.allowed)),
        Err(kube::Error::Api(status)) => Err(status.code),
        Err(other) => panic!("asking with a token: {other}"),
    }
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn an_incident_voids_every_token_of_a_namespace_admins_service_account_but_the_kept_ones() {
    install_crds().await;
    let client = client().await;
    let namespace = unique_name("tokens");
    let ns = namespace.as_str();
    kubectl_ok(&["create", "namespace", ns], None).unwrap();
    // A namespace admin made `backdoor` and bound it to admin; `dispatch` is the
    // life-critical workload's, allow-listed.
    for account in ["backdoor", "dispatch"] {
        kubectl_ok(&["-n", ns, "create", "serviceaccount", account], None).unwrap();
        kubectl_ok(
            &[
                "-n",
                ns,
                "create",
                "rolebinding",
                &format!("{account}-admin"),
                "--clusterrole=admin",
                &format!("--serviceaccount={ns}:{account}"),
            ],
            None,
        )
        .unwrap();
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut backdoor_account = accounts.get("backdoor").await.unwrap();
    backdoor_account.metadata.labels = Some([("team".to_owned(), "ops".to_owned())].into());
    backdoor_account.image_pull_secrets = Some(vec![LocalObjectReference {
        name: "registry".into(),
    }]);
    backdoor_account.automount_service_account_token = Some(false);
    let backdoor_account = accounts
        .replace("backdoor", &PostParams::default(), &backdoor_account)
        .await
        .unwrap();
    let old_uid = backdoor_account.uid().unwrap();
    // A token taken out of the cluster, and a legacy token Secret the controller fills.
    let token = |account: &str| {
        kubectl_ok(&["-n", ns, "create", "token", account], None)
            .unwrap()
            .trim()
            .to_owned()
    };
    let backdoor = token("backdoor");
    let dispatch = token("dispatch");
    apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": "backdoor-legacy", "namespace": ns,
                         "annotations": {"kubernetes.io/service-account.name": "backdoor"}}
        })
        .to_string(),
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let legacy = Arc::new(std::sync::Mutex::new(String::new()));
    eventually(
        "the legacy token Secret is filled",
        Duration::from_secs(30),
        || {
            let secrets = secrets.clone();
            let legacy = legacy.clone();
            async move {
                let secret = secrets.get("backdoor-legacy").await.unwrap();
                match secret.data.and_then(|d| d.get("token").cloned()) {
                    Some(token) => {
                        *legacy.lock().unwrap() = String::from_utf8(token.0).unwrap();
                        true
                    }
                    None => false,
                }
            }
        },
    )
    .await;
    let legacy = legacy.lock().unwrap().clone();
    for (name, token) in [
        ("backdoor", &backdoor),
        ("legacy", &legacy),
        ("dispatch", &dispatch),
    ] {
        assert_eq!(
            token_may_create_deployments(token, ns).await,
            Ok(true),
            "the {name} token works before the incident"
        );
    }

    let name = unique_name("stolen-tokens");
    let incident = json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident",
        "metadata": {"name": name},
        "spec": {
            "compromisedSince": "2021-07-31T00:00:00Z",
            "invalidateServiceAccountTokens": {
                "namespaces": [ns],
                "keep": [{"namespace": ns, "name": "dispatch"}]
            }
        }
    });
    apply(&incident.to_string());
    let step = "InvalidateServiceAccountTokens";
    let done = until_incident(&name, "invalidated the tokens", |i| {
        steps(i)
            .iter()
            .any(|(s, state)| s == step && *state != StepState::Running)
    })
    .await;
    let status = done.status.clone().unwrap();
    let entry = status.timeline.iter().find(|e| e.step == step).unwrap();
    assert_eq!(entry.state, StepState::Done, "{status:#?}");
    assert_eq!(
        status.timeline[0].step, "Lockdown",
        "the tokens go after the lockdown"
    );
    let message = entry.message.clone().unwrap();
    assert!(
        message.starts_with(&format!(
            "2 ServiceAccounts re-created with new uids in {ns} (every token of their old uids is refused); 1 legacy token Secrets deleted; kept, tokens still valid: {ns}/dispatch"
        )),
        "{message}"
    );

    // Every token of the old backdoor is refused, on any request.
    for (what, token) in [("backdoor", &backdoor), ("legacy", &legacy)] {
        eventually(
            &format!("the {what} token is refused"),
            Duration::from_secs(10),
            || async { token_may_create_deployments(token, ns).await == Err(401) },
        )
        .await;
    }
    assert!(secrets.get_opt("backdoor-legacy").await.unwrap().is_none());
    // The kept account's token still works.
    assert_eq!(token_may_create_deployments(&dispatch, ns).await, Ok(true));
    // `backdoor` exists again, with a new uid the incident recorded, and its fields.
    let again = accounts.get("backdoor").await.unwrap();
    let new_uid = again.uid().unwrap();
    assert_ne!(new_uid, old_uid);
    assert_eq!(again.labels().get("team").map(String::as_str), Some("ops"));
    assert_eq!(
        again.image_pull_secrets,
        Some(vec![LocalObjectReference {
            name: "registry".into()
        }])
    );
    assert_eq!(again.automount_service_account_token, Some(false));
    let record = status
        .reissued_service_accounts
        .iter()
        .find(|r| r.name == "backdoor")
        .expect("a record of backdoor");
    assert_eq!(
        (record.replaced_uid.as_str(), record.uid.as_deref()),
        (old_uid.as_str(), Some(new_uid.as_str()))
    );
    assert_eq!(record.legacy_token_secrets, ["backdoor-legacy"]);
    assert!(
        !status
            .reissued_service_accounts
            .iter()
            .any(|r| r.name == "dispatch"),
        "the kept account was recorded"
    );
    // A new token for the new account works: workloads go on with tokens the kubelet asks for.
    assert_eq!(
        token_may_create_deployments(&token("backdoor"), ns).await,
        Ok(true)
    );
    // No token anywhere in the incident: status, or Events.
    let printed = serde_json::to_string(&done).unwrap() + &events(&name, "ServiceAccountReissued");
    for token in [&backdoor, &legacy, &dispatch] {
        assert!(!printed.contains(token.as_str()));
    }
    assert!(events(&name, "ServiceAccountReissued").contains(&format!(
        "ServiceAccount {ns}/backdoor created again with a new uid"
    )),);

    let mut closed = incident.clone();
    closed["spec"]["state"] = json!("Closed");
    apply(&closed.to_string());
    until_incident(&name, "closed", |i| phase(i) == Some(IncidentPhase::Closed)).await;
    let _ = kubectl(&["delete", "incident", &name, "--wait=false"], None);
    let _ = kubectl(&["delete", "namespace", ns, "--wait=false"], None);
}
