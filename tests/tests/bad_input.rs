//! The bad-input catalogue: malformed resources of every kind, each with the exact error a
//! user sees, and proof that nothing was created or lost because of it.
//!
//! What the API server can judge alone (schema, CEL) it rejects, and nothing is stored.
//! What needs the rest of the cluster (a cycle, a store or a plan that does not exist, a
//! time zone the schema cannot know) the operator reports in a condition; then the proof
//! checks what the object could have caused: no namespace or workload of a plan, no backup
//! data in a store, no binding of a policy while existing bindings stay as they were.
//! tests/tests/api_schema.rs holds more rejections, each asserting the field and the rule.
//!
//! Runs against the operator that tests/run.sh shares between the tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::future::join_all;
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{ConfigMap, Namespace, Secret},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, PostParams},
    core::ApiResource,
    runtime::wait::await_condition,
};
use resurgo::api::{AccessPolicy, Backup, BackupSchedule, BackupStore, Incident, RecoveryPlan};
use resurgo_tests::{apply, client, install_crds, kubectl_ok, unique_name};
use serde_json::{Value, json};

const RECIPIENT: &str = "age1tytq3s84pxk6dhmv8th5kz432h04nhylxaj48jpqyz9wrhfeps9secp5cy";

/// What the user sees.
#[derive(Clone, Debug, PartialEq)]
enum Error {
    /// The API server refuses the object with this message.
    Rejected(String),
    /// The operator accepts it and sets this condition (type, status, reason, message).
    Condition {
        type_: String,
        status: String,
        reason: String,
        message: String,
    },
}

/// What the object could have caused, and must not have.
#[derive(Clone, Copy, Debug)]
enum Proof {
    /// The API server did not store it.
    NotStored,
    /// The plan created no namespace and no object labelled with its name.
    NothingOfThePlan,
    /// The backup wrote nothing: no location, items or manifest, and no file in the store.
    NoBackupData,
    /// The schedule planned no run and created no Backup.
    NoScheduledRun,
    /// The store was never written to: a probe object would have been (it tests whether
    /// the credentials can delete), and `credentialsCanDelete` would be known.
    StoreNeverWritten,
    /// The policy made no binding, and a human RoleBinding that existed before is unchanged.
    NoBindingAndOthersIntact,
    /// The incident made no drill copy of any plan.
    NoDrillCopy,
}

/// One malformed resource.
struct Case {
    what: &'static str,
    /// The resource, built from this case's unique name.
    object: Value,
    error: Error,
    proof: Proof,
}

/// Names every case derives from, unique to this run: every Resurgo kind is cluster-scoped
/// and tests share one cluster.
struct Names {
    /// The name of the malformed object itself.
    name: String,
    /// A filesystem BackupStore that works, for the cases that need one.
    store: String,
    /// A namespace with a human RoleBinding in it, for the access cases.
    namespace: String,
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn rejected(message: impl Into<String>) -> Error {
    Error::Rejected(message.into())
}

fn stalled(reason: &str, message: impl Into<String>) -> Error {
    condition("Stalled", "True", reason, message)
}

fn condition(type_: &str, status: &str, reason: &str, message: impl Into<String>) -> Error {
    Error::Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
    }
}

fn service(name: &str, tier: &str, namespace: &str, depends_on: &[&str]) -> Value {
    json!({"name": name, "tier": tier, "namespace": namespace, "dependsOn": depends_on,
           "workload": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}]}})
}

fn plan(name: &str, tiers: &[&str], services: Vec<Value>) -> Value {
    let tiers: Vec<Value> = tiers
        .iter()
        .map(|t| json!({"name": t, "rto": "1h"}))
        .collect();
    object(
        "RecoveryPlan",
        name,
        json!({"tiers": tiers, "services": services}),
    )
}

fn schedule(name: &str, store: &str, changes: Value) -> Value {
    let mut spec = json!({
        "schedule": "30 2 * * *", "store": store, "include": {"namespaces": ["default"]},
        "encryption": {"recipients": [RECIPIENT]}, "retention": {"keepLast": 3}
    });
    merge(&mut spec, changes);
    object("BackupSchedule", name, spec)
}

