//! The Resurgo API on a real kube-apiserver: the CRDs install, `kubectl explain` shows our
//! docs, every example is accepted, and every schema constraint and CEL rule rejects what it
//! should with a message that names the field.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, Status},
};
use resurgo::api::{AccessPolicy, Backup, Incident, RecoveryPlan};
use resurgo_tests::{client, install_crds, kubectl, kubectl_ok, unique_name};
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn every_kind_is_served_with_its_short_name() {
    install_crds().await;
    let listing = kubectl_ok(
        &["api-resources", "--api-group=resurgo.dev", "--no-headers"],
        None,
    )
    .unwrap();
    for (plural, short) in [
        ("recoveryplans", "rp"),
        ("backupstores", "bstore"),
        ("backupschedules", "bsched"),
        ("backups", "bk"),
        ("accesspolicies", "ap"),
        ("incidents", "inc"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(plural))
            .unwrap_or_else(|| panic!("{plural} not served:\n{listing}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1], short, "{line}");
        assert!(line.contains("resurgo.dev/v1alpha1"), "{line}");
        assert!(
            line.contains("false"),
            "{plural} must be cluster-scoped: {line}"
        );
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn kubectl_explain_shows_the_field_docs() {
    install_crds().await;
    let services = kubectl_ok(&["explain", "recoveryplan.spec.services"], None).unwrap();
    assert!(services.contains("The services to rebuild"), "{services}");
    assert!(services.contains("dependsOn"), "{services}");
    assert!(services.contains("Pod Security"), "{services}");
    let grants = kubectl_ok(&["explain", "accesspolicy.spec.grants.expiresAt"], None).unwrap();
    assert!(
        grants.contains("Required\n") || grants.contains("removes the bindings at this second"),
        "{grants}"
    );
    let incident = kubectl_ok(&["explain", "incident"], None).unwrap();
    assert!(
        incident.contains("The switch that starts a recovery"),
        "{incident}"
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn every_example_is_accepted_by_the_api_server() {
    install_crds().await;
    let files = resurgo_tests::example_files().unwrap();
    assert!(files.len() >= 6, "examples/ holds only {files:?}");
    for file in files {
        // A server-side dry run goes through defaulting, the schema, CEL and admission,
        // exactly like a real apply, without leaving objects for other tests to trip on.
        let output = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                file.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            output.status.success(),
            "{} was rejected: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_plan_is_defaulted_and_its_status_is_a_subresource() {
    install_crds().await;
    let client = client().await;
    let plans: Api<RecoveryPlan> = Api::all(client);
    let name = unique_name("status");
    let mut plan = base("RecoveryPlan");
    plan["metadata"]["name"] = json!(name);
    // Paused: the operator reports on the plan but creates nothing. One tier: the planner
    // refuses a tier without services.
    plan["spec"]["paused"] = json!(true);
    plan["spec"]["tiers"] = json!([{"name": "first", "rto": "15m"}]);
    let created = plans
        .create(
            &PostParams::default(),
            &serde_json::from_value(plan).unwrap(),
        )
        .await
        .expect("create a valid plan");
    // Defaults come from the schema, applied by the server.
    assert_eq!(
        created.spec.on_failure,
        resurgo::api::recovery_plan::OnFailure::HaltLowerTiers
    );
    assert_eq!(
        created.spec.services[0].action,
        resurgo::api::recovery_plan::ServiceAction::Rebuild
    );

    // The operator writes status through the subresource; the printer columns show it.
    kubectl_ok(
        &[
            "wait",
            "--for=jsonpath={.status.ready}=0/1",
            "--timeout=30s",
            &format!("recoveryplan/{name}"),
        ],
        None,
    )
    .expect("the operator reports on the plan");
    let table = kubectl_ok(&["get", "recoveryplan", &name], None).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "TIER", "READY", "RTO", "AGE"],
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("Pending") && row.contains("first") && row.contains("0/1"),
        "{table}"
    );

    // Writing the main resource cannot set status: only the subresource can.
    let mut with_status = serde_json::to_value(plans.get(&name).await.unwrap()).unwrap();
    with_status["status"]["phase"] = json!("Recovered");
    with_status["spec"]["maxParallel"] = json!(3);
    let replaced = plans
        .replace(
            &name,
            &PostParams::default(),
            &serde_json::from_value(with_status).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(replaced.spec.max_parallel, Some(3));
    assert_eq!(
        replaced.status.unwrap().phase,
        Some(resurgo::api::recovery_plan::PlanPhase::Pending)
    );
    plans.delete(&name, &Default::default()).await.unwrap();
}

/// A valid object of each kind, the starting point of every invalid case.
fn base(kind: &str) -> Value {
    let spec = match kind {
        "RecoveryPlan" => json!({
            "tiers": [{"name": "first", "rto": "15m"}, {"name": "second", "rto": "4h"}],
            "services": [{
                "name": "svc-a", "tier": "first", "namespace": "ns-a",
                "workload": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}]}
            }]
        }),
        "BackupStore" => json!({"filesystem": {"path": "/var/lib/resurgo"}}),
        "BackupSchedule" => json!({
            "schedule": "30 2 * * *", "store": "local",
            "include": {"namespaces": ["ns-a"]},
            "encryption": {"recipients": [RECIPIENT]},
            "retention": {"keepLast": 3}
        }),
        "Backup" => json!({
            "store": "local", "include": {"namespaces": ["ns-a"]},
            "encryption": {"recipients": [RECIPIENT]}
        }),
        "AccessPolicy" => json!({
            "mode": "Normal",
            "grants": [{"name": "g1", "subject": {"kind": "User", "name": "alice"},
                        "clusterRole": "view", "reason": "on call"}]
        }),
        "Incident" => json!({"compromisedSince": "2021-07-31T23:00:00Z", "recoveryPlans": ["p"]}),
        other => panic!("no base object for {other}"),
    };
    json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

const RECIPIENT: &str = "age1tytq3s84pxk6dhmv8th5kz432h04nhylxaj48jpqyz9wrhfeps9secp5cy";

/// An age private key, as age-keygen writes it (made for this test, encrypts nothing).
const PRIVATE_KEY: &str =
    "AGE-SECRET-KEY-1N9RJ8W7M3ZC4TQ5X0V2E6HDGSUFYKAP8L7R3N9QJ5W2C6ZT4M8XE0VKQ4";

/// The rejection of a recipient that holds a private key.
const KEY_FORBIDDEN: &[&str] = &[
    "spec.encryption.recipients[0]: Forbidden: this is an age private key: put only the public key (age1...) here; the private key must never enter the cluster",
];

/// The rejection of a source range with bits set after its prefix length.
const HOST_BITS: &[&str] = &[
    "spec.remoteAccess[0].sourceCIDRs: Invalid value: every entry must be a network address with no bit set after the prefix length",
];

/// One remote-access rule with these sources and ports.
fn remote_access(cidrs: &[&str], ports: &[u32]) -> Value {
    json!([{"name": "wan", "namespaces": ["ns-a"], "sourceCIDRs": cidrs, "ports": ports}])
}

/// Whether `message` holds any of the private key, in any case: the prefix, or any 12
/// characters in a row of its key material.
fn quotes_the_private_key(message: &str) -> bool {
    let message = message.to_lowercase();
    let key = PRIVATE_KEY.to_lowercase();
    let material = key.trim_start_matches("age-secret-key-1");
    message.contains("age-secret-key-")
        || (0..=material.len() - 12).any(|i| message.contains(&material[i..i + 12]))
}

fn resource(kind: &str) -> ApiResource {
    let crd = resurgo::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    ApiResource {
        group: crd.spec.group.clone(),
        version: crd.spec.versions[0].name.clone(),
        api_version: format!("{}/{}", crd.spec.group, crd.spec.versions[0].name),
        kind: kind.to_owned(),
        plural: crd.spec.names.plural.clone(),
    }
}

/// Sets `value` at a JSON pointer into `object`, creating objects on the way.
fn set(object: &mut Value, pointer: &str, value: Value) {
    let mut target = object;
    for part in pointer.trim_start_matches('/').split('/') {
        target = match target {
            Value::Array(items) => {
                let index: usize = part.parse().unwrap();
                if index == items.len() {
                    items.push(Value::Null);
                }
                &mut items[index]
            }
            other => other
                .as_object_mut()
                .unwrap()
                .entry(part.to_owned())
                .or_insert(Value::Null),
        };
    }
    *target = value;
}

/// One invalid resource: a valid base with one change, and the words the rejection must
/// contain (the field path, then what is wrong).
struct Case {
    what: &'static str,
    kind: &'static str,
    changes: Vec<(&'static str, Value)>,
    expected: &'static [&'static str],
}

fn case(
    what: &'static str,
    kind: &'static str,
    changes: Vec<(&'static str, Value)>,
    expected: &'static [&'static str],
) -> Case {
    Case {
        what,
        kind,
        changes,
        expected,
    }
}

fn invalid_cases() -> Vec<Case> {
    let svc = |extra: Value| {
        let mut s = json!({"name": "svc-b", "tier": "first", "namespace": "ns-b",
            "workload": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}]}});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    vec![
        // RecoveryPlan
        case(
            "duplicate tier names",
            "RecoveryPlan",
            vec![("/spec/tiers/1/name", json!("first"))],
            &["spec.tiers[1]", "Duplicate value"],
        ),
        case(
            "duplicate service names",
            "RecoveryPlan",
            vec![("/spec/services/1", svc(json!({"name": "svc-a"})))],
            &["spec.services[1]", "Duplicate value"],
        ),
        case(
            "a service names a tier that does not exist",
            "RecoveryPlan",
            vec![("/spec/services/1", svc(json!({"tier": "booking"})))],
            &[
                "spec.services",
                "every service's tier must be the name of one of spec.tiers",
            ],
        ),
        case(
            "an RTO that is not a duration",
            "RecoveryPlan",
            vec![("/spec/tiers/0/rto", json!("15 minutes"))],
            &[
                "spec.tiers[0].rto",
                "must be a positive duration such as 90s, 15m, 4h or 1h30m",
            ],
        ),
        case(
            "a zero RTO",
            "RecoveryPlan",
            vec![("/spec/tiers/0/rto", json!("0m"))],
            &["spec.tiers[0].rto", "must be a positive duration"],
        ),
        case(
            "a service timeout that is not a duration",
            "RecoveryPlan",
            vec![("/spec/services/0/readiness", json!({"timeout": "1 day"}))],
            &[
                "spec.services[0].readiness.timeout",
                "must be a positive duration",
            ],
        ),
        case(
            "a service that depends on itself",
            "RecoveryPlan",
            vec![("/spec/services/0/dependsOn", json!(["svc-a"]))],
            &[
                "spec.services[0].dependsOn",
                "a service cannot depend on itself",
            ],
        ),
        case(
            "a duplicate dependency",
            "RecoveryPlan",
            vec![(
                "/spec/services/1",
                svc(json!({"dependsOn": ["svc-a", "svc-a"]})),
            )],
            &["spec.services[1].dependsOn[1]", "Duplicate value"],
        ),
        case(
            "a Rebuild service without a workload",
            "RecoveryPlan",
            vec![("/spec/services/0/workload", Value::Null)],
            &[
                "spec.services[0].workload",
                "a service with action Rebuild needs a workload",
            ],
        ),
        case(
            "a Verify service with a workload",
            "RecoveryPlan",
            vec![
                ("/spec/services/0/action", json!("Verify")),
                (
                    "/spec/services/0/readiness",
                    json!({"checks": [{"name": "c", "spec": {}}]}),
                ),
            ],
            &[
                "spec.services[0].workload",
                "a service with action Verify must not have one",
            ],
        ),
        case(
            "a Verify service without checks",
            "RecoveryPlan",
            vec![
                ("/spec/services/0/action", json!("Verify")),
                ("/spec/services/0/workload", Value::Null),
            ],
            &[
                "spec.services[0].readiness",
                "needs at least one check in readiness.checks",
            ],
        ),
        case(
            "a workload with two sources",
            "RecoveryPlan",
            vec![(
                "/spec/services/0/workload/fromBackup",
                json!({"identitySecretRef": {"name": "age-key", "namespace": "keys"}}),
            )],
            &[
                "spec.services[0].workload",
                "set exactly one of manifests, configMapRef, secretRef or fromBackup",
            ],
        ),
        case(
            "an inline manifest without a kind",
            "RecoveryPlan",
            vec![(
                "/spec/services/0/workload/manifests/0",
                json!({"apiVersion": "v1", "metadata": {"name": "a"}}),
            )],
            &[
                "spec.services[0].workload.manifests[0].kind",
                "Required value",
            ],
        ),
        case(
            "a namespace that is not a DNS label",
            "RecoveryPlan",
            vec![("/spec/services/0/namespace", json!("Clinical_Records"))],
            &["spec.services[0].namespace", "should match"],
        ),
        case(
            "no tiers",
            "RecoveryPlan",
            vec![("/spec/tiers", json!([]))],
            &["spec.tiers", "should have at least 1 items"],
        ),
        case(
            "maxParallel of zero",
            "RecoveryPlan",
            vec![("/spec/maxParallel", json!(0))],
            &["spec.maxParallel", "should be greater than or equal to 1"],
        ),
        case(
            "an unknown onFailure",
            "RecoveryPlan",
            vec![("/spec/onFailure", json!("Ignore"))],
            &[
                "spec.onFailure",
                "Unsupported value: \"Ignore\"",
                "\"HaltLowerTiers\", \"Continue\"",
            ],
        ),
        case(
            "a regenerated secret without keys",
            "RecoveryPlan",
            vec![(
                "/spec/services/0/regenerateSecrets",
                json!([{"name": "db", "keys": []}]),
            )],
            &[
                "spec.services[0].regenerateSecrets[0].keys",
                "should have at least 1 items",
            ],
        ),
        case(
            "a plan name longer than a label value",
            "RecoveryPlan",
            vec![("/metadata/name", json!("p".repeat(64)))],
            &["a RecoveryPlan name has at most 63 characters"],
        ),
        // BackupStore
        case(
            "a store with both filesystem and s3",
            "BackupStore",
            vec![(
                "/spec/s3",
                json!({"bucket": "b-1", "credentialsSecretRef": {"name": "c", "namespace": "n"}}),
            )],
            &["spec", "set exactly one of filesystem or s3"],
        ),
        case(
            "a relative filesystem path",
            "BackupStore",
            vec![("/spec/filesystem/path", json!("backups"))],
            &["spec.filesystem.path", "must be an absolute path"],
        ),
        case(
            "a plain-http S3 endpoint",
            "BackupStore",
            vec![
                ("/spec/filesystem", Value::Null),
                (
                    "/spec/s3",
                    json!({"bucket": "b-1", "endpoint": "http://minio:9000",
                                     "credentialsSecretRef": {"name": "c", "namespace": "n"}}),
                ),
            ],
            &["spec.s3.endpoint", "the endpoint uses plain http"],
        ),
        case(
            "an S3 endpoint that is not a URL",
            "BackupStore",
            vec![
                ("/spec/filesystem", Value::Null),
                (
                    "/spec/s3",
                    json!({"bucket": "b-1", "endpoint": "minio:9000",
                                     "credentialsSecretRef": {"name": "c", "namespace": "n"}}),
                ),
            ],
            &["spec.s3.endpoint", "must be an http or https URL"],
        ),
        case(
            "S3 without credentials",
            "BackupStore",
            vec![
                ("/spec/filesystem", Value::Null),
                ("/spec/s3", json!({"bucket": "b-1"})),
            ],
            &["spec.s3.credentialsSecretRef", "Required value"],
        ),
        // BackupSchedule
        case(
            "a cron with four fields",
            "BackupSchedule",
            vec![("/spec/schedule", json!("30 2 * *"))],
            &[
                "spec.schedule",
                "must be a cron expression with five fields",
            ],
        ),
        case(
            "a cron that is prose",
            "BackupSchedule",
            vec![("/spec/schedule", json!("every night"))],
            &["spec.schedule", "must be a cron expression"],
        ),
        case(
            "a verification cron that is malformed",
            "BackupSchedule",
            vec![(
                "/spec/verification",
                json!({"schedule": "@fortnightly",
                  "identitySecretRef": {"name": "id", "namespace": "n"}}),
            )],
            &["spec.verification.schedule", "must be a cron expression"],
        ),
        case(
            "a time zone that is not an IANA name",
            "BackupSchedule",
            vec![("/spec/timeZone", json!("CET +1"))],
            &[
                "spec.timeZone",
                "must be an IANA time zone name such as Europe/Rome or UTC",
            ],
        ),
        case(
            "an age private key as a recipient",
            "BackupSchedule",
            vec![("/spec/encryption/recipients/0", json!(PRIVATE_KEY))],
            &[
                "spec.encryption.recipients[0]: Forbidden: this is an age private key",
                "must never enter the cluster",
            ],
        ),
        // However it is pasted, a private key is found, and no error quotes it.
        case(
            "an age private key after a space",
            "BackupSchedule",
            vec![(
                "/spec/encryption/recipients/0",
                json!(format!(" {PRIVATE_KEY}")),
            )],
            KEY_FORBIDDEN,
        ),
        case(
            "an age private key in lower case",
            "BackupSchedule",
            vec![(
                "/spec/encryption/recipients/0",
                json!(PRIVATE_KEY.to_lowercase()),
            )],
            KEY_FORBIDDEN,
        ),
        case(
            "an age private key after '# '",
            "BackupSchedule",
            vec![(
                "/spec/encryption/recipients/0",
                json!(format!("# {PRIVATE_KEY}")),
            )],
            KEY_FORBIDDEN,
        ),
        case(
            "an age private key in the middle of a recipient",
            "Backup",
            vec![(
                "/spec/encryption/recipients/0",
                json!(format!("age1 {PRIVATE_KEY} x")),
            )],
            KEY_FORBIDDEN,
        ),
        case(
            "an age private key pasted twice",
            "BackupSchedule",
            vec![(
                "/spec/encryption/recipients",
                json!([PRIVATE_KEY, PRIVATE_KEY]),
            )],
            &[
                "spec.encryption.recipients: Invalid value: each recipient must appear once",
                "spec.encryption.recipients[1]: Forbidden: this is an age private key",
            ],
        ),
        case(
            "a whole age key file as a recipient",
            "BackupSchedule",
            vec![(
                "/spec/encryption/recipients/0",
                json!(format!(
                    "# created: 2021-08-01T00:00:00Z\n# public key: {RECIPIENT}\n{PRIVATE_KEY}\n"
                )),
            )],
            &["spec.encryption.recipients[0]: Too long"],
        ),
        case(
            "a recipient that is not an age key",
            "BackupSchedule",
            vec![("/spec/encryption/recipients/0", json!("ssh-ed25519 AAAA"))],
            &[
                "spec.encryption.recipients[0]: Forbidden: must be an age public key",
                "the value is not shown",
            ],
        ),
        case(
            "the same recipient twice",
            "BackupSchedule",
            vec![("/spec/encryption/recipients/1", json!(RECIPIENT))],
            &["spec.encryption.recipients: Invalid value: each recipient must appear once"],
        ),
        case(
            "no recipients",
            "BackupSchedule",
            vec![("/spec/encryption/recipients", json!([]))],
            &["spec.encryption.recipients", "should have at least 1 items"],
        ),
        case(
            "retention that keeps nothing",
            "BackupSchedule",
            vec![("/spec/retention", json!({"keepLast": 0}))],
            &["spec.retention", "retention must keep at least one backup"],
        ),
        case(
            "no namespaces to back up",
            "BackupSchedule",
            vec![("/spec/include/namespaces", json!([]))],
            &["spec.include.namespaces", "should have at least 1 items"],
        ),
        case(
            "an immutability period that is not a duration",
            "BackupSchedule",
            vec![("/spec/immutability", json!({"period": "30 days"}))],
            &["spec.immutability.period", "must be a positive duration"],
        ),
        case(
            "two data dumps of the same name in the same namespace",
            "BackupSchedule",
            vec![(
                "/spec/dataDumps",
                json!([{"namespace": "db", "name": "pg", "spec": {}},
                       {"namespace": "db", "name": "pg", "spec": {}}]),
            )],
            &["spec.dataDumps[1]", "Duplicate value"],
        ),
        case(
            "a schedule name longer than a label value",
            "BackupSchedule",
            vec![("/metadata/name", json!("s".repeat(64)))],
            &["a BackupSchedule name has at most 63 characters"],
        ),
        // Backup
        case(
            "a backup without a store",
            "Backup",
            vec![("/spec/store", Value::Null)],
            &["spec.store", "Required value"],
        ),
        // AccessPolicy
        case(
            "a grant without expiry in Lockdown",
            "AccessPolicy",
            vec![("/spec/mode", json!("Lockdown"))],
            &[
                "spec.grants",
                "while mode is Lockdown every grant must have expiresAt",
            ],
        ),
        case(
            "a grant with both clusterRole and policyRole",
            "AccessPolicy",
            vec![
                ("/spec/grants/0/policyRole", json!("reader")),
                (
                    "/spec/roles",
                    json!([{"name": "reader", "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}]),
                ),
            ],
            &[
                "spec.grants[0]",
                "set exactly one of clusterRole or policyRole",
            ],
        ),
        case(
            "a grant naming an undefined policy role",
            "AccessPolicy",
            vec![
                ("/spec/grants/0/clusterRole", Value::Null),
                ("/spec/grants/0/policyRole", json!("auditor")),
            ],
            &[
                "spec.grants",
                "every grant's policyRole must be the name of one of spec.roles",
            ],
        ),
        case(
            "a ServiceAccount subject without a namespace",
            "AccessPolicy",
            vec![(
                "/spec/grants/0/subject",
                json!({"kind": "ServiceAccount", "name": "robot"}),
            )],
            &[
                "spec.grants[0].subject.namespace",
                "a ServiceAccount subject needs a namespace",
            ],
        ),
        case(
            "an unknown subject kind",
            "AccessPolicy",
            vec![("/spec/grants/0/subject/kind", json!("Team"))],
            &["spec.grants[0].subject.kind", "Unsupported value: \"Team\""],
        ),
        case(
            "a grant without a reason",
            "AccessPolicy",
            vec![("/spec/grants/0/reason", Value::Null)],
            &["spec.grants[0].reason", "Required value"],
        ),
        case(
            "an expiry that is not a timestamp",
            "AccessPolicy",
            vec![("/spec/grants/0/expiresAt", json!("tomorrow"))],
            &["spec.grants[0].expiresAt", "must be of type date-time"],
        ),
        case(
            "duplicate grant names",
            "AccessPolicy",
            vec![(
                "/spec/grants/1",
                json!({"name": "g1", "subject": {"kind": "User", "name": "bob"},
                                           "clusterRole": "view", "reason": "x"}),
            )],
            &["spec.grants[1]", "Duplicate value"],
        ),
        case(
            "a remote-access source that is not a CIDR",
            "AccessPolicy",
            vec![(
                "/spec/remoteAccess",
                json!([{"name": "wan", "namespaces": ["ns-a"], "sourceCIDRs": ["10.12.0.0/33"]}]),
            )],
            &[
                "spec.remoteAccess[0].sourceCIDRs",
                "every entry must be a CIDR",
            ],
        ),
        // What the NetworkPolicy a rule becomes would refuse (see
        // `the_schema_refuses_what_a_network_policy_would`).
        case(
            "a remote-access port 0",
            "AccessPolicy",
            vec![("/spec/remoteAccess", remote_access(&["10.12.0.0/16"], &[0]))],
            &[
                "spec.remoteAccess[0].ports[0]",
                "should be greater than or equal to 1",
            ],
        ),
        case(
            "a remote-access port above 65535",
            "AccessPolicy",
            vec![(
                "/spec/remoteAccess",
                remote_access(&["10.12.0.0/16"], &[65536]),
            )],
            &[
                "spec.remoteAccess[0].ports[0]",
                "should be less than or equal to 65535",
            ],
        ),
        case(
            "an IPv4 source range with host bits",
            "AccessPolicy",
            vec![("/spec/remoteAccess", remote_access(&["10.12.0.5/16"], &[]))],
            HOST_BITS,
        ),
        case(
            "an IPv6 source range with host bits",
            "AccessPolicy",
            vec![(
                "/spec/remoteAccess",
                remote_access(&["10.12.0.0/16", "2001:db8::1/32"], &[]),
            )],
            HOST_BITS,
        ),
        case(
            "remote access kept in lockdown without expiry",
            "AccessPolicy",
            vec![(
                "/spec/remoteAccess",
                json!([{"name": "wan", "namespaces": ["ns-a"], "sourceCIDRs": ["10.12.0.0/16"],
                                                "allowDuringLockdown": true}]),
            )],
            &[
                "spec.remoteAccess[0].expiresAt",
                "remote access kept during a lockdown must have expiresAt",
            ],
        ),
        case(
            "a policy name longer than a label value",
            "AccessPolicy",
            vec![("/metadata/name", json!("a".repeat(64)))],
            &["an AccessPolicy name has at most 63 characters"],
        ),
        // Incident
        case(
            "an incident that names nothing to do",
            "Incident",
            vec![("/spec/recoveryPlans", Value::Null)],
            &[
                "spec",
                "an incident must name at least one of accessPolicies, recoveryPlans or invalidateServiceAccountTokens",
            ],
        ),
        case(
            "a ServiceAccount kept outside the namespaces whose tokens are invalidated",
            "Incident",
            vec![(
                "/spec/invalidateServiceAccountTokens",
                json!({"namespaces": ["emergency"], "keep": [{"namespace": "records", "name": "dispatch"}]}),
            )],
            &[
                "spec.invalidateServiceAccountTokens.keep",
                "every ServiceAccount in keep must be in one of namespaces",
            ],
        ),
        case(
            "a drill that would invalidate real tokens",
            "Incident",
            vec![
                ("/spec/mode", json!("Drill")),
                (
                    "/spec/invalidateServiceAccountTokens",
                    json!({"namespaces": ["emergency"]}),
                ),
            ],
            &[
                "spec.invalidateServiceAccountTokens",
                "invalidateServiceAccountTokens is for a Real incident",
            ],
        ),
        case(
            "token invalidation naming no namespace",
            "Incident",
            vec![(
                "/spec/invalidateServiceAccountTokens",
                json!({"namespaces": []}),
            )],
            &[
                "spec.invalidateServiceAccountTokens.namespaces",
                "should have at least 1 items",
            ],
        ),
        case(
            "a Named restore point without a backup",
            "Incident",
            vec![("/spec/restorePoint", json!({"rule": "Named"}))],
            &[
                "spec.restorePoint.backup",
                "backup is required when rule is Named",
            ],
        ),
        case(
            "a backup given with the NewestCleanBefore rule",
            "Incident",
            vec![(
                "/spec/restorePoint",
                json!({"rule": "NewestCleanBefore", "backup": "b"}),
            )],
            &[
                "spec.restorePoint.backup",
                "backup is required when rule is Named, and only then",
            ],
        ),
        case(
            "an incident without compromisedSince",
            "Incident",
            vec![("/spec/compromisedSince", Value::Null)],
            &["spec.compromisedSince", "Required value"],
        ),
        case(
            "an unknown mode",
            "Incident",
            vec![("/spec/mode", json!("Exercise"))],
            &[
                "spec.mode",
                "Unsupported value: \"Exercise\"",
                "\"Real\", \"Drill\"",
            ],
        ),
        case(
            "an incident name longer than a label value",
            "Incident",
            vec![("/metadata/name", json!("i".repeat(64)))],
            &["an Incident name has at most 63 characters"],
        ),
    ]
}

/// Removes the keys the cases set to null: "this field is absent".
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

async fn rejection(client: &kube::Client, kind: &str, object: Value) -> Result<(), Status> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) => Err(*response),
        Err(other) => panic!("{kind}: request failed before reaching validation: {other}"),
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn invalid_resources_are_rejected_naming_the_field() {
    install_crds().await;
    let client = client().await;

    // The bases themselves must pass, or every case below would prove nothing.
    for kind in [
        "RecoveryPlan",
        "BackupStore",
        "BackupSchedule",
        "Backup",
        "AccessPolicy",
        "Incident",
    ] {
        if let Err(response) = rejection(&client, kind, base(kind)).await {
            panic!("the valid base {kind} was rejected: {}", response.message);
        }
    }

    let mut failures = Vec::new();
    let cases = invalid_cases();
    for case in &cases {
        let mut object = base(case.kind);
        for (pointer, value) in &case.changes {
            set(&mut object, pointer, value.clone());
        }
        drop_nulls(&mut object);
        match rejection(&client, case.kind, object).await {
            Ok(()) => failures.push(format!("{} ({}): accepted", case.what, case.kind)),
            Err(response) => {
                assert_eq!(response.code, 422, "{}: {}", case.what, response.message);
                // A private key pasted by mistake must not come back in the error, where
                // it would land in CI logs and audit trails.
                assert!(
                    !quotes_the_private_key(&response.message),
                    "{}: the rejection quotes the private key: {}",
                    case.what,
                    response.message
                );
                let missing: Vec<_> = case
                    .expected
                    .iter()
                    .filter(|e| !response.message.contains(**e))
                    .collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{} ({}): message lacks {missing:?}\n    got: {}",
                        case.what, case.kind, response.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Whether the API server accepts `object` of `resource` (a dry run); the rejection if not.
async fn dry_run(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    object: Value,
) -> Result<(), String> {
    let api: Api<DynamicObject> = match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api
        .create(&params, &serde_json::from_value(object).unwrap())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) => Err(response.message),
        Err(other) => panic!("request failed before reaching validation: {other}"),
    }
}

/// A remote-access rule becomes a NetworkPolicy only after the AccessPolicy is stored: a
/// source range or a port the NetworkPolicy refuses would leave the policy accepted and
/// never applied. So the schema must refuse exactly what a NetworkPolicy refuses, checked
/// here against the API server's own NetworkPolicy validation.
#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn the_schema_refuses_what_a_network_policy_would() {
    install_crds().await;
    let client = client().await;
    let network_policy = ApiResource::erase::<NetworkPolicy>(&());
    let sources = [
        "10.12.0.0/16",
        "10.12.0.5/16",
        "10.12.0.5/32",
        "0.0.0.0/0",
        "10.12.0.0/33",
        "10.012.0.0/16",
        "10.12.0.0/016",
        "2001:db8::/32",
        "2001:DB8::/32",
        "2001:db8::1/32",
        "2001:db8::1/128",
        "::ffff:10.12.0.0/112",
    ];
    let ports = [0, 1, 443, 65535, 65536];
    let candidates = sources
        .iter()
        .map(|source| (*source, 443))
        .chain(ports.iter().map(|port| ("10.12.0.0/16", *port)));

    let mut disagreements = Vec::new();
    let mut refused = 0;
    for (source, port) in candidates {
        let name = unique_name("np");
        let kubernetes = dry_run(
            &client,
            &network_policy,
            Some("default"),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": name},
                   "spec": {"podSelector": {},
                            "ingress": [{"from": [{"ipBlock": {"cidr": source}}],
                                         "ports": [{"protocol": "TCP", "port": port}]}]}}),
        )
        .await;
        let mut policy = base("AccessPolicy");
        policy["metadata"]["name"] = json!(name);
        policy["spec"]["remoteAccess"] = json!([{"name": "wan", "namespaces": ["default"],
                                                 "sourceCIDRs": [source], "ports": [port]}]);
        let ours = dry_run(&client, &resource("AccessPolicy"), None, policy).await;
        if kubernetes.is_err() {
            refused += 1;
        }
        if kubernetes.is_ok() != ours.is_ok() {
            disagreements.push(format!(
                "{source} port {port}: NetworkPolicy {kubernetes:?}, AccessPolicy {ours:?}"
            ));
        }
    }
    // Both outcomes must occur, or the comparison proves nothing.
    assert!(refused >= 8, "only {refused} candidates refused");
    assert!(
        disagreements.is_empty(),
        "the schema and the NetworkPolicy disagree:\n{}",
        disagreements.join("\n")
    );
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn rules_on_updates_are_enforced() {
    install_crds().await;
    let client = client().await;
    let params = PatchParams::default();

    // A Backup is what its manifest says it is: its spec is fixed at creation.
    let backups: Api<Backup> = Api::all(client.clone());
    let name = unique_name("immutable");
    let mut backup = base("Backup");
    backup["metadata"]["name"] = json!(name);
    backups
        .create(
            &PostParams::default(),
            &serde_json::from_value(backup).unwrap(),
        )
        .await
        .unwrap();
    let change = json!({"spec": {"store": "elsewhere"}});
    let error = backups
        .patch(&name, &params, &Patch::Merge(&change))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the spec of a Backup cannot change: create a new Backup"),
        "{error}"
    );
    backups.delete(&name, &Default::default()).await.unwrap();

    // An incident's mode cannot flip between drill and real, and a closed one stays closed.
    let incidents: Api<Incident> = Api::all(client.clone());
    let name = unique_name("incident");
    let mut incident = base("Incident");
    incident["metadata"]["name"] = json!(name);
    incidents
        .create(
            &PostParams::default(),
            &serde_json::from_value(incident).unwrap(),
        )
        .await
        .unwrap();
    let error = incidents
        .patch(
            &name,
            &params,
            &Patch::Merge(&json!({"spec": {"mode": "Drill"}})),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("spec.mode"), "{error}");
    assert!(
        error
            .to_string()
            .contains("mode cannot change once the incident exists"),
        "{error}"
    );
    incidents
        .patch(
            &name,
            &params,
            &Patch::Merge(&json!({"spec": {"state": "Closed"}})),
        )
        .await
        .expect("closing is allowed");
    let error = incidents
        .patch(
            &name,
            &params,
            &Patch::Merge(&json!({"spec": {"state": "Open"}})),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("spec.state"), "{error}");
    assert!(
        error
            .to_string()
            .contains("a closed incident cannot be reopened"),
        "{error}"
    );
    incidents.delete(&name, &Default::default()).await.unwrap();

    // Putting a policy into Lockdown is refused while a grant has no expiry: the
    // operator never sees such a policy.
    let policies: Api<AccessPolicy> = Api::all(client.clone());
    let name = unique_name("policy");
    let mut policy = base("AccessPolicy");
    policy["metadata"]["name"] = json!(name);
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();
    let error = policies
        .patch(
            &name,
            &params,
            &Patch::Merge(&json!({"spec": {"mode": "Lockdown"}})),
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("while mode is Lockdown every grant must have expiresAt"),
        "{error}"
    );
    policies.delete(&name, &Default::default()).await.unwrap();
}
