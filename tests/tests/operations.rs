//! Production operations on the real control plane: the chart's RBAC is enough for a
//! recovery, a backup and its restore, grants and a lockdown, and no more; and two replicas
//! elect one leader that a standby replaces when it dies, without doing anything twice.
//!
//! These tests start their own operator processes (target/debug/resurgo, built by
//! tests/run.sh) with the chart's ServiceAccount token, never the admin's. Their Resurgo
//! objects (plans, stores, backups, access policies) carry `resurgo.dev/test-operator=<id>`
//! and the operators select exactly that; the operator that tests/run.sh shares between all
//! tests ignores every object with that label.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use resurgo_tests::{client, install_crds, kubectl, kubectl_ok, repo_root, unique_name};
use serde_json::{Value, json};

const TEST_OPERATOR: &str = "resurgo.dev/test-operator";

/// The chart's identity and permissions, installed in their own namespace.
struct ChartAccount {
    namespace: String,
    account: String,
    cluster_role: String,
    kubeconfig: PathBuf,
}

/// Renders the chart's ServiceAccount, ClusterRole, Roles and bindings (release `release`,
/// lease `lease`), applies them, and writes a kubeconfig with a token of that account.
fn install_chart_account(release: &str, lease: &str) -> ChartAccount {
    install_chart_account_with(release, lease, &[])
}

/// [`install_chart_account`] with more `--set` values for the chart.
fn install_chart_account_with(release: &str, lease: &str, values: &[&str]) -> ChartAccount {
    let namespace = release.to_owned();
    kubectl_ok(&["create", "namespace", &namespace], None).expect("namespace");
    let chart = repo_root().join("charts/resurgo");
    let output = Command::new(resurgo_tests::k8s_bin().join("helm"))
        .args([
            "template",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
        ])
        .args(["--set", &format!("leaderElection.leaseName={lease}")])
        .args(values.iter().flat_map(|value| ["--set", value]))
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/clusterrole.yaml"])
        .args(["--show-only", "templates/clusterrolebinding.yaml"])
        .args(["--show-only", "templates/role.yaml"])
        // Features run under the chart's admission policies too: they must not refuse
        // anything the operator does for them.
        .args(["--show-only", "templates/admissionpolicy.yaml"])
        .output()
        .expect("helm template");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=resurgo-tests",
            "-f",
            "-",
        ],
        Some(&rendered),
    )
    .expect("apply the chart's RBAC");
    let account = format!("{release}-resurgo");
    let kubeconfig = work_dir().join(format!("{release}.kubeconfig"));
    resurgo_tests::service_account_kubeconfig(&namespace, &account, &kubeconfig)
        .expect("a kubeconfig with the chart's ServiceAccount token");
    ChartAccount {
        namespace,
        account: account.clone(),
        cluster_role: account,
        kubeconfig,
    }
}

fn work_dir() -> PathBuf {
    std::env::var_os("RESURGO_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An operator process of our own; killed when dropped.
struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
    name: String,
}

impl Operator {
    /// Starts `resurgo run` as `name` with the account's kubeconfig, selecting the plans
    /// labelled with `id`, plus `extra` arguments.
    fn start(account: &ChartAccount, id: &str, name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let log = work_dir().join(format!("{name}.log"));
        let binary = repo_root().join("target/debug/resurgo");
        let child = Command::new(&binary)
            .arg("run")
            .arg(format!("--selector={TEST_OPERATOR}={id}"))
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(extra)
            .env("KUBECONFIG", &account.kubeconfig)
            .env("POD_NAME", name)
            // As the chart's Deployment sets it.
            .env("POD_NAMESPACE", &account.namespace)
            .env("RUST_LOG", "warn,resurgo=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Self {
            child,
            port,
            log,
            name: name.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs `path` from the admin server: the status code and the body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    }

    /// Waits until `path` answers `code`.
    async fn until_answers(&mut self, path: &str, code: u16) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((got, body)) = self.get(path)
                && got == code
            {
                return body;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never answered {code} on {path}: {:?}\n{}",
                self.name,
                self.get(path),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric line without labels, such as `resurgo_leader`.
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
    }
}

fn kill(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn restricted_deployment(name: &str, zone: Option<&str>) -> Value {
    let mut pod = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": "registry.example/app:1",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }]
    });
    if let Some(zone) = zone {
        pod["nodeSelector"] = json!({"resurgo.test/zone": zone});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod}
        }
    })
}

