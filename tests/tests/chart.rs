//! The Helm chart (charts/resurgo): it lints, it renders the security settings, RBAC and
//! availability the README promises, and it installs on the real control plane, where kwok
//! runs its pods (the image need not exist).

use std::process::{Command, Output};

use resurgo_tests::{k8s_bin, kubectl, kubectl_ok, repo_root, unique_name};
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
    // What may be deleted, and by whom: Backups (retention), bindings, the lockdown ledger
    // and remote-access NetworkPolicies (AccessPolicy), drill copies and namespaces
    // (Incident). No ClusterRole: policy roles are off by default.
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
            "namespaces",
            "networkpolicies",
            "recoveryplans",
            "rolebindings",
            "suspendedbindings"
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
fn token_invalidation_namespaces_alone_let_the_operator_delete_service_accounts() {
    let named = |documents: &[Value], kind: &str, namespace: &str| {
        find(documents, kind)
            .into_iter()
            .find(|r| {
                r["metadata"]["name"] == "rel-resurgo-token-invalidation"
                    && r["metadata"]["namespace"] == namespace
            })
            .cloned()
    };
    // By default, no namespace: the operator may delete no ServiceAccount anywhere.
    let default = render(&[]);
    assert!(named(&default, "Role", "emergency").is_none());
    for role in find(&default, "ClusterRole")
        .into_iter()
        .chain(find(&default, "Role"))
    {
        for rule in role["rules"].as_array().unwrap() {
            let resources = rule["resources"].as_array().unwrap();
            let deletes = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "delete");
            assert!(
                !(deletes && resources.iter().any(|r| r == "serviceaccounts")),
                "{rule}"
            );
        }
    }
    let documents = render(&[
        "--set",
        "incident.tokenInvalidationNamespaces={emergency,records}",
    ]);
    for namespace in ["emergency", "records"] {
        let role = named(&documents, "Role", namespace)
            .unwrap_or_else(|| panic!("no token-invalidation Role in {namespace}"));
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": [""], "resources": ["serviceaccounts"],
                 "verbs": ["list", "create", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "delete"]}
            ])
        );
        let binding = named(&documents, "RoleBinding", namespace).expect("its RoleBinding");
        assert_eq!(binding["roleRef"]["name"], "rel-resurgo-token-invalidation");
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
    }
    // Never the operator's own namespace: its own ServiceAccount is never re-created.
    let chart = chart();
    let own = helm(&[
        "template",
        "rel",
        &chart,
        "--namespace",
        "ops",
        "--set",
        "incident.tokenInvalidationNamespaces={emergency,ops}",
    ]);
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stderr)
            .contains("incident.tokenInvalidationNamespaces: ops is the release namespace"),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
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

/// The rules of the rendered ClusterRole that name `resource`.
fn rules_on<'a>(documents: &'a [Value], resource: &str) -> Vec<&'a Value> {
    one(documents, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == resource)
        })
        .collect()
}

