//! The Lazio incident end to end on the real control plane, with the operator that
//! tests/run.sh runs, as examples/demo.sh plays it and from the same files
//! (examples/lazio): the clinical records are backed up, the attack destroys them, the
//! Incident locks access down, freezes pruning, chooses the clean restore point and rebuilds
//! every service tier by tier (clinical records from the backup); closing it gives access
//! back exactly; a drill then rebuilds isolated copies and leaves the real side untouched.
//!
//! The example names are fixed (lazio-health, lazio-access, lazio-local, ...): only this test
//! uses them. A guard closes the incident and removes everything at the end, also when the
//! test fails midway, so that no Incident stays open and no policy stays in Lockdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Service},
        rbac::v1::ClusterRoleBinding,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use resurgo::{
    api::{
        access_policy::{AccessMode, AccessPolicy},
        backup::{Backup, BackupPhase},
        backup_schedule::BackupSchedule,
        incident::{Incident, IncidentPhase, StepState},
        recovery_plan::RecoveryPlan,
    },
    backup::archive,
};
use resurgo_tests::{apply, client, install_crds, kubectl, kubectl_ok, repo_root};
use serde_json::{Value, json};

const INCIDENT: &str = "lazio-ransomware-2021";
const DRILL: &str = "lazio-quarterly-drill";
const PLAN: &str = "lazio-health";
const POLICY: &str = "lazio-access";
const USER: &str = "g.bianchi@regione.lazio.example";

fn example(file: &str) -> String {
    let path = repo_root().join("examples/lazio").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The example with its `compromisedSince:` line set to `since`, as demo.sh's sed does.
fn with_compromised_since(yaml: &str, since: &str) -> String {
    let mut replaced = 0;
    let out: Vec<String> = yaml
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("compromisedSince:") {
                replaced += 1;
                let indent = &line[..line.len() - trimmed.len()];
                format!("{indent}compromisedSince: \"{since}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "one compromisedSince in {yaml}");
    out.join("\n") + "\n"
}

/// Now, to the second (truncated, never in the future), in RFC 3339.
fn now_to_the_second() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap()
        .to_string()
}

/// Each service of the plan file with its tier, namespace and whether it has a workload.
struct PlanService {
    tier: String,
    namespace: String,
    has_workload: bool,
}

fn plan_services() -> BTreeMap<String, PlanService> {
    let plan: Value = serde_yaml::from_str(&example("recovery-plan.yaml")).unwrap();
    plan["spec"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                PlanService {
                    tier: s["tier"].as_str().unwrap().to_owned(),
                    namespace: s["namespace"].as_str().unwrap().to_owned(),
                    has_workload: s.get("workload").is_some(),
                },
            )
        })
        .collect()
}

fn plan_tiers() -> Vec<String> {
    let plan: Value = serde_yaml::from_str(&example("recovery-plan.yaml")).unwrap();
    plan["spec"]["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn can_i_get_pods() -> String {
    let output = kubectl(&["auth", "can-i", "get", "pods", "--as", USER, "-A"], None);
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Polls `kubectl auth can-i` (the authorizer's cache lags the API a moment).
async fn until_can_i(wanted: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = can_i_get_pods();
        if answer == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "can-i get pods as {USER} says {answer:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn until_incident(
    client: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&Incident) -> bool,
) -> Incident {
    let api: Api<Incident> = Api::all(client.clone());
    let matches = |i: Option<&Incident>| i.is_some_and(&wanted);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, matches)).await {
        Ok(Ok(Some(incident))) => incident,
        _ => panic!(
            "incident/{name} never {what}: {:#?}\noperator log:\n{}",
            api.get(name).await.ok().and_then(|i| i.status),
            operator_log_tail()
        ),
    }
}

fn operator_log_tail() -> String {
    std::env::var_os("RESURGO_OPERATOR_LOG")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|log| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        })
        .unwrap_or_default()
}

fn phase(incident: &Incident) -> Option<IncidentPhase> {
    incident.status.as_ref().and_then(|s| s.phase)
}

fn is_ready(incident: &Incident) -> bool {
    incident.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// What one watch of the plan's Deployments saw, in the API server's order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Created(String),
    Available(String),
}