fn backup(name: &str, store: &str, changes: Value) -> Value {
    let mut spec = json!({
        "store": store, "include": {"namespaces": ["default"]},
        "encryption": {"recipients": [RECIPIENT]}
    });
    merge(&mut spec, changes);
    object("Backup", name, spec)
}

fn grant(changes: Value) -> Value {
    let mut grant = json!({"name": "on-call", "subject": {"kind": "User", "name": "alice"},
                           "clusterRole": "view", "reason": "ticket 112"});
    merge(&mut grant, changes);
    grant
}

fn access_policy(name: &str, mode: &str, grants: Vec<Value>) -> Value {
    object(
        "AccessPolicy",
        name,
        json!({"mode": mode, "grants": grants}),
    )
}

/// Sets every key of `changes` in `target`; a null removes the key.
fn merge(target: &mut Value, changes: Value) {
    for (key, value) in changes.as_object().expect("changes are an object") {
        if value.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            target[key] = value.clone();
        }
    }
}

/// The catalogue, in the order of the issue: plans, stores, schedules, backups, access
/// policies, incidents.
fn catalogue(n: &Names) -> Vec<Case> {
    let name = n.name.as_str();
    let ns = |s: &str| format!("{name}-{s}");
    let store = n.store.as_str();
    let mut cases = Vec::new();
    let mut add = |what, object, error, proof| {
        cases.push(Case {
            what,
            object,
            error,
            proof,
        })
    };

    // ---- RecoveryPlan
    add(
        "two services that depend on each other",
        plan(
            name,
            &["clinical"],
            vec![
                service("records", "clinical", &ns("records"), &["lab"]),
                service("lab", "clinical", &ns("lab"), &["records"]),
            ],
        ),
        stalled(
            "InvalidPlan",
            "spec.services[0].dependsOn[0], spec.services[1].dependsOn[0]: dependency cycle records -> lab -> records (each service depends on the next), so none of them can ever start; remove one of these dependencies",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a cycle through three services",
        plan(
            name,
            &["clinical"],
            vec![
                service("records", "clinical", &ns("records"), &["radiology"]),
                service("lab", "clinical", &ns("lab"), &["records"]),
                service("radiology", "clinical", &ns("radiology"), &["lab"]),
            ],
        ),
        stalled(
            "InvalidPlan",
            "spec.services[0].dependsOn[0], spec.services[2].dependsOn[0], spec.services[1].dependsOn[0]: dependency cycle records -> radiology -> lab -> records (each service depends on the next), so none of them can ever start; remove one of these dependencies",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a dependency on a service the plan does not have",
        plan(
            name,
            &["clinical"],
            vec![service("records", "clinical", &ns("records"), &["billing"])],
        ),
        stalled(
            "InvalidPlan",
            "spec.services[0].dependsOn[0]: service `records` depends on `billing`, but no service of the plan is named `billing`",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a dependency on a service of a later tier",
        plan(
            name,
            &["life-critical", "clinical"],
            vec![
                service("dispatch", "life-critical", &ns("dispatch"), &["records"]),
                service("records", "clinical", &ns("records"), &[]),
            ],
        ),
        stalled(
            "InvalidPlan",
            "spec.services[0].dependsOn[0]: service `dispatch` of tier `life-critical` depends on `records` of the later tier `clinical`; a service may only depend on services of its own or an earlier tier, so move `records` to tier `life-critical` or earlier, or drop the dependency",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a tier without services",
        plan(
            name,
            &["life-critical", "clinical"],
            vec![service("dispatch", "life-critical", &ns("dispatch"), &[])],
        ),
        stalled(
            "InvalidPlan",
            "spec.tiers[1]: tier `clinical` has no services; give it at least one or remove the tier",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "an unknown dependency and a later-tier one at once: both reported",
        plan(
            name,
            &["life-critical", "clinical"],
            vec![
                service("dispatch", "life-critical", &ns("dispatch"), &["records"]),
                service("records", "clinical", &ns("records"), &["billing"]),
            ],
        ),
        stalled(
            "InvalidPlan",
            "spec.services[0].dependsOn[0]: service `dispatch` of tier `life-critical` depends on `records` of the later tier `clinical`; a service may only depend on services of its own or an earlier tier, so move `records` to tier `life-critical` or earlier, or drop the dependency; spec.services[1].dependsOn[0]: service `records` depends on `billing`, but no service of the plan is named `billing`",
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a workload restored from a backup whose identity Secret does not exist",
        plan(
            name,
            &["clinical"],
            vec![
                json!({"name": "records", "tier": "clinical", "namespace": ns("records"),
                        "workload": {"fromBackup": {"identitySecretRef": {"name": format!("{name}-absent"), "namespace": "default"}}}}),
            ],
        ),
        stalled(
            "ServiceFailed",
            format!(
                "records: spec.services[0].workload.fromBackup: identity Secret default/{name}-absent not found"
            ),
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a workload read from a ConfigMap that does not exist",
        plan(
            name,
            &["clinical"],
            vec![
                json!({"name": "records", "tier": "clinical", "namespace": ns("records"),
                        "workload": {"configMapRef": {"name": format!("{name}-absent"), "namespace": "default"}}}),
            ],
        ),
        stalled(
            "ServiceFailed",
            format!(
                "records: spec.services[0].workload.configMapRef: ConfigMap default/{name}-absent not found"
            ),
        ),
        Proof::NothingOfThePlan,
    );
    add(
        "a service that depends on itself",
        plan(
            name,
            &["clinical"],
            vec![service("records", "clinical", &ns("records"), &["records"])],
        ),
        rejected(format!(
            "RecoveryPlan.resurgo.dev \"{name}\" is invalid: spec.services[0].dependsOn: Invalid value: a service cannot depend on itself"
        )),
        Proof::NotStored,
    );
    add(
        "a service in a tier the plan does not have",
        plan(
            name,
            &["clinical"],
            vec![service("records", "booking", &ns("records"), &[])],
        ),
        rejected(format!(
            "RecoveryPlan.resurgo.dev \"{name}\" is invalid: spec.services: Invalid value: every service's tier must be the name of one of spec.tiers"
        )),
        Proof::NotStored,
    );
    add(
        "an oversized plan: 1,001 services",
        plan(
            name,
            &["clinical"],
            (0..1001)
                .map(|i| service(&format!("s{i}"), "clinical", &ns("big"), &[]))
                .collect(),
        ),
        rejected(format!(
            "RecoveryPlan.resurgo.dev \"{name}\" is invalid: [spec.services: Too many: 1001: must have at most 1000 items, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );
    add(
        "an oversized plan: 17 tiers",
        plan(
            name,
            &[
                "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12",
                "t13", "t14", "t15", "t16",
            ],
            vec![service("records", "t0", &ns("records"), &[])],
        ),
        rejected(format!(
            "RecoveryPlan.resurgo.dev \"{name}\" is invalid: [spec.tiers: Too many: 17: must have at most 16 items, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );

    // ---- BackupStore
    add(
        "an S3 store whose credentials Secret does not exist",
        object(
            "BackupStore",
            name,
            json!({"s3": {"bucket": "backups", "endpoint": "https://s3.example",
                          "credentialsSecretRef": {"name": format!("{name}-absent"), "namespace": "default"}}}),
        ),
        condition(
            "Ready",
            "False",
            "Unreachable",
            format!("credentials Secret default/{name}-absent not found"),
        ),
        Proof::StoreNeverWritten,
    );
    add(
        "a store on plain http",
        object(
            "BackupStore",
            name,
            json!({"s3": {"bucket": "backups", "endpoint": "http://s3.example",
                          "credentialsSecretRef": {"name": "creds", "namespace": "default"}}}),
        ),
        rejected(format!(
            "BackupStore.resurgo.dev \"{name}\" is invalid: spec.s3.endpoint: Invalid value: the endpoint uses plain http: backups and credentials would cross the network unencrypted; use https, or set allowInsecureHttp for a loopback test store"
        )),
        Proof::NotStored,
    );
    add(
        "a relative filesystem path",
        object(
            "BackupStore",
            name,
            json!({"filesystem": {"path": "backups"}}),
        ),
        rejected(format!(
            "BackupStore.resurgo.dev \"{name}\" is invalid: spec.filesystem.path: Invalid value: \"backups\": must be an absolute path"
        )),
        Proof::NotStored,
    );

    // ---- BackupSchedule
    add(
        "a time zone that looks right but does not exist",
        schedule(name, store, json!({"timeZone": "Europe/Atlantis"})),
        stalled(
            "InvalidSchedule",
            "spec.timeZone: unknown time zone \"Europe/Atlantis\"; use an IANA name such as Europe/Rome or UTC",
        ),
        Proof::NoScheduledRun,
    );
    add(
        "a store that does not exist",
        schedule(name, &format!("{name}-nowhere"), json!({})),
        condition(
            "Ready",
            "False",
            "StoreNotFound",
            format!(
                "spec.store: BackupStore {name}-nowhere not found: no backup is planned until it exists"
            ),
        ),
        Proof::NoScheduledRun,
    );
    add(
        "a cron that never fires (30 February)",
        schedule(name, store, json!({"schedule": "0 0 30 2 *"})),
        stalled(
            "InvalidSchedule",
            "spec.schedule: cron expression \"0 0 30 2 *\" never fires (no such date, such as 30 February?): CronScheduler time search limit exceeded.",
        ),
        Proof::NoScheduledRun,
    );
    add(
        "a cron with four fields",
        schedule(name, store, json!({"schedule": "0 2 * *"})),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.schedule: Invalid value: \"0 2 * *\": must be a cron expression with five fields (minute hour day-of-month month day-of-week), such as '30 2 * * *', or @hourly, @daily, @weekly, @monthly"
        )),
        Proof::NotStored,
    );
    add(
        "a cron in prose",
        schedule(name, store, json!({"schedule": "every night at two"})),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.schedule: Invalid value: \"every night at two\": must be a cron expression with five fields (minute hour day-of-month month day-of-week), such as '30 2 * * *', or @hourly, @daily, @weekly, @monthly"
        )),
        Proof::NotStored,
    );
    add(
        "a time zone that is not an IANA name",
        schedule(name, store, json!({"timeZone": "CET+1"})),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.timeZone: Invalid value: \"CET+1\": must be an IANA time zone name such as Europe/Rome or UTC"
        )),
        Proof::NotStored,
    );
    add(
        "an age private key pasted as a recipient",
        schedule(
            name,
            store,
            json!({"encryption": {"recipients": ["AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"]}}),
        ),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.encryption.recipients[0]: Forbidden: this is an age private key: put only the public key (age1...) here; the private key must never enter the cluster"
        )),
        Proof::NotStored,
    );
    add(
        "an age private key in lower case after '# ' as a recipient",
        schedule(
            name,
            store,
            json!({"encryption": {"recipients": ["# age-secret-key-1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"]}}),
        ),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.encryption.recipients[0]: Forbidden: this is an age private key: put only the public key (age1...) here; the private key must never enter the cluster"
        )),
        Proof::NotStored,
    );
    add(
        "retention that keeps nothing",
        schedule(name, store, json!({"retention": {"keepLast": 0}})),
        rejected(format!(
            "BackupSchedule.resurgo.dev \"{name}\" is invalid: spec.retention: Invalid value: retention must keep at least one backup: set keepLast, keepDaily, keepWeekly or keepMonthly"
        )),
        Proof::NotStored,
    );

    // ---- Backup
    add(
        "a backup to a store that does not exist",
        backup(name, &format!("{name}-nowhere"), json!({})),
        condition(
            "Completed",
            "False",
            "Failed",
            format!("BackupStore {name}-nowhere not found"),
        ),
        Proof::NoBackupData,
    );
    add(
        "immutability required of a filesystem store",
        backup(
            name,
            store,
            json!({"immutability": {"period": "720h", "required": true}}),
        ),
        condition(
            "Completed",
            "False",
            "Failed",
            format!(
                "immutability is required, but BackupStore {store} has no object lock (a filesystem store cannot lock objects): refusing to write a backup that an attacker could delete"
            ),
        ),
        Proof::NoBackupData,
    );
    add(
        "a data dump to a filesystem store, which a Job cannot upload to",
        backup(
            name,
            store,
            json!({"dataDumps": [{"namespace": "default", "name": "dump",
                                  "spec": {"template": {"spec": {"restartPolicy": "Never",
                                      "containers": [{"name": "dump", "image": "registry.example/dump:1"}]}}}}]}),
        ),
        condition(
            "Completed",
            "False",
            "Failed",
            format!(
                "spec.dataDumps needs an S3 BackupStore, and {store} is a filesystem store: a data-dump Job runs in a pod of its own and uploads with a pre-signed URL, which a directory of the operator's cannot give; use an S3 store, or remove spec.dataDumps"
            ),
        ),
        Proof::NoBackupData,
    );
    add(
        "a backup without a store",
        backup(name, store, json!({"store": null})),
        rejected(format!(
            "Backup.resurgo.dev \"{name}\" is invalid: [spec.store: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );
    add(
        "a backup without recipients",
        backup(name, store, json!({"encryption": {"recipients": []}})),
        rejected(format!(
            "Backup.resurgo.dev \"{name}\" is invalid: spec.encryption.recipients: Invalid value: 0: spec.encryption.recipients in body should have at least 1 items"
        )),
        Proof::NotStored,
    );

    // ---- AccessPolicy
    add(
        "a grant into a namespace that does not exist",
        access_policy(
            name,
            "Normal",
            vec![grant(json!({"namespaces": [format!("{name}-absent")]}))],
        ),
        stalled(
            "NamespaceNotFound",
            format!(
                "namespaces {name}-absent do not exist: the grants and remote-access rules there wait for them"
            ),
        ),
        Proof::NoBindingAndOthersIntact,
    );
    add(
        "a grant that expired before it was applied",
        access_policy(
            name,
            "Normal",
            vec![grant(
                json!({"namespaces": [n.namespace], "expiresAt": "2021-08-01T00:00:00Z"}),
            )],
        ),
        condition(
            "Ready",
            "True",
            "Applied",
            "0 grants in force (expired: on-call at 2021-08-01T00:00:00Z); no binding suspended",
        ),
        Proof::NoBindingAndOthersIntact,
    );
    add(
        "a grant without expiry in Lockdown",
        access_policy(name, "Lockdown", vec![grant(json!({}))]),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: spec.grants: Required value: while mode is Lockdown every grant must have expiresAt"
        )),
        Proof::NotStored,
    );
    add(
        "an unknown subject kind",
        access_policy(
            name,
            "Normal",
            vec![grant(json!({"subject": {"kind": "Robot", "name": "r2"}}))],
        ),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: [spec.grants[0].subject.kind: Unsupported value: \"Robot\": supported values: \"User\", \"Group\", \"ServiceAccount\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );
    add(
        "a ServiceAccount subject without a namespace",
        access_policy(
            name,
            "Normal",
            vec![grant(
                json!({"subject": {"kind": "ServiceAccount", "name": "ci"}}),
            )],
        ),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: spec.grants[0].subject.namespace: Invalid value: a ServiceAccount subject needs a namespace; a User or Group must not have one"
        )),
        Proof::NotStored,
    );
    add(
        "an expiry that is not a timestamp",
        access_policy(
            name,
            "Normal",
            vec![grant(json!({"expiresAt": "tomorrow at noon"}))],
        ),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: [spec.grants[0].expiresAt: Invalid value: \"tomorrow at noon\": spec.grants[0].expiresAt in body must be of type date-time: \"tomorrow at noon\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );

    add(
        "remote access on port 0",
        object(
            "AccessPolicy",
            name,
            json!({"remoteAccess": [{"name": "vpn", "namespaces": [n.namespace],
                                     "sourceCIDRs": ["10.12.0.0/16"], "ports": [0]}]}),
        ),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: spec.remoteAccess[0].ports[0]: Invalid value: 0: spec.remoteAccess[0].ports[0] in body should be greater than or equal to 1"
        )),
        Proof::NotStored,
    );
    add(
        "remote access from a source range with host bits",
        object(
            "AccessPolicy",
            name,
            json!({"remoteAccess": [{"name": "vpn", "namespaces": [n.namespace],
                                     "sourceCIDRs": ["10.12.0.5/16"]}]}),
        ),
        rejected(format!(
            "AccessPolicy.resurgo.dev \"{name}\" is invalid: spec.remoteAccess[0].sourceCIDRs: Invalid value: every entry must be a network address with no bit set after the prefix length, such as 10.12.0.0/16 (not 10.12.0.5/16) or 2001:db8::/32; a single host is 10.12.0.5/32"
        )),
        Proof::NotStored,
    );

    // ---- Incident (drills and unknown policies only: a real lockdown would suspend the
    // bindings of every other test running now)
    add(
        "a drill of a plan that does not exist",
        object(
            "Incident",
            name,
            json!({"mode": "Drill", "compromisedSince": "2021-07-31T23:00:00Z",
                   "recoveryPlans": [format!("{name}-absent")]}),
        ),
        stalled(
            "ReferenceNotFound",
            format!(
                "ChooseRestorePoints: spec.recoveryPlans: recoveryplan {name}-absent does not exist"
            ),
        ),
        Proof::NoDrillCopy,
    );
    add(
        "a lockdown of an access policy that does not exist",
        object(
            "Incident",
            name,
            json!({"compromisedSince": "2021-07-31T23:00:00Z",
                   "accessPolicies": [format!("{name}-absent")]}),
        ),
        stalled(
            "ReferenceNotFound",
            format!("Lockdown: spec.accessPolicies: accesspolicy {name}-absent does not exist"),
        ),
        Proof::NoDrillCopy,
    );
    add(
        "a named restore point without the backup's name",
        object(
            "Incident",
            name,
            json!({"compromisedSince": "2021-07-31T23:00:00Z", "recoveryPlans": ["p"],
                   "restorePoint": {"rule": "Named"}}),
        ),
        rejected(format!(
            "Incident.resurgo.dev \"{name}\" is invalid: spec.restorePoint.backup: Invalid value: backup is required when rule is Named, and only then"
        )),
        Proof::NotStored,
    );
    add(
        "an incident without compromisedSince",
        object("Incident", name, json!({"recoveryPlans": ["p"]})),
        rejected(format!(
            "Incident.resurgo.dev \"{name}\" is invalid: [spec.compromisedSince: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
        )),
        Proof::NotStored,
    );
    add(
        "an incident that names nothing to do",
        object(
            "Incident",
            name,
            json!({"compromisedSince": "2021-07-31T23:00:00Z"}),
        ),
        rejected(format!(
            "Incident.resurgo.dev \"{name}\" is invalid: spec: Invalid value: an incident must name at least one of accessPolicies, recoveryPlans or invalidateServiceAccountTokens"
        )),
        Proof::NotStored,
    );
    cases
}

fn resource_of(kind: &str) -> ApiResource {
    match kind {
        "RecoveryPlan" => ApiResource::erase::<RecoveryPlan>(&()),
        "BackupStore" => ApiResource::erase::<BackupStore>(&()),
        "BackupSchedule" => ApiResource::erase::<BackupSchedule>(&()),
        "Backup" => ApiResource::erase::<Backup>(&()),
        "AccessPolicy" => ApiResource::erase::<AccessPolicy>(&()),
        "Incident" => ApiResource::erase::<Incident>(&()),
        other => panic!("no kind {other}"),
    }
}

/// The condition `type_` of a Resurgo object, as (status, reason, message).
fn read_condition(object: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
}

/// Creates the case's object and returns what the user sees: the rejection, or the
/// condition the case expects once the operator has written it for this generation (or
/// what the condition says after 60 s).
async fn outcome(client: &Client, case: &Case) -> Error {
    let kind = case.object["kind"].as_str().unwrap();
    let name = case.object["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_of(kind));
    let object: DynamicObject = serde_json::from_value(case.object.clone()).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(status)) => return Error::Rejected(status.message),
        Err(other) => panic!("{}: create failed before validation: {other}", case.what),
        Ok(_) => {}
    }
    let Error::Condition {
        type_,
        status,
        reason,
        ..
    } = &case.error
    else {
        // A rejection was expected, and the API server stored the object instead.
        return Error::Rejected(format!("accepted: {kind}/{name} was created"));
    };
    let settled = |object: Option<&DynamicObject>| {
        object.is_some_and(|o| {
            // Backups carry no observedGeneration: their spec never changes.
            let current = o.data["status"]["observedGeneration"]
                .as_i64()
                .is_none_or(|g| Some(g) == o.metadata.generation);
            current
                && read_condition(o, type_).is_some_and(|(s, r, _)| s == *status && r == *reason)
        })
    };
    let seen = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), &name, settled),
    )
    .await;
    let object = match seen {
        Ok(Ok(Some(object))) => object,
        _ => api.get(&name).await.unwrap(),
    };
    match read_condition(&object, type_) {
        Some((status, reason, message)) => Error::Condition {
            type_: type_.clone(),
            status,
            reason,
            message,
        },
        None => Error::Rejected(format!(
            "accepted, and no {type_} condition after 60 s: {}",
            object.data["status"]
        )),
    }
}

