//! Priority-ordered recovery on the real control plane, with the operator that tests/run.sh
//! runs. Order is asserted from one watch stream of the Deployments (events arrive in the
//! API server's revision order), never from the operator's logs.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Secret},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use resurgo::api::recovery_plan::{PlanPhase, RecoveryPlan, ServicePhase};
use resurgo_tests::{
    apply, client, deployment, install_crds, job_spec, kubectl, kubectl_ok, unique_name,
};
use serde_json::{Value, json};

fn service(
    name: &str,
    tier: &str,
    namespace: &str,
    depends_on: &[&str],
    zone: Option<&str>,
) -> Value {
    json!({
        "name": name, "tier": tier, "namespace": namespace, "dependsOn": depends_on,
        "workload": {"manifests": [deployment(name, zone)]}
    })
}

fn plan(name: &str, spec: Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn wait(plan: &str, condition: &str, timeout: &str) {
    let output = kubectl(
        &[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("--timeout={timeout}"),
            &format!("recoveryplan/{plan}"),
        ],
        None,
    );
    if !output.status.success() {
        let status = kubectl(&["get", "recoveryplan", plan, "-o", "yaml"], None);
        panic!(
            "recoveryplan/{plan} did not become {condition}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&status.stdout)
        );
    }
}

/// A fake node in `zone`: pods held back by that zone schedule, and kwok makes them ready.
fn add_node(zone: &str) {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": format!("zone-{zone}"),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": format!("zone-{zone}"), "type": "kwok", "resurgo.test/zone": zone}
        },
        "status": {"capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
    });
    apply(&node.to_string());
}

/// What one watch of a plan's Deployments saw, in the API server's order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Created(String),
    Available(String),
}