/// A two-tier plan for the operator `id`: a database whose credentials are regenerated and
/// whose data is restored by a Job, and an app that depends on it, held back by `zone` when
/// given until a node in that zone exists.
fn plan(name: &str, id: &str, zone: Option<&str>) -> String {
    let ns = |s: &str| format!("{name}-{s}");
    let restore_job = json!({
        "name": "load",
        "spec": {
            "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "load", "image": "registry.example/restore:1",
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
            }}
        }
    });
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
        "data": {"mode": "recovery"}
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}
    });
    serde_json::to_string(&json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
        "metadata": {"name": name, "labels": {TEST_OPERATOR: id}},
        "spec": {
            "tiers": [{"name": "data", "rto": "15m"}, {"name": "apps", "rto": "1h"}],
            "services": [
                {
                    "name": "db", "tier": "data", "namespace": ns("db"),
                    "dataRestore": restore_job,
                    "regenerateSecrets": [{"name": "db-credentials", "keys": ["password"]}],
                    "workload": {"manifests": [restricted_deployment("db", None), service]}
                },
                {
                    "name": "app", "tier": "apps", "namespace": ns("app"), "dependsOn": ["db"],
                    "workload": {"manifests": [restricted_deployment("app", zone), config]}
                }
            ]
        }
    }))
    .unwrap()
}

fn apply(manifest: &str) {
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=resurgo-tests",
            "-f",
            "-",
        ],
        Some(manifest),
    )
    .expect("apply");
}

fn wait_ready(plan: &str, timeout: &str, operators: &[&Operator]) {
    let output = kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            &format!("--timeout={timeout}"),
            &format!("recoveryplan/{plan}"),
        ],
        None,
    );
    if !output.status.success() {
        let status = kubectl(&["get", "recoveryplan", plan, "-o", "yaml"], None);
        let logs: Vec<String> = operators
            .iter()
            .map(|o| format!("---- {}:\n{}", o.name, o.log()))
            .collect();
        panic!(
            "recoveryplan/{plan} did not become Ready: {}\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&status.stdout),
            logs.join("\n")
        );
    }
}