/// Checks the case's proof; returns what it found wrong.
async fn disproof(client: &Client, case: &Case, n: &Names, before: &Before) -> Vec<String> {
    let kind = case.object["kind"].as_str().unwrap();
    let name = case.object["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_of(kind));
    let mut wrong = Vec::new();
    match case.proof {
        Proof::NotStored => {
            if api.get_opt(name).await.unwrap().is_some() {
                wrong.push(format!("{kind}/{name} is stored"));
            }
        }
        Proof::NothingOfThePlan => {
            let labelled = format!("resurgo.dev/plan={name}");
            let kinds = [
                ApiResource::erase::<Namespace>(&()),
                ApiResource::erase::<Deployment>(&()),
                ApiResource::erase::<Job>(&()),
                ApiResource::erase::<ConfigMap>(&()),
                ApiResource::erase::<Secret>(&()),
                ApiResource::erase::<NetworkPolicy>(&()),
            ];
            for resource in kinds {
                let found = Api::<DynamicObject>::all_with(client.clone(), &resource)
                    .list(&ListParams::default().labels(&labelled))
                    .await
                    .unwrap();
                for object in found.items {
                    wrong.push(format!(
                        "{} {} was created",
                        resource.kind,
                        object.name_any()
                    ));
                }
            }
            let namespaces: Api<Namespace> = Api::all(client.clone());
            for service in case.object["spec"]["services"].as_array().unwrap() {
                let namespace = service["namespace"].as_str().unwrap();
                if namespaces.get_opt(namespace).await.unwrap().is_some() {
                    wrong.push(format!("namespace {namespace} exists"));
                }
            }
        }
        Proof::NoBackupData => {
            let object = api.get(name).await.unwrap();
            for field in ["location", "items", "bytes", "manifestSha256", "completed"] {
                if !object.data["status"][field].is_null() {
                    wrong.push(format!(
                        "status.{field} is {}",
                        object.data["status"][field]
                    ));
                }
            }
            let files = store_files(&before.store_dir);
            if !files.is_empty() {
                wrong.push(format!("the store holds more than its probes: {files:?}"));
            }
        }
        Proof::NoScheduledRun => {
            let object = api.get(name).await.unwrap();
            if !object.data["status"]["nextRun"].is_null() {
                wrong.push(format!(
                    "status.nextRun is {}",
                    object.data["status"]["nextRun"]
                ));
            }
            let backups: Api<Backup> = Api::all(client.clone());
            let made = backups
                .list(&ListParams::default().labels(&format!("resurgo.dev/schedule={name}")))
                .await
                .unwrap();
            for backup in made.items {
                wrong.push(format!("backup {} was created", backup.name_any()));
            }
        }
        Proof::StoreNeverWritten => {
            let object = api.get(name).await.unwrap();
            if !object.data["status"]["credentialsCanDelete"].is_null() {
                wrong.push(format!(
                    "status.credentialsCanDelete is {}: a probe object was written",
                    object.data["status"]["credentialsCanDelete"]
                ));
            }
        }
        Proof::NoBindingAndOthersIntact => {
            let labelled = format!("resurgo.dev/access-policy={name}");
            let role_bindings: Api<RoleBinding> = Api::all(client.clone());
            let cluster_role_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
            let made = role_bindings
                .list(&ListParams::default().labels(&labelled))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|b| b.name_any())
                .chain(
                    cluster_role_bindings
                        .list(&ListParams::default().labels(&labelled))
                        .await
                        .unwrap()
                        .items
                        .into_iter()
                        .map(|b| b.name_any()),
                );
            for binding in made {
                wrong.push(format!("binding {binding} was created"));
            }
            let human: Api<RoleBinding> = Api::namespaced(client.clone(), &n.namespace);
            let now = human.get("night-shift").await.unwrap();
            let identity = (now.uid(), now.resource_version());
            if identity != before.human_binding {
                wrong.push(format!(
                    "the human RoleBinding night-shift changed: {identity:?}, was {:?}",
                    before.human_binding
                ));
            }
        }
        Proof::NoDrillCopy => {
            let plans: Api<RecoveryPlan> = Api::all(client.clone());
            let copies = plans
                .list(&ListParams::default().labels(&format!("resurgo.dev/incident={name}")))
                .await
                .unwrap();
            for copy in copies.items {
                wrong.push(format!("recoveryplan {} was created", copy.name_any()));
            }
        }
    }
    wrong
}

