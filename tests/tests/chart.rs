//! The Helm chart (charts/resurgo): it lints, it renders the security settings, RBAC and
//! availability the README promises, and it installs on the real control plane, where kwok
//! runs its pods (the image need not exist).

use std::process::{Command, Output};

use resurgo_tests::{k8s_bin, kubectl_ok, repo_root, unique_name};
use serde_json::{Value, json};

fn helm(args: &[&str]) -> Output {
    Command::new(k8s_bin().join("helm"))
        .args(args)
        .output()
        .expect("run helm")
}

fn helm_ok(args: &[&str]) -> String {
    let output = helm(args);
    assert!(
        output.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn chart() -> String {
    repo_root()
        .join("charts/resurgo")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// The chart rendered with `extra` arguments, as JSON documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.as_str(), "--namespace", "ops"];
    args.extend_from_slice(extra);
    resurgo::yaml::documents(&helm_ok(&args)).expect("helm template prints YAML")
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found = find(documents, kind);
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn the_chart_lints_clean() {
    let output = helm_ok(&["lint", "--strict", &chart()]);
    assert!(output.contains("0 chart(s) failed"), "{output}");
    assert!(!output.contains("[WARNING]"), "{output}");
    assert!(!output.contains("[ERROR]"), "{output}");
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn the_operator_pod_is_hardened_and_runs_two_replicas_under_a_lease() {
    let documents = render(&[]);
    let deployment = one(&documents, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "the operator needs its token"
    );
    assert_eq!(pod["serviceAccountName"], "rel-resurgo");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null());
    assert!(security["privileged"].is_null() || security["privileged"] == false);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "no {kind}.{resource}"
            );
        }
    }
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "run",
        "--log-format=json",
        "--metrics-addr=0.0.0.0:8080",
        "--leader-election",
        "--lease-name=rel-resurgo",
    ] {
        assert!(args.contains(&expected), "{expected} not in {args:?}");
    }
    let env = container["env"].as_array().expect("env");
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    let account = one(&documents, "ServiceAccount");
    assert_eq!(
        account["automountServiceAccountToken"], false,
        "other pods using the account do not get its token"
    );

    let budget = one(&documents, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert!(
        find(&documents, "ServiceMonitor").is_empty(),
        "off by default"
    );
    let monitored = render(&["--set", "metrics.serviceMonitor.enabled=true"]);
    assert_eq!(
        one(&monitored, "ServiceMonitor")["spec"]["endpoints"][0]["port"],
        "metrics"
    );
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn rbac_names_every_resource_and_verb_and_justifies_every_rule() {
    let documents = render(&[]);
    let mut rules = 0;
    for role in find(&documents, "ClusterRole")
        .into_iter()
        .chain(find(&documents, "Role"))
    {
        for rule in role["rules"].as_array().expect("rules") {
            rules += 1;
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                for value in rule[field].as_array().into_iter().flatten() {
                    assert_ne!(value, "*", "wildcard in {rule}");
                }
            }
            assert!(rule["nonResourceURLs"].is_null(), "{rule}");
        }
    }
    assert!(rules > 10, "only {rules} rules rendered");
    let verbs: Vec<&str> = find(&documents, "ClusterRole")
        .iter()
        .flat_map(|role| role["rules"].as_array().unwrap())
        .flat_map(|rule| rule["verbs"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    for power in ["deletecollection", "impersonate"] {
        assert!(
            !verbs.contains(&power),
            "the ClusterRole grants {power}, which no controller uses"
        );
    }
    // `bind` and `escalate` are the AccessPolicy controller's, on roles only.
    for rule in find(&documents, "ClusterRole")
        .iter()
        .flat_map(|role| role["rules"].as_array().unwrap())
    {
        let verbs = rule["verbs"].as_array().unwrap();
        if verbs.iter().any(|v| v == "bind" || v == "escalate") {
            assert_eq!(
                rule["apiGroups"],
                json!(["rbac.authorization.k8s.io"]),
                "{rule}"
            );
            let resources = rule["resources"].as_array().unwrap();
            assert!(
                resources
                    .iter()
                    .all(|r| r == "clusterroles" || r == "roles"),
                "{rule}"
            );
        }
    }
    // What may be deleted, and by whom: Backups (retention), bindings, policy roles and
    // remote-access NetworkPolicies (AccessPolicy), drill copies and namespaces (Incident).
    let mut deletable: Vec<&str> = find(&documents, "ClusterRole")
        .iter()
        .flat_map(|role| role["rules"].as_array().unwrap())
        .filter(|rule| {
            rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "delete")
        })
        .flat_map(|rule| rule["resources"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    deletable.sort_unstable();
    assert_eq!(
        deletable,
        [
            "backups",
            "clusterrolebindings",
            "clusterroles",
            "namespaces",
            "networkpolicies",
            "recoveryplans",
            "rolebindings"
        ]
    );

    // Every rule in the templates sits under a comment that says which code needs it.
    for template in ["clusterrole.yaml", "role.yaml"] {
        let text =
            std::fs::read_to_string(repo_root().join("charts/resurgo/templates").join(template))
                .expect("read template");
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with("- apiGroups:") {
                continue;
            }
            let above = lines[..index]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim_start())
                .unwrap_or_default();
            assert!(
                above.starts_with('#') || above.starts_with("{{- range"),
                "{template}:{}: a rule without a comment above it",
                index + 1
            );
        }
    }

    // A wildcard cannot be slipped in through the values.
    let chart = chart();
    let refused = helm(&[
        "template",
        "rel",
        &chart,
        "--set",
        "recovery.workloadKinds[0].apiGroup=apps",
        "--set",
        "recovery.workloadKinds[0].resources={*}",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`*` is refused"));
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn data_dump_namespaces_alone_let_the_operator_delete_secrets_and_jobs() {
    let role_named = |documents: &[Value], namespace: &str| {
        find(documents, "Role")
            .into_iter()
            .find(|r| {
                r["metadata"]["name"] == "rel-resurgo-data-dumps"
                    && r["metadata"]["namespace"] == namespace
            })
            .cloned()
    };
    // By default, no namespace: the operator may delete no Secret and no Job anywhere.
    let default = render(&[]);
    assert!(role_named(&default, "clinical-records").is_none());
    for role in find(&default, "ClusterRole") {
        for rule in role["rules"].as_array().unwrap() {
            let resources = rule["resources"].as_array().unwrap();
            let deletes = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "delete");
            assert!(
                !(deletes && resources.iter().any(|r| r == "secrets" || r == "jobs")),
                "{rule}"
            );
        }
    }
    let documents = render(&[
        "--set",
        "backup.dataDumpNamespaces={clinical-records,laboratory}",
    ]);
    for namespace in ["clinical-records", "laboratory"] {
        let role = role_named(&documents, namespace)
            .unwrap_or_else(|| panic!("no data-dump Role in {namespace}"));
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["delete"]}
            ])
        );
        let binding = find(&documents, "RoleBinding")
            .into_iter()
            .find(|b| {
                b["metadata"]["name"] == "rel-resurgo-data-dumps"
                    && b["metadata"]["namespace"] == namespace
            })
            .expect("its RoleBinding");
        assert_eq!(binding["roleRef"]["name"], "rel-resurgo-data-dumps");
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
    }
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn values_the_operator_cannot_honour_fail_the_install() {
    let chart = chart();
    let namespaces = helm(&[
        "template",
        "rel",
        &chart,
        "--set",
        "watchNamespaces={team-a}",
    ]);
    assert!(!namespaces.status.success());
    assert!(
        String::from_utf8_lossy(&namespaces.stderr).contains("watchNamespaces is not supported")
    );
    let unelected = helm(&[
        "template",
        "rel",
        &chart,
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!unelected.status.success(), "two replicas without a Lease");
    let single = render(&[
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicas=1",
        "--set",
        "selector=team in (a\\,b)",
    ]);
    let args = one(&single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!args.contains(&"--leader-election".into()));
    assert!(
        args.contains(&"--selector=team in (a,b)".into()),
        "{args:?}"
    );
    assert!(
        find(&single, "Role")
            .iter()
            .all(|r| r["metadata"]["name"] != "rel-resurgo-leader")
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_chart_installs_and_its_deployment_becomes_available() {
    resurgo_tests::install_crds().await;
    let release = unique_name("chart");
    let namespace = release.clone();
    let chart = chart();
    let installed = helm(&[
        "install",
        &release,
        &chart,
        "--namespace",
        &namespace,
        "--create-namespace",
        "--wait",
        "--timeout=120s",
    ]);
    let status = kubectl_ok(
        &["-n", &namespace, "get", "deploy,pods,pdb", "-o", "wide"],
        None,
    )
    .unwrap_or_default();
    assert!(
        installed.status.success(),
        "helm install failed: {}\n{status}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let deployment: Value = serde_json::from_str(
        &kubectl_ok(
            &[
                "-n",
                &namespace,
                "get",
                "deployment",
                &release_name(&release),
                "-o",
                "json",
            ],
            None,
        )
        .expect("the Deployment"),
    )
    .unwrap();
    assert_eq!(deployment["status"]["availableReplicas"], 2, "{status}");
    let budget: Value = serde_json::from_str(
        &kubectl_ok(
            &[
                "-n",
                &namespace,
                "get",
                "pdb",
                &release_name(&release),
                "-o",
                "json",
            ],
            None,
        )
        .expect("the PodDisruptionBudget"),
    )
    .unwrap();
    assert_eq!(budget["status"]["expectedPods"], 2);
    assert_eq!(budget["status"]["disruptionsAllowed"], 1);
    // The ClusterRole and its binding are cluster-scoped: uninstall, so they do not pile up.
    helm_ok(&["uninstall", &release, "--namespace", &namespace, "--wait"]);
    kubectl_ok(&["delete", "namespace", &namespace, "--wait=false"], None).expect("cleanup");
}

/// The chart's full name for a release name (see _helpers.tpl).
fn release_name(release: &str) -> String {
    format!("{release}-resurgo")
}