/// `kubectl auth can-i` as the account.
fn can(account: &ChartAccount, args: &[&str]) -> bool {
    let user = format!(
        "--as=system:serviceaccount:{}:{}",
        account.namespace, account.account
    );
    let mut all = vec!["auth", "can-i", user.as_str()];
    all.extend_from_slice(args);
    let output = kubectl(&all, None);
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// The reportingInstance of every event about `plan`.
fn event_reporters(plan: &str) -> BTreeSet<String> {
    let events: Value = serde_json::from_str(
        &kubectl_ok(
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                "default",
                "--field-selector",
                &format!("regarding.name={plan}"),
                "-o",
                "json",
            ],
            None,
        )
        .unwrap(),
    )
    .unwrap();
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["reportingInstance"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_charts_service_account_is_enough_for_a_recovery_and_no_more() {
    install_crds().await;
    let id = unique_name("rbac");
    let account = install_chart_account(&id, &format!("{id}-lease"));
    let mut operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);

    let name = format!("{id}-plan");
    apply(&plan(&name, &id, None));
    wait_ready(&name, "120s", &[&operator]);

    // What the recovery made, with the chart's permissions only.
    let secrets: Api<Secret> = Api::namespaced(client().await, &format!("{name}-db"));
    let secret = secrets.get("db-credentials").await.expect("regenerated");
    assert_eq!(
        secret.labels().get("resurgo.dev/plan"),
        Some(&name),
        "regenerated by the operator"
    );
    let policies = kubectl_ok(
        &[
            "-n",
            &format!("{name}-app"),
            "get",
            "networkpolicies",
            "-o",
            "name",
        ],
        None,
    )
    .unwrap();
    assert_eq!(policies.lines().count(), 2, "{policies}");
    kubectl_ok(
        &[
            "-n",
            &format!("{name}-app"),
            "get",
            "configmap",
            "app-config",
        ],
        None,
    )
    .expect("the app's ConfigMap");

    // Nothing was refused along the way, not even an event.
    assert_nothing_refused(&operator);
    // Only this operator acted on the plan: the shared one ignores test-operator plans.
    assert_eq!(
        event_reporters(&name),
        BTreeSet::from([format!("{id}-operator")])
    );
    // It counts what it did.
    let metrics = operator.until_answers("/metrics", 200).await;
    assert!(
        metrics.contains(&format!(
            r#"resurgo_recovery_tier_services_ready{{plan="{name}",tier="apps"}} 1"#
        )),
        "{metrics}"
    );
    assert!(metrics.contains(r#"resurgo_reconciles_total{kind="RecoveryPlan"}"#));
    operator.until_answers("/readyz", 200).await;

    // ...and no more than it needs.
    let ns = format!("--namespace={name}-db");
    for (what, args) in [
        ("anything at all", vec!["*", "*"]),
        ("delete nodes", vec!["delete", "nodes"]),
        (
            "list Secrets anywhere",
            vec!["list", "secrets", "--all-namespaces"],
        ),
        ("watch Secrets", vec!["watch", "secrets", ns.as_str()]),
        ("delete Secrets", vec!["delete", "secrets", ns.as_str()]),
        (
            "delete Deployments",
            vec!["delete", "deployments", ns.as_str()],
        ),
        (
            "update Deployments",
            vec!["update", "deployments", ns.as_str()],
        ),
        ("create pods", vec!["create", "pods", ns.as_str()]),
        ("exec into pods", vec!["create", "pods/exec", ns.as_str()]),
        // Bindings, `bind` on the grantable ClusterRoles and deleting NetworkPolicies are
        // the AccessPolicy controller's, granted on purpose (charts/resurgo clusterrole.yaml);
        // tests/tests/chart.rs shows what its admission policies refuse.
        ("escalate", vec!["escalate", "clusterroles"]),
        ("write ClusterRoles", vec!["create", "clusterroles"]),
        (
            "bind any ClusterRole",
            vec!["bind", "clusterroles/system:node"],
        ),
        ("impersonate users", vec!["impersonate", "users"]),
        ("update the plans' spec", vec!["update", "recoveryplans"]),
        ("write CRDs", vec!["create", "customresourcedefinitions"]),
        ("delete Incidents", vec!["delete", "incidents"]),
        ("update AccessPolicies", vec!["update", "accesspolicies"]),
        ("delete Services", vec!["delete", "services", ns.as_str()]),
        (
            "update another Lease",
            vec![
                "update",
                "leases/other",
                &format!("--namespace={}", account.namespace),
            ],
        ),
        (
            "create events outside default",
            vec!["create", "events.events.k8s.io", ns.as_str()],
        ),
    ] {
        assert!(!can(&account, &args), "the operator can {what}");
    }
    let own_lease = format!("leases/{id}-lease");
    let lease_namespace = format!("--namespace={}", account.namespace);
    // The checks above could pass by never asking the right user: the same user can do
    // what the recovery did.
    for args in [
        vec!["get", "secrets", ns.as_str()],
        vec!["patch", "recoveryplans", "--subresource=status"],
        vec!["create", "namespaces"],
        vec!["watch", "deployments", "--all-namespaces"],
        vec!["update", &own_lease, &lease_namespace],
    ] {
        assert!(can(&account, &args), "the operator cannot {args:?}");
    }
    let role: Value = serde_json::from_str(
        &kubectl_ok(
            &["get", "clusterrole", &account.cluster_role, "-o", "json"],
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let text = role["rules"].to_string();
    assert!(!text.contains("\"*\""), "a wildcard in {text}");

    drop(operator);
    cleanup(&account, &name);
}

/// No "forbidden" anywhere in the operator's log: the API server refused it nothing.
fn assert_nothing_refused(operator: &Operator) {
    let log = operator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "{} was refused something:\n{log}",
        operator.name
    );
}

/// `kubectl get` with a jsonpath, as the admin; empty when the object is missing.
fn jsonpath(args: &[&str], path: &str) -> String {
    let output = format!("jsonpath={path}");
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", output.as_str()]);
    String::from_utf8_lossy(&kubectl(&all, None).stdout).into_owned()
}

/// Waits until `check` holds, checking every 200 ms, for at most `within`.
async fn until(what: &str, within: Duration, operator: &Operator, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true after {within:?}\n---- {}:\n{}",
            operator.name,
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_charts_service_account_is_enough_for_a_backup_and_its_restore() {
    install_crds().await;
    let id = unique_name("rbac-backup");
    let account = install_chart_account(&id, &format!("{id}-lease"));
    let operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);

    // What the backup holds: a namespace with a ConfigMap, a Deployment, a Service, and a
    // Secret that the chart's default (backup.includeSecrets: false) leaves out.
    let source = format!("{id}-source");
    let mut deployment = restricted_deployment("records", None);
    deployment["metadata"]["namespace"] = json!(source);
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": source}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": source},
               "data": {"mode": "clinical"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": source},
               "stringData": {"key": "KEY"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "records", "namespace": source},
               "spec": {"selector": {"app": "records"}, "ports": [{"port": 80}]}}),
        deployment,
    ] {
        apply(&object.to_string());
    }

    // A filesystem store (the operator runs on this machine) and a Backup that names no
    // kinds, both for the private operator only.
    let dir = std::env::temp_dir().join(format!("resurgo-store-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("{id}-store");
    let backup = format!("{id}-backup");
    let (identity, recipient) = resurgo::backup::archive::generate_identity();
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore",
                "metadata": {"name": store, "labels": {TEST_OPERATOR: id}},
                "spec": {"filesystem": {"path": dir.to_str().unwrap()}}})
        .to_string(),
    );
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup",
                "metadata": {"name": backup, "labels": {TEST_OPERATOR: id}},
                "spec": {"store": store, "include": {"namespaces": [source]},
                         "encryption": {"recipients": [recipient]}}})
        .to_string(),
    );
    until(
        "the Backup finished",
        Duration::from_secs(90),
        &operator,
        || {
            matches!(
                jsonpath(&["backup", &backup], "{.status.phase}").as_str(),
                "Completed" | "Failed"
            )
        },
    )
    .await;
    let status = jsonpath(&["backup", &backup], "{.status}");
    assert_eq!(
        jsonpath(&["backup", &backup], "{.status.phase}"),
        "Completed",
        "{status}\n{}",
        operator.log()
    );
    // The ConfigMap, the Service and the Deployment; the Secret is left out, and said so.
    assert_eq!(
        jsonpath(&["backup", &backup], "{.status.items}"),
        "3",
        "{status}"
    );
    let completed = jsonpath(
        &["backup", &backup],
        r#"{.status.conditions[?(@.type=="Completed")].message}"#,
    );
    assert!(
        completed.contains("left out because the operator may not list them")
            && completed.contains("Secret"),
        "{completed}"
    );

    // The restore, into a fresh namespace, with an identity Secret made for it.
    let keys = format!("{id}-keys");
    kubectl_ok(&["create", "namespace", &keys], None).unwrap();
    kubectl_ok(
        &[
            "-n",
            &keys,
            "create",
            "secret",
            "generic",
            "age-key",
            "--from-file=identity=/dev/stdin",
        ],
        Some(&identity),
    )
    .unwrap();
    let plan_name = format!("{id}-restore");
    let restored = format!("{id}-restored");
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
                "metadata": {"name": plan_name, "labels": {TEST_OPERATOR: id}},
                "spec": {"tiers": [{"name": "clinical", "rto": "4h"}],
                         "services": [{"name": "records", "tier": "clinical", "namespace": restored,
                                       "workload": {"fromBackup": {
                                           "backup": backup, "sourceNamespace": source,
                                           "identitySecretRef": {"name": "age-key", "namespace": keys}}},
                                       "readiness": {"timeout": "2m"}}]}})
        .to_string(),
    );
    wait_ready(&plan_name, "120s", &[&operator]);
    assert_eq!(
        jsonpath(&["-n", &restored, "configmap", "settings"], "{.data.mode}"),
        "clinical"
    );
    assert_eq!(
        jsonpath(
            &["-n", &restored, "deployment", "records"],
            "{.spec.template.spec.containers[0].image}"
        ),
        "registry.example/app:1"
    );
    assert_eq!(
        jsonpath(
            &["-n", &restored, "service", "records"],
            "{.spec.ports[0].port}"
        ),
        "80"
    );
    assert!(
        kubectl(&["-n", &restored, "get", "secret", "tls"], None)
            .status
            .code()
            != Some(0),
        "a Secret was restored"
    );

    assert_nothing_refused(&operator);
    // Only the private operator acted on them.
    let reporters = BTreeSet::from([operator.name.clone()]);
    assert_eq!(event_reporters(&backup), reporters);
    assert_eq!(event_reporters(&plan_name), reporters);

    drop(operator);
    let _ = kubectl(
        &[
            "delete",
            "backup,backupstore",
            &backup,
            &store,
            "--wait=false",
        ],
        None,
    );
    for namespace in [&source, &restored, &keys] {
        let _ = kubectl(&["delete", "namespace", namespace, "--wait=false"], None);
    }
    let _ = std::fs::remove_dir_all(&dir);
    cleanup(&account, &plan_name);
}