/// What existed before the catalogue ran, for the proofs.
struct Before {
    /// uid and resourceVersion of the human RoleBinding in `Names::namespace`.
    human_binding: (Option<String>, Option<String>),
    /// The directory of the working filesystem store.
    store_dir: PathBuf,
}

/// Files in the store directory other than the probe objects the operator writes to test
/// the store.
fn store_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                if !relative.starts_with("probes/") {
                    out.push(relative);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn every_malformed_resource_gets_its_exact_error_and_changes_nothing() {
    install_crds().await;
    let client = client().await;

    // A working filesystem store and a namespace with a human binding, that the malformed
    // objects could write to or disturb.
    let store = unique_name("bad-input-store");
    let base = std::env::var_os("RESURGO_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let store_dir = base.join(&store);
    std::fs::create_dir_all(&store_dir).unwrap();
    apply(
        &object(
            "BackupStore",
            &store,
            json!({"filesystem": {"path": store_dir.display().to_string()}}),
        )
        .to_string(),
    );
    let namespace = unique_name("bad-input");
    kubectl_ok(&["create", "namespace", &namespace], None).unwrap();
    kubectl_ok(
        &[
            "-n",
            &namespace,
            "create",
            "rolebinding",
            "night-shift",
            "--clusterrole=edit",
            "--user=bob",
        ],
        None,
    )
    .unwrap();
    let human: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
    let binding = human.get("night-shift").await.unwrap();
    let before = Before {
        human_binding: (binding.uid(), binding.resource_version()),
        store_dir,
    };

    // Every case is built with its own name, then all run at once: the operator reports
    // each within a second, and the waits overlap instead of adding up.
    let cases: Vec<(Names, Case)> = (0..)
        .map_while(|i| {
            let names = Names {
                name: unique_name("bad"),
                store: store.clone(),
                namespace: namespace.clone(),
            };
            let case = catalogue(&names).into_iter().nth(i)?;
            Some((names, case))
        })
        .collect();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let kinds: std::collections::BTreeSet<&str> = cases
        .iter()
        .map(|(_, c)| c.object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 6, "the catalogue covers only {kinds:?}");

    let outcomes = join_all(cases.iter().map(|(_, case)| outcome(&client, case))).await;
    let mut failures = Vec::new();
    for ((names, case), seen) in cases.iter().zip(outcomes) {
        let expected = case.error.clone();
        if seen != expected {
            failures.push(format!(
                "{} ({}):\n    expected {expected:?}\n    got      {seen:?}",
                case.what, case.object["kind"]
            ));
        }
        for wrong in disproof(&client, case, names, &before).await {
            failures.push(format!("{} ({}): {wrong}", case.what, case.object["kind"]));
        }
    }
    // Nothing left behind: an Incident left Open would freeze backup pruning for every test
    // that runs after this one. Rejected objects were never stored (404).
    for (_, case) in &cases {
        let kind = case.object["kind"].as_str().unwrap();
        let name = case.object["metadata"]["name"].as_str().unwrap();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_of(kind));
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(other) => failures.push(format!("{kind}/{name}: cleaning up failed: {other}")),
        }
    }
    let by_kind: BTreeMap<&str, usize> = cases.iter().fold(BTreeMap::new(), |mut m, (_, c)| {
        *m.entry(c.object["kind"].as_str().unwrap()).or_default() += 1;
        m
    });
    eprintln!("[bad-input] {} cases: {by_kind:?}", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