/// Reports, in the API server's order, when each Deployment of the plan (by its service
/// label) first appears and first becomes Available.
async fn record(client: &Client) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={PLAN}"));
    tokio::spawn(async move {
        let mut stream = watcher(deployments, config).applied_objects().boxed();
        let mut sent = Vec::new();
        while let Ok(Some(deployment)) = stream.try_next().await {
            let service = deployment
                .labels()
                .get("resurgo.dev/service")
                .cloned()
                .unwrap_or_else(|| format!("(no service label) {}", deployment.name_any()));
            let available = deployment
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                });
            let mut events = vec![Seen::Created(service.clone())];
            if available {
                events.push(Seen::Available(service));
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

/// The parts of a ClusterRoleBinding a restore must give back exactly.
fn binding_essentials(crb: &ClusterRoleBinding) -> Value {
    json!({
        "roleRef": crb.role_ref,
        "subjects": crb.subjects,
        "labels": crb.metadata.labels,
        "annotations": crb.metadata.annotations,
    })
}

/// Removes everything the test made, best effort; on drop too, so that a failing test
/// leaves no Incident open and no policy in Lockdown.
struct Cleanup {
    store_dir: PathBuf,
    binding: String,
    namespaces: Vec<String>,
}

impl Cleanup {
    fn run(&self) {
        // Close the real incident first: that lifts the lockdown and unfreezes pruning.
        let exists = kubectl(&["get", "incident", INCIDENT, "-o", "name"], None);
        if exists.status.success() {
            let _ = kubectl(
                &[
                    "patch",
                    "incident",
                    INCIDENT,
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"state":"Closed"}}"#,
                ],
                None,
            );
            let _ = kubectl(
                &[
                    "wait",
                    "--for=jsonpath={.status.phase}=Closed",
                    "--timeout=90s",
                    &format!("incident/{INCIDENT}"),
                ],
                None,
            );
        }
        let _ = kubectl(
            &[
                "delete",
                "incident",
                INCIDENT,
                DRILL,
                "--ignore-not-found",
                "--timeout=60s",
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "recoveryplan",
                PLAN,
                &format!("drill-{PLAN}"),
                "--ignore-not-found",
                "--timeout=60s",
            ],
            None,
        );
        // If the policy is still locked down (the close failed), put it back to Normal.
        let _ = kubectl(
            &[
                "patch",
                "accesspolicy",
                POLICY,
                "--type=merge",
                "-p",
                r#"{"spec":{"mode":"Normal"}}"#,
            ],
            None,
        );
        let _ = kubectl(
            &[
                "wait",
                "--for=jsonpath={.status.mode}=Normal",
                "--timeout=30s",
                &format!("accesspolicy/{POLICY}"),
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "accesspolicy",
                POLICY,
                "--ignore-not-found",
                "--timeout=60s",
            ],
            None,
        );
        // Every Backup in the Lazio stores: ours and any a schedule made.
        if let Ok(list) = kubectl_ok(&["get", "backups", "-o", "json"], None) {
            let list: Value = serde_json::from_str(&list).unwrap_or_default();
            let names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| {
                    b["spec"]["store"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("lazio-"))
                })
                .filter_map(|b| b["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            if !names.is_empty() {
                let mut args = vec!["delete", "backup", "--ignore-not-found", "--timeout=60s"];
                args.extend(names.iter().map(String::as_str));
                let _ = kubectl(&args, None);
            }
        }
        let _ = kubectl(
            &[
                "delete",
                "backupschedule",
                "lazio-emergency-hourly",
                "lazio-clinical-nightly",
                "lazio-booking-nightly",
                "--ignore-not-found",
                "--timeout=60s",
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "backupstore",
                "lazio-offsite",
                "lazio-local",
                "--ignore-not-found",
                "--timeout=60s",
            ],
            None,
        );
        let _ = kubectl(
            &[
                "delete",
                "clusterrolebinding",
                &self.binding,
                "--ignore-not-found",
            ],
            None,
        );
        let mut args = vec![
            "delete",
            "namespace",
            "--ignore-not-found",
            "--timeout=120s",
        ];
        args.extend(self.namespaces.iter().map(String::as_str));
        let _ = kubectl(&args, None);
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn the_lazio_incident_end_to_end() {
    install_crds().await;
    let client = client().await;
    let services = plan_services();
    let tier_of = |service: &str| -> String {
        services
            .get(service)
            .unwrap_or_else(|| panic!("{service} is not a service of the plan"))
            .tier
            .clone()
    };

    let store_dir = std::env::temp_dir().join(format!("resurgo-lazio-it-{}", std::process::id()));
    let binding = format!("lazio-it-admin-{}", std::process::id());
    let mut namespaces: BTreeSet<String> = services.values().map(|s| s.namespace.clone()).collect();
    namespaces.extend(
        services
            .values()
            .map(|s| format!("drill-{}", s.namespace))
            .collect::<Vec<_>>(),
    );
    namespaces.insert("resurgo-keys".into());
    let cleanup = Cleanup {
        store_dir: store_dir.clone(),
        binding: binding.clone(),
        namespaces: namespaces.into_iter().collect(),
    };
    // Leftovers of an earlier, interrupted run would make the steps below fail.
    cleanup.run();
    std::fs::create_dir_all(&store_dir).expect("create the store directory");

    // 1. Before the attack: the clinical records system runs, finance holds its ledger, and
    // an administrator has access given by hand.
    let before = r#"
apiVersion: v1
kind: Namespace
metadata: {name: clinical-records}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: fse-settings, namespace: clinical-records}
data: {region: lazio, archive: fse-2021}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: clinical-records, namespace: clinical-records, labels: {app.kubernetes.io/name: clinical-records}}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: clinical-records}}
  template:
    metadata: {labels: {app.kubernetes.io/name: clinical-records}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: clinical-records
          image: registry.lazio.example/sanita/fse:3.1
          ports: [{containerPort: 8443}]
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: clinical-records, namespace: clinical-records}
spec:
  selector: {app.kubernetes.io/name: clinical-records}
  ports: [{port: 8443, targetPort: 8443}]