fn verbs_of(rules: &[&Value]) -> Vec<String> {
    let mut verbs: Vec<String> = rules
        .iter()
        .flat_map(|rule| rule["verbs"].as_array().unwrap())
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    verbs.sort_unstable();
    verbs.dedup();
    verbs
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn the_operator_binds_only_grantable_roles_and_writes_cluster_roles_only_for_policy_roles() {
    let documents = render(&[]);
    let on_roles = rules_on(&documents, "clusterroles");
    assert_eq!(verbs_of(&on_roles), ["bind", "list", "watch"]);
    for rule in &on_roles {
        if rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "bind")
        {
            assert_eq!(
                rule["resourceNames"],
                json!(["cluster-admin", "admin", "edit", "view"]),
                "bind on ClusterRoles outside access.grantableClusterRoles: {rule}"
            );
        }
    }
    // The ledger of suspended bindings, cluster-scoped; no Secrets in the release namespace.
    assert_eq!(
        verbs_of(&rules_on(&documents, "suspendedbindings")),
        [
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]
    );
    assert!(rules_on(&documents, "suspendedbindings/status").is_empty());
    // Its own user name, so that a lockdown never suspends it.
    assert_eq!(
        verbs_of(&rules_on(&documents, "selfsubjectreviews")),
        ["create"]
    );
    assert!(
        find(&documents, "Role")
            .iter()
            .all(|role| role["metadata"]["namespace"] != "ops"
                || role["metadata"]["name"] == "rel-resurgo-leader"),
        "a Role in the release namespace other than the Lease's"
    );

    // The list is the value's, and an empty one binds nothing (RBAC's empty resourceNames
    // would mean every ClusterRole).
    let narrow = render(&["--set", "access.grantableClusterRoles={view}"]);
    let binds: Vec<&Value> = rules_on(&narrow, "clusterroles")
        .into_iter()
        .filter(|rule| {
            rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "bind")
        })
        .collect();
    assert_eq!(binds.len(), 1);
    assert_eq!(binds[0]["resourceNames"], json!(["view"]));
    let none = render(&["--set", "access.grantableClusterRoles=null"]);
    assert_eq!(
        verbs_of(&rules_on(&none, "clusterroles")),
        ["list", "watch"]
    );
    let refused = helm(&[
        "template",
        "rel",
        &chart(),
        "--set",
        "access.grantableClusterRoles={*}",
    ]);
    assert!(!refused.status.success());

    // Policy-defined roles: writing ClusterRoles, with escalate, and bind on any name.
    let roles = render(&["--set", "access.policyRoles.enabled=true"]);
    assert_eq!(
        verbs_of(&rules_on(&roles, "clusterroles")),
        [
            "bind", "create", "delete", "escalate", "list", "patch", "watch"
        ]
    );

    // The admission policies: one for bindings, one for ClusterRoles, both refusing on
    // error and enforced (Deny), for the chart's ServiceAccount only.
    let policies = find(&documents, "ValidatingAdmissionPolicy");
    let names: Vec<&str> = policies
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["rel-resurgo-bindings", "rel-resurgo-clusterroles"]);
    for policy in &policies {
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            policy["spec"]["matchConditions"][0]["expression"],
            r#"request.userInfo.username == "system:serviceaccount:ops:rel-resurgo""#
        );
    }
    let bindings = find(&documents, "ValidatingAdmissionPolicyBinding");
    assert_eq!(bindings.len(), 2);
    for binding in bindings {
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert!(names.contains(&binding["spec"]["policyName"].as_str().unwrap()));
    }
}

/// A release of the chart installed with helm (no --wait: the tests below need only its
/// account, RBAC and admission policies), and a kubeconfig with a token of its
/// ServiceAccount. Uninstalled when dropped.
struct Release {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl Release {
    fn install(prefix: &str, values: &[&str]) -> Self {
        let name = unique_name(prefix);
        let chart = chart();
        let mut args = vec![
            "install",
            name.as_str(),
            chart.as_str(),
            "--namespace",
            name.as_str(),
            "--create-namespace",
        ];
        for value in values {
            args.extend_from_slice(&["--set", value]);
        }
        helm_ok(&args);
        let dir = std::env::var_os("RESURGO_CLUSTER_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        resurgo_tests::service_account_kubeconfig(&name, &release_name(&name), &kubeconfig)
            .expect("a kubeconfig with the chart's ServiceAccount token");
        Self { name, kubeconfig }
    }

    fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.name,
            release_name(&self.name)
        )
    }

    /// kubectl with the chart's ServiceAccount token only.
    fn as_operator(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let mut all = vec![kubeconfig.as_str()];
        all.extend_from_slice(args);
        kubectl(&all, stdin)
    }

    /// Asserts that the API server refuses `args` to the operator, and that the refusal
    /// says `why`. Writes are server-side dry runs: RBAC, admission and the RBAC
    /// escalation checks all run, and a chart that let one through changes nothing.
    fn refused(&self, what: &str, args: &[&str], stdin: Option<&str>, why: &str) {
        let mut all = args.to_vec();
        all.push("--dry-run=server");
        let output = self.as_operator(&all, stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "the operator can {what}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(
            stderr.contains(why),
            "{what}: refused, but not for `{why}`: {stderr}"
        );
    }