/// A lockdown suspends every human binding in the cluster: one at a time in this binary
/// (the other binaries do not run meanwhile).
static LOCKDOWN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Puts the policy back to Normal, waits until its operator has restored what it
/// suspended, then deletes it: on every path out of the test, panics included. Dropped
/// before the operator (declared after it), which must still run to restore.
struct BackToNormal {
    policy: String,
}

impl Drop for BackToNormal {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "patch",
                "accesspolicy",
                &self.policy,
                "--type=merge",
                "-p",
                r#"{"spec":{"mode":"Normal"}}"#,
            ],
            None,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let state = jsonpath(
                &["accesspolicy", &self.policy],
                "{.status.mode} {.status.suspendedBindings}",
            );
            if state == "Normal 0" || state == "Normal " {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = kubectl(
            &["delete", "accesspolicy", &self.policy, "--timeout=30s"],
            None,
        );
    }
}

fn policy_state(policy: &str) -> String {
    jsonpath(
        &["accesspolicy", policy],
        r#"{.metadata.generation} {.status.observedGeneration} {.status.mode} {.status.conditions[?(@.type=="Ready")].status}"#,
    )
}

/// Waits until the policy's status is of its current generation, in `mode`, and Ready.
async fn policy_ready(policy: &str, mode: &str, operator: &Operator) {
    until(
        &format!("accesspolicy/{policy} Ready in {mode}"),
        Duration::from_secs(60),
        operator,
        || {
            let state = policy_state(policy);
            let parts: Vec<&str> = state.split(' ').collect();
            parts.len() == 4 && parts[0] == parts[1] && parts[2] == mode && parts[3] == "True"
        },
    )
    .await;
}