"#;
    apply(before);
    let namespace_api: Api<Namespace> = Api::all(client.clone());
    let original_namespace_uid = namespace_api.get("clinical-records").await.unwrap().uid();
    kubectl_ok(&["create", "namespace", "finance"], None).unwrap();
    kubectl_ok(
        &[
            "-n",
            "finance",
            "create",
            "configmap",
            "ledger-balances",
            "--from-literal=closing-2021-07-31=verified-offline",
        ],
        None,
    )
    .unwrap();
    apply(
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {
                "name": binding,
                "labels": {"team": "regional-it", "lazio.example/owner": "g.bianchi"},
                "annotations": {"lazio.example/ticket": "IT-2021-0731", "lazio.example/reason": "on-call administrator"}
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]
        })
        .to_string(),
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding_before = binding_essentials(&bindings.get(&binding).await.unwrap());
    until_can_i("yes").await;

    // 2. Backups are encrypted to a key kept off the cluster.
    let (identity, recipient) = archive::generate_identity();
    let store_yaml = example("backup-store.yaml");
    assert!(store_yaml.contains("path: /var/lib/resurgo/backups"));
    apply(&store_yaml.replace(
        "path: /var/lib/resurgo/backups",
        &format!("path: {}", store_dir.display()),
    ));
    apply(&example("backup-schedule.yaml"));
    apply(
        &json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "clinical-before-the-attack"},
            "spec": {"store": "lazio-local", "include": {"namespaces": ["clinical-records"]},
                     "encryption": {"recipients": [recipient]}}
        })
        .to_string(),
    );
    let backups: Api<Backup> = Api::all(client.clone());
    let completed = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(
            backups.clone(),
            "clinical-before-the-attack",
            |b: Option<&Backup>| {
                b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                    matches!(s.phase, Some(BackupPhase::Completed | BackupPhase::Failed))
                })
            },
        ),
    )
    .await
    .expect("the backup finished within 120 s")
    .unwrap()
    .unwrap();
    let backup_status = completed.status.unwrap();
    assert_eq!(
        backup_status.phase,
        Some(BackupPhase::Completed),
        "{backup_status:#?}"
    );

    // 3. The attack: the namespace is lost.
    kubectl_ok(
        &["delete", "namespace", "clinical-records", "--timeout=120s"],
        None,
    )
    .unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(
            namespace_api.clone(),
            "clinical-records",
            |n: Option<&Namespace>| n.is_none(),
        ),
    )
    .await;
    assert!(gone.is_ok(), "clinical-records was never deleted");
    // The last moment known clean: after the backup, to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let compromised_since = now_to_the_second();
    let backup_completed = backup_status.completed.expect("completion time").0;
    assert!(
        compromised_since.parse::<Timestamp>().unwrap() > backup_completed,
        "{compromised_since} is not after {backup_completed}"
    );

    // 4. The policy and the plan; the plan waits for the incident and creates nothing.
    apply(&example("access-policy.yaml"));
    apply(&example("recovery-plan.yaml"));
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    let waiting = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(plans.clone(), PLAN, |p: Option<&RecoveryPlan>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason == "WaitingForIncident"
                })
            })
        }),
    )
    .await;
    assert!(
        waiting.is_ok(),
        "the plan never said it waits for the incident: {:#?}",
        plans.get(PLAN).await.ok().and_then(|p| p.status)
    );
    let deployments: Api<Deployment> = Api::all(client.clone());
    let ours = ListParams::default().labels(&format!("resurgo.dev/plan={PLAN}"));
    assert!(
        deployments.list(&ours).await.unwrap().items.is_empty(),
        "the plan built something before the incident"
    );

    // 5. Whoever keeps the key offline hands it over, for the restore only.
    kubectl_ok(&["create", "namespace", "resurgo-keys"], None).unwrap();
    kubectl_ok(
        &[
            "-n",
            "resurgo-keys",
            "create",
            "secret",
            "generic",
            "lazio-backup-identity",
            &format!("--from-literal=identity={identity}"),
        ],
        None,
    )
    .unwrap();

    // 6. The incident.
    let mut seen = record(&client).await;
    let incident_yaml = with_compromised_since(&example("incident.yaml"), &compromised_since);
    apply(&incident_yaml);
    let ready = until_incident(
        &client,
        INCIDENT,
        "became Ready",
        Duration::from_secs(180),
        |i| is_ready(i) || phase(i) == Some(IncidentPhase::Failed),
    )
    .await;
    let status = ready.status.clone().unwrap();
    assert!(is_ready(&ready), "{status:#?}");

    // 7. Each step, in order, done.
    let steps: Vec<(&str, StepState)> = status
        .timeline
        .iter()
        .map(|e| (e.step.as_str(), e.state))
        .collect();
    assert_eq!(
        steps,
        [
            ("Lockdown", StepState::Done),
            ("FreezePruning", StepState::Done),
            ("ChooseRestorePoints", StepState::Done),
            ("Recover", StepState::Done),
            ("RotateCredentials", StepState::Done),
        ],
        "{status:#?}"
    );
    // The clinical records from the clean backup, with the data it implies losing.
    let point = status
        .restore_points
        .iter()
        .find(|p| p.plan == PLAN && p.service == "clinical-records")
        .unwrap_or_else(|| panic!("no restore point for clinical-records: {status:#?}"));
    assert_eq!(
        point.backup.as_deref(),
        Some("clinical-before-the-attack"),
        "{point:#?}"
    );
    assert!(
        point
            .data_loss_window
            .as_deref()
            .is_some_and(|w| !w.is_empty()),
        "{point:#?}"
    );
    // Every tier met its RTO.
    let tiers: Vec<(&str, Option<bool>)> = status
        .tiers
        .iter()
        .map(|t| (t.tier.as_str(), t.met))
        .collect();
    let expected_tiers = plan_tiers();
    assert_eq!(expected_tiers.len(), 4);
    assert_eq!(
        tiers,
        expected_tiers
            .iter()
            .map(|t| (t.as_str(), Some(true)))
            .collect::<Vec<_>>(),
        "{:#?}",
        status.tiers
    );
    assert!(status.tiers.iter().all(|t| t.plan == PLAN));

    // Tier order, from the watch: every life-critical Deployment Available before any
    // clinical one was created, every clinical one Available before any booking one.
    let with_workload: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s.has_workload)
        .map(|(name, _)| name.as_str())
        .collect();
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !with_workload
        .iter()
        .all(|s| log.contains(&Seen::Available((*s).into())))
    {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(event)) => log.push(event),
            _ => panic!("the watch never saw all of {with_workload:?} available: {log:?}"),
        }
    }
    for event in &log {
        let (Seen::Created(service) | Seen::Available(service)) = event;
        tier_of(service);
    }
    for (earlier, later) in [("life-critical", "clinical"), ("clinical", "booking")] {
        let last_available = log
            .iter()
            .rposition(|e| matches!(e, Seen::Available(s) if tier_of(s) == earlier))
            .unwrap_or_else(|| panic!("no {earlier} Deployment became available: {log:?}"));
        let first_created = log
            .iter()
            .position(|e| matches!(e, Seen::Created(s) if tier_of(s) == later))
            .unwrap_or_else(|| panic!("no {later} Deployment was created: {log:?}"));
        assert!(
            last_available < first_created,
            "a {later} Deployment was created before every {earlier} one was available: {log:?}"
        );
    }

    // The clinical records are back, in a new namespace, as they were.
    let restored_namespace = namespace_api.get("clinical-records").await.unwrap();
    assert_ne!(restored_namespace.uid(), original_namespace_uid);
    let settings = Api::<ConfigMap>::namespaced(client.clone(), "clinical-records")
        .get("fse-settings")
        .await
        .expect("fse-settings restored");
    assert_eq!(
        settings.data,
        Some(BTreeMap::from([
            ("region".to_owned(), "lazio".to_owned()),
            ("archive".to_owned(), "fse-2021".to_owned()),
        ]))
    );
    let real_deployments: Api<Deployment> = Api::namespaced(client.clone(), "clinical-records");
    let restored = real_deployments
        .get("clinical-records")
        .await
        .expect("the clinical-records Deployment restored");
    let spec = restored.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.lazio.example/sanita/fse:3.1")
    );
    let service = Api::<Service>::namespaced(client.clone(), "clinical-records")
        .get("clinical-records")
        .await
        .expect("the clinical-records Service restored");
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8443);

    // Access is locked down: the hand-made binding is suspended.
    assert!(
        bindings.get_opt(&binding).await.unwrap().is_none(),
        "{binding} survived the lockdown"
    );
    until_can_i("no").await;
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    let policy = policies.get(POLICY).await.unwrap().status.unwrap();
    assert_eq!(policy.mode, Some(AccessMode::Lockdown), "{policy:#?}");
    assert!(policy.suspended_bindings >= 1, "{policy:#?}");
    // Pruning is frozen in every schedule.
    let schedules: Api<BackupSchedule> = Api::all(client.clone());
    let all = schedules.list(&ListParams::default()).await.unwrap();
    let lazio: Vec<_> = all
        .items
        .iter()
        .filter(|s| s.name_any().starts_with("lazio-"))
        .collect();
    assert_eq!(lazio.len(), 3);
    for schedule in all.items {
        assert!(
            schedule.status.as_ref().is_some_and(|s| s.pruning_frozen),
            "pruning of {} is not frozen: {:#?}",
            schedule.name_any(),
            schedule.status
        );
    }

    // 8. Closing the incident gives access back, exactly.
    apply(&incident_yaml.replace("state: Open", "state: Closed"));
    until_incident(&client, INCIDENT, "closed", Duration::from_secs(90), |i| {
        phase(i) == Some(IncidentPhase::Closed)
    })
    .await;
    let back = bindings
        .get_opt(&binding)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{binding} was not given back"));
    assert_eq!(binding_essentials(&back), binding_before);
    until_can_i("yes").await;
    let normal = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(policies.clone(), POLICY, |p: Option<&AccessPolicy>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.mode == Some(AccessMode::Normal))
        }),
    )
    .await;
    assert!(
        normal.is_ok(),
        "the policy did not go back to Normal: {:#?}",
        policies.get(POLICY).await.ok().and_then(|p| p.status)
    );

    // 9. A drill: isolated copies, measured, cleaned up; the real side untouched.
    let real_before = real_deployments.get("clinical-records").await.unwrap();
    let drill_yaml = with_compromised_since(&example("drill.yaml"), &now_to_the_second());
    apply(&drill_yaml);
    let drilled = until_incident(
        &client,
        DRILL,
        "finished its drill",
        Duration::from_secs(180),
        |i| {
            matches!(
                phase(i),
                Some(IncidentPhase::Recovered | IncidentPhase::Failed)
            )
        },
    )
    .await;
    let drill_status = drilled.status.clone().unwrap();
    assert_eq!(
        phase(&drilled),
        Some(IncidentPhase::Recovered),
        "{drill_status:#?}"
    );
    assert!(!drill_status.tiers.is_empty(), "{drill_status:#?}");
    assert!(
        drill_status
            .tiers
            .iter()
            .all(|t| t.time_to_ready.is_some() && t.met == Some(true)),
        "{:#?}",
        drill_status.tiers
    );
    assert!(
        drill_status
            .timeline
            .iter()
            .any(|e| e.step == "CleanUp" && e.state == StepState::Done),
        "{:#?}",
        drill_status.timeline
    );
    assert!(
        plans
            .get_opt(&format!("drill-{PLAN}"))
            .await
            .unwrap()
            .is_none(),
        "the drill's copy of the plan was left behind"
    );
    for namespace in services.values().map(|s| format!("drill-{}", s.namespace)) {
        let gone = tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(
                namespace_api.clone(),
                &namespace,
                |n: Option<&Namespace>| n.is_none(),
            ),
        )
        .await;
        assert!(gone.is_ok(), "namespace {namespace} was not removed");
    }
    let real_after = real_deployments.get("clinical-records").await.unwrap();
    assert_eq!(real_after.uid(), real_before.uid());
    assert_eq!(
        real_after.resource_version(),
        real_before.resource_version(),
        "the drill touched the real clinical-records Deployment"
    );

    // 10. Clean up (the guard does it, also when an assertion above fails).
    drop(cleanup);
}