    fn allowed(&self, what: &str, args: &[&str]) {
        let output = self.as_operator(args, None);
        assert!(
            output.status.success(),
            "the operator cannot {what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A SubjectAccessReview of the operator's account, as the admin.
    fn may(&self, verb: &str, resource: &str, name: &str) -> bool {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": self.user(),
                     "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", self.name), "system:authenticated"],
                     "resourceAttributes": {"group": "rbac.authorization.k8s.io", "resource": resource,
                                            "verb": verb, "name": name}}});
        let answer: Value = serde_json::from_str(
            &kubectl_ok(
                &["create", "-o", "json", "-f", "-"],
                Some(&review.to_string()),
            )
            .expect("a SubjectAccessReview"),
        )
        .unwrap();
        answer["status"]["allowed"] == true
    }

    /// The admission policies type-check against the kinds they match, and are enforced:
    /// the API server loads them through a watch, a moment after they are created.
    fn assert_policies_type_check(&self) {
        self.until_enforced(
            &[
                "create",
                "clusterrolebinding",
                "probe",
                "--clusterrole=view",
                "--group=system:authenticated",
            ],
            &[BY_POLICY],
        );
        self.until_enforced(
            &["delete", "clusterrole", "cluster-admin"],
            &[BY_POLICY, "cannot delete resource \"clusterroles\""],
        );
        for kind in ["bindings", "clusterroles"] {
            let name = format!("{}-{kind}", release_name(&self.name));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let policy: Value = serde_json::from_str(
                    &kubectl_ok(
                        &["get", "validatingadmissionpolicy", &name, "-o", "json"],
                        None,
                    )
                    .expect("the admission policy"),
                )
                .unwrap();
                if policy["status"]["observedGeneration"] == policy["metadata"]["generation"] {
                    assert!(
                        policy["status"]["typeChecking"]["expressionWarnings"].is_null(),
                        "{name}: {}",
                        policy["status"]["typeChecking"]
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} never type-checked"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

impl Release {
    /// Waits until a dry run of `args` as the operator is refused for one of `reasons`.
    fn until_enforced(&self, args: &[&str], reasons: &[&str]) {
        let mut all = args.to_vec();
        all.push("--dry-run=server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let output = self.as_operator(&all, None);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if reasons.iter().any(|reason| stderr.contains(reason)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl {}: never refused for {reasons:?}: {}{stderr}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", &self.name, "--namespace", &self.name]);
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

const BY_POLICY: &str = "ValidatingAdmissionPolicy";

/// A ClusterRole manifest for server-side apply: a PATCH straight away, no GET first.
fn cluster_role(name: &str, labels: Value) -> String {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels},
           "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    .to_string()
}

/// Server-side apply, forced as the operator's is (a conflict must not hide a refusal).
const APPLY: [&str; 6] = [
    "apply",
    "--server-side",
    "--force-conflicts",
    "--field-manager=attacker",
    "-f",
    "-",
];

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_charts_account_cannot_bind_itself_nor_touch_roles_and_bindings_it_does_not_own() {
    resurgo_tests::install_crds().await;
    let release = Release::install("bounds", &[]);
    release.assert_policies_type_check();
    let ns = release.name.as_str();
    let account = release_name(ns);
    let itself = format!("--serviceaccount={ns}:{account}");
    let user = release.user();

    // Binding itself to cluster-admin, directly, by its user name or through a group it
    // is in: RBAC lets it (cluster-admin is grantable), the admission policy does not.
    for (what, subject) in [
        ("bind itself to cluster-admin", itself.clone()),
        (
            "bind its user name to cluster-admin",
            format!("--user={user}"),
        ),
        (
            "bind all ServiceAccounts to cluster-admin",
            "--group=system:serviceaccounts".into(),
        ),
        (
            "bind all users to cluster-admin",
            "--group=system:authenticated".into(),
        ),
    ] {
        release.refused(
            what,
            &[
                "create",
                "clusterrolebinding",
                &unique_name("pwn"),
                "--clusterrole=cluster-admin",
                &subject,
            ],
            None,
            "may not bind itself",
        );
    }
    // ...nor cluster-admin to any ServiceAccount: it can make ServiceAccounts (a plan's
    // workloads), and this would be a way to a cluster-admin token.
    release.refused(
        "bind another ServiceAccount to cluster-admin",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("pwn"),
            "--clusterrole=cluster-admin",
            "--serviceaccount=default:default",
        ],
        None,
        "to people only",
    );
    release.refused(
        "bind its namespace's ServiceAccounts to admin in default",
        &[
            "-n",
            "default",
            "create",
            "rolebinding",
            "pwn",
            "--clusterrole=admin",
            &format!("--group=system:serviceaccounts:{ns}"),
        ],
        None,
        "may not bind itself",
    );
    // ...nor a ServiceAccount subject that leaves the namespace implicit, in its own.
    release.refused(
        "bind itself to a Role of its namespace",
        &["-n", ns, "create", "-f", "-"],
        Some(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "pwn"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "anything"},
                    "subjects": [{"kind": "ServiceAccount", "name": account}]})
            .to_string(),
        ),
        "may not bind itself",
    );

    // ClusterRoles: no writes at all with policy roles off.
    release.refused(
        "delete cluster-admin",
        &["delete", "clusterrole", "cluster-admin"],
        None,
        "cannot delete resource \"clusterroles\"",
    );
    release.refused(
        "patch admin",
        &APPLY,
        Some(&cluster_role("admin", json!({"x": "y"}))),
        "cannot patch resource \"clusterroles\"",
    );
    // A ClusterRole outside access.grantableClusterRoles cannot be bound.
    release.refused(
        "bind system:node",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("node"),
            "--clusterrole=system:node",
            "--user=mallory",
        ],
        None,
        "attempting to grant RBAC permissions not currently held",
    );
    assert!(!release.may("escalate", "clusterroles", ""), "escalate");
    assert!(
        !release.may("create", "clusterroles", ""),
        "create ClusterRoles"
    );
    assert!(
        !release.may("bind", "clusterroles", "system:node"),
        "bind system:node"
    );
    assert!(release.may("bind", "clusterroles", "view"), "bind view");

    // The control plane's bindings and the release's own.
    release.refused(
        "delete a bootstrap binding",
        &["delete", "clusterrolebinding", "system:basic-user"],
        None,
        BY_POLICY,
    );
    release.refused(
        "delete its own ClusterRoleBinding",
        &["delete", "clusterrolebinding", &account],
        None,
        BY_POLICY,
    );
    release.refused(
        "delete its own events RoleBinding",
        &[
            "-n",
            "default",
            "delete",
            "rolebinding",
            &format!("{account}-events"),
        ],
        None,
        BY_POLICY,
    );

    // A bootstrap binding a human was added to: a lockdown may take the human off, but
    // not put them back, nor touch the control plane's subjects.
    let bootstrap = unique_name("bootstrap");
    let mallory = format!("{bootstrap}-mallory");
    kubectl_ok(
        &["apply", "--server-side", "--field-manager=resurgo-tests", "-f", "-"],
        Some(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": bootstrap, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:monitoring"},
                                 {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": mallory}]})
            .to_string(),
        ),
    )
    .unwrap();
    release.refused(
        "take the control plane's group off a bootstrap binding",
        &[
            "patch",
            "clusterrolebinding",
            &bootstrap,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/subjects/0"}]"#,
        ],
        None,
        "bootstrap binding",
    );
    release.allowed(
        "take a human off a bootstrap binding",
        &[
            "patch",
            "clusterrolebinding",
            &bootstrap,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/subjects/1"}]"#,
        ],
    );
    release.refused(
        "put a human on a bootstrap binding",
        &["patch", "clusterrolebinding", &bootstrap, "--type=json",
          "-p", &format!(r#"[{{"op":"add","path":"/subjects/-","value":{{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"{mallory}"}}}}]"#)],
        None,
        "bootstrap binding",
    );
    kubectl_ok(&["delete", "clusterrolebinding", &bootstrap], None).unwrap();

    // What grants and lockdowns need still works: binding view to a user, deleting a
    // human's binding.
    let grant = unique_name("grant");
    release.allowed(
        "bind view to a user",
        &[
            "create",
            "clusterrolebinding",
            &grant,
            "--clusterrole=view",
            "--user=alice",
        ],
    );
    release.allowed(
        "delete a human's binding",
        &["delete", "clusterrolebinding", &grant],
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn with_policy_roles_on_the_admission_policy_alone_keeps_the_bounds_rbac_cannot() {
    resurgo_tests::install_crds().await;
    let release = Release::install("bounds-roles", &["access.policyRoles.enabled=true"]);
    release.assert_policies_type_check();
    let user = release.user();

    // RBAC grants these, on every name (policy roles' names are not known in advance)...
    assert!(release.may("escalate", "clusterroles", ""));
    assert!(release.may("bind", "clusterroles", "system:node"));
    assert!(release.may("delete", "clusterroles", "cluster-admin"));
    // ...and the admission policy narrows them back.
    release.refused(
        "bind system:node",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("node"),
            "--clusterrole=system:node",
            "--user=mallory",
        ],
        None,
        "may bind only the ClusterRoles of the chart value access.grantableClusterRoles",
    );
    release.refused(
        "delete cluster-admin",
        &["delete", "clusterrole", "cluster-admin"],
        None,
        "may write only the ClusterRoles of policy-defined roles",
    );
    release.refused(
        "patch admin",
        &APPLY,
        Some(&cluster_role("admin", json!({"x": "y"}))),
        "may write only the ClusterRoles of policy-defined roles",
    );
    release.refused(
        "bind itself to cluster-admin",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("pwn"),
            "--clusterrole=cluster-admin",
            &format!("--user={user}"),
        ],
        None,
        "may not bind itself",
    );
    release.refused(
        "bind itself to a policy role",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("pwn"),
            "--clusterrole=resurgo.role.p.r",
            &format!("--user={user}"),
        ],
        None,
        "may not bind itself",
    );
    release.refused(
        "write a policy role aggregated into admin",
        &APPLY,
        Some(&cluster_role(
            "resurgo.role.p.aggregated",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
        )),
        "neither aggregate",
    );
    // What policy roles need: writing resurgo.role.* and binding it to a user.
    let output = release.as_operator(
        &[&APPLY[..], &["--dry-run=server"]].concat(),
        Some(&cluster_role("resurgo.role.p.reader", json!({}))),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    release.allowed(
        "bind a policy role to a user",
        &[
            "create",
            "clusterrolebinding",
            &unique_name("grant"),
            "--clusterrole=resurgo.role.p.reader",
            "--user=alice",
            "--dry-run=server",
        ],
    );
}

/// One rule of the rendered ClusterRole as a row of README.md's RBAC table.
fn rule_row(rule: &Value) -> String {
    let cell = |field: &str| {
        let items: Vec<String> = rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|item| {
                if item.is_empty() {
                    r#""""#.to_owned()
                } else {
                    item.to_owned()
                }
            })
            .collect();
        if items.is_empty() {
            "(any)".to_owned()
        } else {
            items.join(", ")
        }
    };
    format!(
        "| {} | {} | {} | {} |",
        cell("apiGroups"),
        cell("resources"),
        cell("verbs"),
        cell("resourceNames")
    )
}

#[test]
#[ignore = "needs helm: run tests/run.sh"]
fn the_readme_lists_exactly_the_rules_of_the_rendered_cluster_role() {
    let documents = render(&[]);
    let mut expected: Vec<String> = one(&documents, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(rule_row)
        .collect();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let begin =
        "<!-- rbac-rules: generated from the rendered chart; checked by tests/tests/chart.rs -->";
    let end = "<!-- /rbac-rules -->";
    let table = readme
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(table, _)| table)
        .unwrap_or_else(|| panic!("README.md has no {begin} ... {end} section"));
    let mut listed: Vec<String> = table
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|') && !line.starts_with("|---"))
        .skip(1)
        .map(str::to_owned)
        .collect();
    let generated = format!(
        "| apiGroups | resources | verbs | resourceNames |\n|---|---|---|---|\n{}",
        expected.join("\n")
    );
    expected.sort();
    listed.sort();
    assert_eq!(
        listed, expected,
        "README.md's RBAC table differs from the chart's ClusterRole; with default values it is:\n{generated}"
    );
}