/// `kubectl auth can-i get configmaps -n NAMESPACE --as USER`, as the admin.
fn user_can_read(user: &str, namespace: &str) -> bool {
    let output = kubectl(
        &[
            "auth",
            "can-i",
            "get",
            "configmaps",
            "-n",
            namespace,
            &format!("--as={user}"),
        ],
        None,
    );
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_charts_service_account_is_enough_for_grants_and_a_lockdown() {
    install_crds().await;
    let _one_lockdown = LOCKDOWN.lock().await;
    let id = unique_name("rbac-access");
    let account = install_chart_account(&id, &format!("{id}-lease"));
    let operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);
    let namespace = format!("{id}-ward");
    kubectl_ok(&["create", "namespace", &namespace], None).unwrap();
    let technician = format!("{id}-technician");
    let nurse = format!("{id}-nurse");

    // A human binding the admin made by hand.
    kubectl_ok(
        &[
            "-n",
            &namespace,
            "create",
            "rolebinding",
            "by-hand",
            "--clusterrole=view",
            &format!("--user={nurse}"),
        ],
        None,
    )
    .unwrap();
    assert!(user_can_read(&nurse, &namespace));
    assert!(!user_can_read(&technician, &namespace));

    // A grant, for the private operator only.
    let policy = format!("{id}-policy");
    let expiry = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() + 300,
    )
    .unwrap();
    let manifest = |mode: &str| {
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
               "metadata": {"name": policy, "labels": {TEST_OPERATOR: id}},
               "spec": {"mode": mode,
                        "grants": [{"name": "technician", "subject": {"kind": "User", "name": technician},
                                    "clusterRole": "view", "namespaces": [namespace],
                                    "expiresAt": expiry.to_string(), "reason": "remote session"}]}})
        .to_string()
    };
    apply(&manifest("Normal"));
    let back_to_normal = BackToNormal {
        policy: policy.clone(),
    };
    policy_ready(&policy, "Normal", &operator).await;
    until(
        "the grant gives access",
        Duration::from_secs(5),
        &operator,
        || user_can_read(&technician, &namespace),
    )
    .await;

    // Lockdown: the hand-made binding is suspended (and saved), the grant stays.
    apply(&manifest("Lockdown"));
    policy_ready(&policy, "Lockdown", &operator).await;
    let suspended = jsonpath(&["accesspolicy", &policy], "{.status.suspendedBindings}");
    assert!(
        suspended.parse::<u32>().is_ok_and(|n| n >= 1),
        "{suspended}"
    );
    assert!(
        kubectl(&["-n", &namespace, "get", "rolebinding", "by-hand"], None)
            .status
            .code()
            != Some(0),
        "the human binding is still there"
    );
    // Its save is a cluster-scoped SuspendedBinding (the chart's rules on suspendedbindings).
    let saved_binding = format!("{namespace}/by-hand");
    let saves = || {
        kubectl_ok(
            &[
                "get",
                "suspendedbindings",
                "-o",
                r#"jsonpath={range .items[*]}{.spec.binding.namespace}/{.spec.binding.name}{"\n"}{end}"#,
            ],
            None,
        )
        .unwrap()
        .lines()
        .filter(|line| *line == saved_binding)
        .count()
    };
    assert_eq!(saves(), 1, "{saved_binding} is not saved");
    until(
        "the nurse has lost access",
        Duration::from_secs(5),
        &operator,
        || !user_can_read(&nurse, &namespace),
    )
    .await;
    assert!(user_can_read(&technician, &namespace), "grants stay");

    // Back to Normal: the binding returns, and its save goes.
    apply(&manifest("Normal"));
    policy_ready(&policy, "Normal", &operator).await;
    until(
        "the nurse has access again",
        Duration::from_secs(10),
        &operator,
        || user_can_read(&nurse, &namespace),
    )
    .await;
    assert_eq!(
        jsonpath(
            &["-n", &namespace, "rolebinding", "by-hand"],
            "{.roleRef.name} {.subjects[0].name}"
        ),
        format!("view {nurse}")
    );
    until(
        "the saves are deleted",
        Duration::from_secs(10),
        &operator,
        || saves() == 0,
    )
    .await;

    assert_nothing_refused(&operator);
    assert_eq!(
        event_reporters(&policy),
        BTreeSet::from([operator.name.clone()]),
        "only the private operator acted on the policy"
    );

    drop(back_to_normal);
    assert_nothing_refused(&operator);
    drop(operator);
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
    cleanup(&account, "none");
}