/// Reports, in the API server's order, when each Deployment of `plan` first appears and
/// first becomes Available.
async fn record(plan: &str) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let deployments: Api<Deployment> = Api::all(client().await);
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={plan}"));
    tokio::spawn(async move {
        let mut stream = watcher(deployments, config).applied_objects().boxed();
        let mut sent = Vec::new();
        while let Ok(Some(deployment)) = stream.try_next().await {
            let name = deployment.name_any();
            let available = deployment
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                });
            let mut events = vec![Seen::Created(name.clone())];
            if available {
                events.push(Seen::Available(name));
            }
            for event in events {
                if !sent.contains(&event) {
                    sent.push(event.clone());
                    if sender.send(event).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// Collects what the watch reports until every one of `services` was seen Available.
async fn collect_until_available(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    services: &[&str],
) -> Vec<Seen> {
    let mut log = Vec::new();
    let all_available = |log: &[Seen]| {
        services
            .iter()
            .all(|s| log.contains(&Seen::Available((*s).into())))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !all_available(&log) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => log.push(event),
            _ => panic!("the watch never saw all of {services:?} available: {log:?}"),
        }
    }
    log
}

fn position(log: &[Seen], event: &Seen) -> usize {
    log.iter()
        .position(|e| e == event)
        .unwrap_or_else(|| panic!("{event:?} never seen in {log:?}"))
}

/// Waits, through a watch of the plan, until its status satisfies `condition`.
async fn until(
    name: &str,
    what: &str,
    condition: impl Fn(&resurgo::api::recovery_plan::RecoveryPlanStatus) -> bool,
) -> resurgo::api::recovery_plan::RecoveryPlanStatus {
    let plans: Api<RecoveryPlan> = Api::all(client().await);
    let matches =
        |plan: Option<&RecoveryPlan>| plan.and_then(|p| p.status.as_ref()).is_some_and(&condition);
    match tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(plans, name, matches),
    )
    .await
    {
        Ok(Ok(Some(plan))) => plan.status.unwrap_or_default(),
        _ => panic!(
            "recoveryplan/{name}: never {what}: {:?}",
            plan_status(name).await
        ),
    }
}

async fn plan_status(name: &str) -> resurgo::api::recovery_plan::RecoveryPlanStatus {
    let plans: Api<RecoveryPlan> = Api::all(client().await);
    plans
        .get_status(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

async fn deployments_of(plan: &str) -> Vec<String> {
    let deployments: Api<Deployment> = Api::all(client().await);
    deployments
        .list(&ListParams::default().labels(&format!("resurgo.dev/plan={plan}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn clinical_services_wait_for_the_life_critical_tier_and_their_dependencies() {
    install_crds().await;
    let name = unique_name("order");
    let zone = unique_name("zone");
    let ns = |s: &str| format!("{name}-{s}");
    let mut events = record(&name).await;
    apply(&plan(
        &name,
        json!({
            "tiers": [{"name": "life-critical", "rto": "15m"}, {"name": "clinical", "rto": "4h"}],
            "services": [
                service("emergency", "life-critical", &ns("emergency"), &[], None),
                // Held back until the test adds a node in its zone.
                service("dispatch", "life-critical", &ns("dispatch"), &[], Some(&zone)),
                service("records", "clinical", &ns("records"), &[], None),
                service("radiology", "clinical", &ns("radiology"), &["records"], None),
            ]
        }),
    ));

    // The tier is not done while dispatch waits: nothing clinical may exist.
    let status = until(&name, "emergency ready while dispatch deploys", |status| {
        let phase = |service: &str| {
            status
                .services
                .iter()
                .find(|s| s.name == service)
                .map(|s| s.phase)
        };
        phase("emergency") == Some(ServicePhase::Ready)
            && phase("dispatch") == Some(ServicePhase::Deploying)
    })
    .await;
    let records = status
        .services
        .iter()
        .find(|s| s.name == "records")
        .unwrap();
    assert_eq!(records.phase, ServicePhase::Pending);
    assert_eq!(records.blocked_on, ["tier/life-critical"]);
    let mut created = deployments_of(&name).await;
    created.sort();
    assert_eq!(
        created,
        ["dispatch", "emergency"],
        "a clinical service started before its tier's turn"
    );

    add_node(&zone);
    wait(&name, "Ready", "60s");
    let log = collect_until_available(
        &mut events,
        &["emergency", "dispatch", "records", "radiology"],
    )
    .await;
    let dispatch_ready = position(&log, &Seen::Available("dispatch".into()));
    let emergency_ready = position(&log, &Seen::Available("emergency".into()));
    for clinical in ["records", "radiology"] {
        let created = position(&log, &Seen::Created(clinical.into()));
        assert!(
            created > dispatch_ready && created > emergency_ready,
            "{clinical} before its tier's turn: {log:?}"
        );
    }
    assert!(
        position(&log, &Seen::Created("radiology".into()))
            > position(&log, &Seen::Available("records".into())),
        "radiology created before records was ready: {log:?}"
    );

    let status = plan_status(&name).await;
    assert_eq!(status.phase, Some(PlanPhase::Recovered));
    assert_eq!(status.ready.as_deref(), Some("4/4"));
    assert!(
        status.tiers.iter().all(|t| t.ready.is_some()),
        "{:?}",
        status.tiers
    );

    // Hardening of what was rebuilt.
    let client = client().await;
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns("radiology"))
        .await
        .unwrap();
    assert_eq!(
        namespace.labels()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(client, &ns("radiology"));
    let allow = policies.get("resurgo-allow-dependencies").await.unwrap();
    let egress = serde_json::to_value(allow.spec.unwrap().egress.unwrap())
        .unwrap()
        .to_string();
    assert!(
        egress.contains(&ns("records")),
        "radiology may reach records: {egress}"
    );
    assert!(
        !egress.contains(&ns("emergency")),
        "radiology may not reach emergency: {egress}"
    );
    policies.get("resurgo-default-deny").await.unwrap();
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_failed_life_critical_service_halts_the_lower_tiers() {
    install_crds().await;
    let name = unique_name("halt");
    let ns = |s: &str| format!("{name}-{s}");
    let mut stuck = service(
        "dispatch",
        "life-critical",
        &ns("dispatch"),
        &[],
        Some("nowhere"),
    );
    stuck["readiness"] = json!({"timeout": "3s"});
    apply(&plan(
        &name,
        json!({
            "onFailure": "HaltLowerTiers",
            "tiers": [{"name": "life-critical", "rto": "15m"}, {"name": "clinical", "rto": "4h"}],
            "services": [stuck, service("records", "clinical", &ns("records"), &[], None)]
        }),
    ));
    wait(&name, "Stalled", "60s");
    let status = plan_status(&name).await;
    assert_eq!(status.phase, Some(PlanPhase::Failed));
    let dispatch = status
        .services
        .iter()
        .find(|s| s.name == "dispatch")
        .unwrap();
    assert_eq!(dispatch.phase, ServicePhase::Failed);
    assert!(
        dispatch
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("timeout"),
        "{dispatch:?}"
    );
    let records = status
        .services
        .iter()
        .find(|s| s.name == "records")
        .unwrap();
    assert_eq!(records.phase, ServicePhase::Blocked);
    assert_eq!(records.blocked_on, ["tier/life-critical"]);
    assert_eq!(
        deployments_of(&name).await,
        ["dispatch"],
        "the clinical tier must not start"
    );
    let stalled = kubectl_ok(
        &[
            "get",
            "recoveryplan",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Stalled\")].message}",
        ],
        None,
    )
    .unwrap();
    assert!(stalled.contains("dispatch"), "{stalled}");
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn with_continue_a_failure_is_given_up_and_the_rest_recovers() {
    install_crds().await;
    let name = unique_name("continue");
    let ns = |s: &str| format!("{name}-{s}");
    let mut stuck = service(
        "dispatch",
        "life-critical",
        &ns("dispatch"),
        &[],
        Some("nowhere"),
    );
    stuck["readiness"] = json!({"timeout": "3s"});
    apply(&plan(
        &name,
        json!({
            "onFailure": "Continue",
            "tiers": [{"name": "life-critical", "rto": "15m"}, {"name": "clinical", "rto": "4h"}],
            "services": [
                stuck,
                service("records", "clinical", &ns("records"), &[], None),
                service("dispatch-reports", "clinical", &ns("reports"), &["dispatch"], None),
            ]
        }),
    ));
    wait(&name, "Stalled", "60s");
    let status = plan_status(&name).await;
    assert_eq!(status.phase, Some(PlanPhase::Degraded), "{status:?}");
    let phase = |service: &str| {
        status
            .services
            .iter()
            .find(|s| s.name == service)
            .unwrap()
            .phase
    };
    assert_eq!(phase("dispatch"), ServicePhase::Failed);
    assert_eq!(phase("records"), ServicePhase::Ready);
    assert_eq!(phase("dispatch-reports"), ServicePhase::Blocked);
    let mut created = deployments_of(&name).await;
    created.sort();
    assert_eq!(created, ["dispatch", "records"]);
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_deleted_workload_is_rebuilt_and_credentials_are_regenerated_not_restored() {
    install_crds().await;
    let name = unique_name("rebuild");
    let namespace = format!("{name}-dispatch");
    let client = client().await;

    // A credential left from before the incident: it must be replaced, not reused.
    apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            .to_string(),
    );
    apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": namespace},
                "stringData": {"password": "hunter2-from-the-compromised-backup"}})
        .to_string(),
    );
    let mut dispatch = service("dispatch", "life-critical", &namespace, &[], None);
    dispatch["regenerateSecrets"] = json!([{"name": "db", "keys": ["password", "api-token"]}]);
    apply(&plan(
        &name,
        json!({"tiers": [{"name": "life-critical", "rto": "15m"}], "services": [dispatch]}),
    ));
    wait(&name, "Ready", "60s");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get("db").await.unwrap();
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    assert_ne!(data["password"], "hunter2-from-the-compromised-backup");
    assert_eq!(data["password"].len(), 64, "32 random bytes, hex");
    assert_ne!(data["password"], data["api-token"]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let first = deployments.get("dispatch").await.unwrap().uid().unwrap();
    deployments
        .delete("dispatch", &DeleteParams::default())
        .await
        .unwrap();

    // Rebuilt from the watch event, counted as a second attempt, with a new object.
    until(&name, "rebuilt and ready again", |status| {
        status.services[0].attempts == 2 && status.services[0].phase == ServicePhase::Ready
    })
    .await;
    let rebuilt = deployments.get("dispatch").await.unwrap().uid().unwrap();
    assert_ne!(rebuilt, first);
    wait(&name, "Ready", "60s");
    // Every transition is an Event on the plan, for `kubectl describe`.
    let reasons = kubectl_ok(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )
    .unwrap();
    for reason in [
        "SecretRegenerated",
        "ServiceStarted",
        "ServiceReady",
        "ServiceLost",
        "TierRecovered",
        "PlanRecovered",
    ] {
        assert!(
            reasons.split_whitespace().any(|r| r == reason),
            "no {reason} event among {reasons}"
        );
    }
    // The regenerated secret survives the rebuild: the workload may already use it.
    let again = secrets.get("db").await.unwrap().data.unwrap();
    assert_eq!(
        String::from_utf8(again["password"].0.clone()).unwrap(),
        data["password"]
    );
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_deleted_object_of_any_kind_is_rebuilt_from_its_watch_event() {
    install_crds().await;
    let name = unique_name("lost-service");
    let namespace = format!("{name}-lab");
    let client = client().await;
    // A Deployment and a Service: the Service is neither a workload with a status nor
    // touched by anything else after the plan is ready, so only its own deletion can
    // make the operator look again.
    let mut lab = service("lab", "clinical", &namespace, &[], None);
    lab["workload"]["manifests"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lab"},
            "spec": {"selector": {"app": "lab"}, "ports": [{"port": 80}]}
        }));
    apply(&plan(
        &name,
        json!({"tiers": [{"name": "clinical", "rto": "15m"}], "services": [lab]}),
    ));
    wait(&name, "Ready", "60s");

    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &namespace);
    let first = services.get("lab").await.unwrap().uid().unwrap();
    services
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();

    let status = until(&name, "rebuilt after its Service was deleted", |status| {
        status.services[0].attempts == 2 && status.services[0].phase == ServicePhase::Ready
    })
    .await;
    assert_eq!(status.services[0].attempts, 2, "{status:?}");
    let rebuilt = services.get("lab").await.unwrap().uid().unwrap();
    assert_ne!(rebuilt, first, "a new Service, not the deleted one");
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn an_invalid_plan_is_stalled_and_creates_nothing() {
    install_crds().await;
    let name = unique_name("cycle");
    let ns = |s: &str| format!("{name}-{s}");
    apply(&plan(
        &name,
        json!({
            "tiers": [{"name": "clinical", "rto": "4h"}],
            "services": [
                service("records", "clinical", &ns("records"), &["lab"], None),
                service("lab", "clinical", &ns("lab"), &["records"], None),
            ]
        }),
    ));
    wait(&name, "Stalled", "30s");
    let message = kubectl_ok(
        &[
            "get",
            "recoveryplan",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Stalled\")].message}",
        ],
        None,
    )
    .unwrap();
    assert!(
        message.contains("records") && message.contains("lab"),
        "{message}"
    );
    assert!(message.contains("cycle"), "{message}");
    let namespaces: Api<Namespace> = Api::all(client().await);
    let ours = namespaces
        .list(&ListParams::default().labels(&format!("resurgo.dev/plan={name}")))
        .await
        .unwrap();
    assert!(ours.items.is_empty(), "an invalid plan created namespaces");
    assert!(deployments_of(&name).await.is_empty());
    delete_plan(&name).await;
}

/// What an attacker who may write Secrets in the namespace plants before a recovery: the
/// plan's own labels, an annotation claiming a rotation in the future, a value they know and
/// a key of their own.
fn planted_secret(plan: &str, namespace: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "db", "namespace": namespace,
                        "labels": {"resurgo.dev/plan": plan, "resurgo.dev/service": "dispatch",
                                   "resurgo.dev/part": "secret", "planted-by": "attacker"},
                        "annotations": {"resurgo.dev/rotated-at": "2999-01-01T00:00:00Z"}},
           "stringData": {"password": "known-to-the-attacker", "backdoor": "attacker-key"}})
    .to_string()
}

/// The Secret's keys and values, as text.
fn values(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// Asserts that `secret` is exactly what the operator wrote for the plan: only the listed key,
/// fresh, nothing of the attacker's, and recorded (uid and resourceVersion) in the status.
fn assert_regenerated_whole(
    secret: &Secret,
    record: &[resurgo::api::common::WrittenSecret],
    plan: &str,
) {
    let data = values(secret);
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password"],
        "{:?}",
        data.keys()
    );
    assert_ne!(data["password"], "known-to-the-attacker");
    assert_eq!(data["password"].len(), 64, "32 random bytes, hex");
    assert_eq!(
        secret.labels().get("resurgo.dev/plan").map(String::as_str),
        Some(plan)
    );
    assert!(
        !secret.labels().contains_key("planted-by"),
        "{:?}",
        secret.labels()
    );
    assert!(
        !secret.annotations().contains_key("resurgo.dev/rotated-at"),
        "{:?}",
        secret.annotations()
    );
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(Some(&record[0].uid), secret.metadata.uid.as_ref());
    assert_eq!(
        Some(&record[0].resource_version),
        secret.metadata.resource_version.as_ref(),
        "the status does not record the Secret as it is"
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_planted_credential_is_replaced_whole_and_a_tampered_one_again_at_the_next_start() {
    install_crds().await;
    let name = unique_name("planted");
    let namespace = format!("{name}-dispatch");
    let client = client().await;
    apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            .to_string(),
    );
    apply(&planted_secret(&name, &namespace));
    let mut dispatch = service("dispatch", "life-critical", &namespace, &[], None);
    dispatch["regenerateSecrets"] = json!([{"name": "db", "keys": ["password"]}]);
    apply(&plan(
        &name,
        json!({"tiers": [{"name": "life-critical", "rto": "15m"}], "services": [dispatch]}),
    ));
    wait(&name, "Ready", "60s");

    // The plan's labels and a rotation "in the future" made it look like the operator's
    // own: it was replaced all the same, and nothing of the attacker's survived.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get("db").await.unwrap();
    let status = plan_status(&name).await;
    assert_regenerated_whole(&secret, &status.services[0].regenerated_secrets, &name);
    let first = values(&secret)["password"].clone();

    // The attacker adds a key to the regenerated Secret. At the service's next start (its
    // Deployment is lost) the Secret is no longer the operator's write: replaced again.
    kubectl_ok(
        &[
            "-n",
            &namespace,
            "patch",
            "secret",
            "db",
            "--type=merge",
            "-p",
            r#"{"stringData": {"backdoor": "attacker-key"}}"#,
        ],
        None,
    )
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .delete("dispatch", &DeleteParams::default())
        .await
        .unwrap();
    let status = until(&name, "rebuilt and ready again", |status| {
        status.services[0].attempts == 2 && status.services[0].phase == ServicePhase::Ready
    })
    .await;
    let secret = secrets.get("db").await.unwrap();
    assert_regenerated_whole(&secret, &status.services[0].regenerated_secrets, &name);
    assert_ne!(
        values(&secret)["password"],
        first,
        "a tampered Secret was kept"
    );
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_planted_credential_that_cannot_be_replaced_fails_its_service() {
    install_crds().await;
    let name = unique_name("immutable");
    let namespace = format!("{name}-dispatch");
    apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            .to_string(),
    );
    // Immutable: without the right to delete Secrets the operator cannot replace it, and
    // must not start the service on it.
    let mut planted: Value = serde_json::from_str(&planted_secret(&name, &namespace)).unwrap();
    planted["immutable"] = json!(true);
    apply(&planted.to_string());
    let mut dispatch = service("dispatch", "life-critical", &namespace, &[], None);
    dispatch["regenerateSecrets"] = json!([{"name": "db", "keys": ["password"]}]);
    apply(&plan(
        &name,
        json!({"tiers": [{"name": "life-critical", "rto": "15m"}], "services": [dispatch]}),
    ));
    let status = until(&name, "failed the service", |status| {
        status
            .services
            .first()
            .is_some_and(|s| s.phase == ServicePhase::Failed)
    })
    .await;
    let message = status.services[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("Secret {namespace}/db is immutable")),
        "{message}"
    );
    assert!(!message.contains("known-to-the-attacker"));
    assert!(status.services[0].regenerated_secrets.is_empty());
    assert!(
        deployments_of(&name).await.is_empty(),
        "it ran on a planted credential"
    );
    delete_plan(&name).await;
}

async fn delete_plan(name: &str) {
    let plans: Api<RecoveryPlan> = Api::all(client().await);
    plans.delete(name, &DeleteParams::default()).await.unwrap();
}

/// A Job spec the restricted Pod Security level admits; kwok completes its pod.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn data_is_restored_before_the_workload_starts() {
    install_crds().await;
    let name = unique_name("restore");
    let namespace = format!("{name}-records");
    let mut records = service("records", "clinical", &namespace, &[], None);
    records["dataRestore"] = json!({"name": "restore-data", "spec": job_spec()});
    apply(&plan(
        &name,
        json!({"tiers": [{"name": "clinical", "rto": "4h"}], "services": [records]}),
    ));
    wait(&name, "Ready", "60s");

    let client = client().await;
    let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &namespace)
        .get("records-restore-data")
        .await
        .unwrap();
    assert_eq!(job.labels()["resurgo.dev/part"], "restore");
    let completed = job
        .status
        .unwrap()
        .completion_time
        .expect("the restore Job completed")
        .0;
    let deployment = Api::<Deployment>::namespaced(client, &namespace)
        .get("records")
        .await
        .unwrap();
    let created = deployment.metadata.creation_timestamp.unwrap().0;
    assert!(
        created >= completed,
        "the workload ({created}) was created before the restore completed ({completed})"
    );
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn financial_data_is_verified_in_place_not_rebuilt() {
    install_crds().await;
    let name = unique_name("verify");
    let namespace = format!("{name}-finance");
    // The ledger survived the attack: its namespace is already there.
    apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            .to_string(),
    );
    apply(&plan(
        &name,
        json!({
            "tiers": [{"name": "finance", "rto": "24h"}],
            "services": [{
                "name": "ledger", "tier": "finance", "namespace": namespace, "action": "Verify",
                "readiness": {"checks": [{"name": "checksums", "spec": job_spec()}]}
            }]
        }),
    ));
    wait(&name, "Ready", "60s");
    let client = client().await;
    let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &namespace)
        .get("ledger-checksums")
        .await
        .unwrap();
    assert!(job.status.unwrap().succeeded.unwrap_or(0) >= 1);
    assert!(
        deployments_of(&name).await.is_empty(),
        "a verified service must not be rebuilt"
    );
    let namespace = Api::<Namespace>::all(client).get(&namespace).await.unwrap();
    assert!(
        !namespace.labels().contains_key("resurgo.dev/plan"),
        "the operator took over a namespace it only verifies"
    );
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn max_parallel_bounds_how_many_services_rebuild_at_once() {
    install_crds().await;
    let name = unique_name("parallel");
    let ns = |s: &str| format!("{name}-{s}");
    let mut events = record(&name).await;
    apply(&plan(
        &name,
        json!({
            "maxParallel": 1,
            "tiers": [{"name": "booking", "rto": "72h"}],
            "services": [
                service("cup", "booking", &ns("cup"), &[], None),
                service("vaccines", "booking", &ns("vaccines"), &[], None),
                service("website", "booking", &ns("website"), &[], None),
            ]
        }),
    ));
    wait(&name, "Ready", "60s");
    let log = collect_until_available(&mut events, &["cup", "vaccines", "website"]).await;
    // One at a time: each service is created only after the one before it is available.
    let created: Vec<&Seen> = log
        .iter()
        .filter(|e| matches!(e, Seen::Created(_)))
        .collect();
    for pair in created.windows(2) {
        let (Seen::Created(before), Seen::Created(after)) = (pair[0], pair[1]) else {
            unreachable!()
        };
        assert!(
            position(&log, pair[1]) > position(&log, &Seen::Available(before.clone())),
            "{after} was created while {before} was still rebuilding: {log:?}"
        );
    }
    delete_plan(&name).await;
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn verifying_what_is_not_there_fails_and_says_why() {
    install_crds().await;
    let name = unique_name("missing");
    let namespace = format!("{name}-finance");
    apply(&plan(
        &name,
        json!({
            "tiers": [{"name": "finance", "rto": "24h"}, {"name": "booking", "rto": "72h"}],
            "services": [
                {"name": "ledger", "tier": "finance", "namespace": namespace, "action": "Verify",
                 "readiness": {"checks": [{"name": "checksums", "spec": job_spec()}]}},
                service("cup", "booking", &format!("{name}-cup"), &[], None),
            ]
        }),
    ));
    wait(&name, "Stalled", "30s");
    let status = plan_status(&name).await;
    let ledger = status.services.iter().find(|s| s.name == "ledger").unwrap();
    assert_eq!(ledger.phase, ServicePhase::Failed);
    assert!(
        ledger
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("namespace {namespace} does not exist")),
        "{ledger:?}"
    );
    assert!(
        deployments_of(&name).await.is_empty(),
        "booking must wait behind the failed tier"
    );
    delete_plan(&name).await;
}