/// `kubectl auth can-i list pods -n NAMESPACE --as USER`, as the admin.
fn user_can_list_pods(user: &str, namespace: &str) -> bool {
    let output = kubectl(
        &[
            "auth",
            "can-i",
            "list",
            "pods",
            "-n",
            namespace,
            &format!("--as={user}"),
        ],
        None,
    );
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn with_policy_roles_on_the_charts_account_makes_grants_and_removes_a_policys_own_role() {
    install_crds().await;
    let id = unique_name("rbac-roles");
    let account = install_chart_account_with(
        &id,
        &format!("{id}-lease"),
        &["access.policyRoles.enabled=true"],
    );
    let operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);
    let namespace = format!("{id}-lab");
    kubectl_ok(&["create", "namespace", &namespace], None).unwrap();
    let analyst = format!("{id}-analyst");
    assert!(!user_can_list_pods(&analyst, &namespace));

    // A role of the policy's own, with a rule the operator does not hold itself (listing
    // pods): writing it needs `escalate`, binding it `bind`, and its name is
    // resurgo.role.*, which the admission policy lets through.
    let policy = format!("{id}-policy");
    let expiry = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() + 300,
    )
    .unwrap();
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
                "metadata": {"name": policy, "labels": {TEST_OPERATOR: id}},
                "spec": {"mode": "Normal",
                         "roles": [{"name": "pod-reader",
                                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}],
                         "grants": [{"name": "analyst", "subject": {"kind": "User", "name": analyst},
                                     "policyRole": "pod-reader", "namespaces": [namespace],
                                     "expiresAt": expiry.to_string(), "reason": "incident analysis"}]}})
        .to_string(),
    );
    policy_ready(&policy, "Normal", &operator).await;
    let role = format!("resurgo.role.{policy}.pod-reader");
    kubectl_ok(&["get", "clusterrole", &role], None).expect("the policy's own ClusterRole");
    until(
        "the grant of the policy's role gives access",
        Duration::from_secs(5),
        &operator,
        || user_can_list_pods(&analyst, &namespace),
    )
    .await;

    // Deleting the policy takes its role and its grant away.
    kubectl_ok(&["delete", "accesspolicy", &policy, "--timeout=30s"], None).unwrap();
    until(
        "the policy's role is deleted",
        Duration::from_secs(10),
        &operator,
        || kubectl(&["get", "clusterrole", &role], None).status.code() != Some(0),
    )
    .await;
    assert!(!user_can_list_pods(&analyst, &namespace));
    assert_nothing_refused(&operator);

    drop(operator);
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
    cleanup(&account, "none");
}

fn cleanup(account: &ChartAccount, plan: &str) {
    let _ = kubectl(&["delete", "recoveryplan", plan, "--wait=false"], None);
    let _ = kubectl(
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            &account.cluster_role,
        ],
        None,
    );
    let _ = kubectl(
        &[
            "delete",
            "validatingadmissionpolicy,validatingadmissionpolicybinding",
            &format!("{}-bindings", account.cluster_role),
            &format!("{}-clusterroles", account.cluster_role),
        ],
        None,
    );
    let _ = kubectl(
        &["delete", "namespace", &account.namespace, "--wait=false"],
        None,
    );
}

async fn lease_holder(namespace: &str, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client().await, namespace);
    leases
        .get_opt(lease)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn until_holder(
    namespace: &str,
    lease: &str,
    wanted: impl Fn(Option<&str>) -> bool,
    within: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let holder = lease_holder(namespace, lease).await;
        if wanted(holder.as_deref()) {
            return holder;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Lease {namespace}/{lease}: holder {holder:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every (Deployment name, uid) the watch sees for `plan`, in order.
async fn record_deployments(plan: &str) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let deployments: Api<Deployment> = Api::all(client().await);
    let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={plan}"));
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(deployments, config).applied_objects().boxed();
        while let Ok(Some(deployment)) = stream.try_next().await {
            let seen = (deployment.name_any(), deployment.uid().unwrap_or_default());
            if sender.send(seen).is_err() {
                return;
            }
        }
    });
    receiver
}

fn add_node(zone: &str) {
    apply(
        &json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": format!("zone-{zone}"),
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": format!("zone-{zone}"), "type": "kwok", "resurgo.test/zone": zone}
            },
            "status": {"capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                       "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
        })
        .to_string(),
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_standby_takes_over_from_a_killed_leader_and_does_nothing_twice() {
    install_crds().await;
    let id = unique_name("leader");
    let lease = format!("{id}-lease");
    let account = install_chart_account(&id, &lease);
    let lease_duration = 4;
    let elect = [
        "--leader-election".to_owned(),
        format!("--lease-name={lease}"),
        format!("--lease-namespace={}", account.namespace),
        format!("--lease-duration={lease_duration}"),
    ];
    let elect: Vec<&str> = elect.iter().map(String::as_str).collect();
    let mut first = Operator::start(&account, &id, &format!("{id}-a"), &elect);
    let leader_name = until_holder(
        &account.namespace,
        &lease,
        |h| h.is_some(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(leader_name, first.name);
    let mut second = Operator::start(&account, &id, &format!("{id}-b"), &elect);
    // The standby is ready (it is doing its job: waiting) but does not lead.
    second.until_answers("/readyz", 200).await;
    first.until_answers("/readyz", 200).await;
    assert_eq!(first.metric("resurgo_leader"), Some(1.0));
    assert_eq!(second.metric("resurgo_leader"), Some(0.0));
    assert_eq!(
        lease_holder(&account.namespace, &lease).await,
        Some(first.name.clone())
    );

    // The leader recovers the data tier; the app waits for its zone.
    let name = format!("{id}-plan");
    let zone = unique_name("zone");
    let mut deployments = record_deployments(&name).await;
    apply(&plan(&name, &id, Some(&zone)));
    let plans: Api<resurgo::api::recovery_plan::RecoveryPlan> = Api::all(client().await);
    let db_ready = |plan: Option<&resurgo::api::recovery_plan::RecoveryPlan>| {
        plan.and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.services.iter().any(|svc| {
                svc.name == "app"
                    && svc.phase == resurgo::api::recovery_plan::ServicePhase::Deploying
            })
        })
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(plans.clone(), &name, db_ready),
    )
    .await
    .unwrap_or_else(|_| panic!("the app never started:\n{}", first.log()))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client().await, &format!("{name}-db"));
    let credentials = secrets.get("db-credentials").await.unwrap();

    // The leader dies without a word: the standby waits out the Lease, then leads.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = tokio::time::Instant::now();
    until_holder(
        &account.namespace,
        &lease,
        |h| h == Some(second.name.as_str()),
        Duration::from_secs(3 * lease_duration),
    )
    .await;
    let took = killed.elapsed();
    // Expiry is judged on the standby's clock from the last renewal it saw: at most one
    // duration after the death, plus up to two retry periods (a fifth of it each).
    assert!(
        took <= Duration::from_secs(lease_duration) * 7 / 5 + Duration::from_millis(500),
        "took over after {took:?}"
    );
    second.until_answers("/readyz", 200).await;
    assert_eq!(second.metric("resurgo_leader"), Some(1.0));

    add_node(&zone);
    wait_ready(&name, "60s", &[&second]);

    // Nothing was done twice: each Deployment was created once (one uid), the credentials
    // are the first regeneration's, and the takeover was one transition of the Lease.
    let mut uids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Ok((deployment, uid)) = deployments.try_recv() {
        uids.entry(deployment).or_default().insert(uid);
    }
    assert_eq!(uids.keys().collect::<Vec<_>>(), ["app", "db"], "{uids:?}");
    for (deployment, seen) in &uids {
        assert_eq!(
            seen.len(),
            1,
            "{deployment} was created more than once: {seen:?}"
        );
    }
    let after = secrets.get("db-credentials").await.unwrap();
    assert_eq!(after.uid(), credentials.uid());
    assert_eq!(
        after.data, credentials.data,
        "the credentials were regenerated twice"
    );
    let leases: Api<Lease> = Api::namespaced(client().await, &account.namespace);
    let record = leases.get(&lease).await.unwrap().spec.unwrap();
    assert_eq!(record.lease_transitions, Some(1));
    let status = plans.get_status(&name).await.unwrap().status.unwrap();
    for service in &status.services {
        assert_eq!(service.attempts, 1, "{} started twice", service.name);
    }

    // Stopped politely, the leader gives the Lease up and exits cleanly, and a standby
    // takes over at its next attempt instead of waiting the Lease out.
    let mut third = Operator::start(&account, &id, &format!("{id}-c"), &elect);
    third.until_answers("/readyz", 200).await;
    assert_eq!(third.metric("resurgo_leader"), Some(0.0));
    assert!(kill(second.child.id(), "-TERM"));
    let stopped = tokio::time::Instant::now();
    let exit = second.child.wait().unwrap();
    assert!(exit.success(), "{exit}:\n{}", second.log());
    assert!(
        second.log().contains("released the leader Lease"),
        "{}",
        second.log()
    );
    until_holder(
        &account.namespace,
        &lease,
        |h| h == Some(third.name.as_str()),
        Duration::from_secs(3 * lease_duration),
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(lease_duration),
        "the standby waited {took:?}: the Lease was not released"
    );

    cleanup(&account, &name);
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_leader_that_finds_its_lease_taken_stops_at_once() {
    install_crds().await;
    let id = unique_name("usurped");
    let lease = format!("{id}-lease");
    let account = install_chart_account(&id, &lease);
    let elect = [
        "--leader-election".to_owned(),
        format!("--lease-name={lease}"),
        format!("--lease-namespace={}", account.namespace),
        "--lease-duration=3".to_owned(),
    ];
    let elect: Vec<&str> = elect.iter().map(String::as_str).collect();
    let mut leader = Operator::start(&account, &id, &format!("{id}-a"), &elect);
    until_holder(
        &account.namespace,
        &lease,
        |h| h.is_some(),
        Duration::from_secs(30),
    )
    .await;
    leader.until_answers("/readyz", 200).await;
    // Someone else writes itself into the Lease (a replica that judged it expired).
    kubectl_ok(
        &[
            "-n",
            &account.namespace,
            "patch",
            "lease",
            &lease,
            "--type=merge",
            "-p",
            r#"{"spec":{"holderIdentity":"someone-else"}}"#,
        ],
        None,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = leader.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running:\n{}",
            leader.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !exit.success(),
        "it must exit non-zero so that it is restarted"
    );
    assert!(leader.log().contains("lost leadership"), "{}", leader.log());
    cleanup(&account, "none");
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn an_operator_stopped_while_it_starts_exits_at_once() {
    install_crds().await;
    let id = unique_name("early-stop");
    let account = install_chart_account(&id, &format!("{id}-lease"));
    let mut operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);
    // SIGTERM as soon as it answers, while its controllers fill their caches: kube-runtime
    // controllers stopped then would wait for those caches forever.
    operator.until_answers("/healthz", 200).await;
    assert!(kill(operator.child.id(), "-TERM"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = operator.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", operator.log());
    assert!(operator.log().contains("stopping"), "{}", operator.log());
    cleanup(&account, "none");
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn the_charts_service_account_runs_data_dumps_only_in_the_namespaces_the_chart_names() {
    use resurgo::{
        api::backup::{Backup, BackupPhase},
        backup::{archive, dump, s3},
    };
    install_crds().await;
    let client = client().await;
    let id = unique_name("rbac-dump");
    let allowed = format!("{id}-db");
    let elsewhere = format!("{id}-other");
    for namespace in [&allowed, &elsewhere] {
        kubectl_ok(&["create", "namespace", namespace], None).unwrap();
    }
    let account = install_chart_account_with(
        &id,
        &format!("{id}-lease"),
        &[&format!("backup.dataDumpNamespaces={{{allowed}}}")],
    );
    let operator = Operator::start(&account, &id, &format!("{id}-operator"), &[]);

    let var = |name: &str| std::env::var(name).expect("run through tests/run.sh (MinIO)");
    let (endpoint, access_key, secret_key) = (
        var("RESURGO_MINIO_ENDPOINT"),
        var("RESURGO_MINIO_ACCESS_KEY"),
        var("RESURGO_MINIO_SECRET_KEY"),
    );
    let store = format!("{id}-s3");
    let spec = json!({"bucket": store, "endpoint": endpoint, "forcePathStyle": true,
                      "allowInsecureHttp": true,
                      "credentialsSecretRef": {"name": store, "namespace": account.namespace}});
    s3::create_bucket(&s3::Target::of(
        &serde_json::from_value(spec.clone()).unwrap(),
        &access_key,
        &secret_key,
    ))
    .await
    .unwrap();
    for object in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": store, "namespace": account.namespace},
               "stringData": {"accessKeyId": access_key, "secretAccessKey": secret_key}}),
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore",
               "metadata": {"name": store, "labels": {TEST_OPERATOR: id}}, "spec": {"s3": spec}}),
    ] {
        apply(&object.to_string());
    }
    let (_, recipient) = archive::generate_identity();
    let mut job = resurgo_tests::job_spec();
    job["template"]["metadata"] =
        json!({"annotations": {"pod-ready.stage.kwok.x-k8s.io/delay": "3s"}});
    let backup = |name: &str, namespace: &str| {
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup",
               "metadata": {"name": name, "labels": {TEST_OPERATOR: id}},
               "spec": {"store": store, "include": {"namespaces": [namespace]},
                        "dataDumps": [{"namespace": namespace, "name": "pg", "spec": job}],
                        "encryption": {"recipients": [recipient]}}})
    };
    let backups = Api::<Backup>::all(client.clone());
    let finished = |name: String| {
        let backups = backups.clone();
        let log = operator.log.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let status = backups.get(&name).await.unwrap().status.unwrap_or_default();
                if matches!(
                    status.phase,
                    Some(BackupPhase::Completed | BackupPhase::Failed)
                ) {
                    return status;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: {status:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // Where the chart lets it delete nothing, the dump does not start.
    let refused = format!("{id}-elsewhere");
    apply(&backup(&refused, &elsewhere).to_string());
    let status = finished(refused.clone()).await;
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert_eq!(
        status.message.as_deref(),
        Some(format!(
            "spec.dataDumps[0] ({elsewhere}/pg): the operator may not delete secrets in {elsewhere}, so the Job's upload URL could stay in the cluster: grant it (the chart's backup.dataDumpNamespaces) and create a new Backup"
        ).as_str())
    );
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &elsewhere);
    assert!(
        jobs.get_opt(&dump::job_name(&refused, "pg"))
            .await
            .unwrap()
            .is_none()
    );

    // In a namespace the chart names, the whole dump runs with the chart's account alone.
    let name = format!("{id}-allowed");
    apply(&backup(&name, &allowed).to_string());
    let secrets = Api::<Secret>::namespaced(client.clone(), &allowed);
    let secret = dump::secret_name(&dump::job_name(&name, "pg"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Some(found) = secrets.get_opt(&secret).await.unwrap()
            && let Some(url) = found.data.unwrap_or_default().get("url")
        {
            break String::from_utf8(url.0.clone()).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no upload Secret");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let payload = archive::encrypt_to(b"dump", &recipient).unwrap();
    let put = reqwest::Client::new()
        .put(&url)
        .body(payload)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let status = finished(name.clone()).await;
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert!(secrets.get_opt(&secret).await.unwrap().is_none());
    assert_nothing_refused(&operator);
}
