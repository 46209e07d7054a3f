//! Backups that survive ransomware, on the real control plane with the operator that
//! tests/run.sh runs, and on a second, fresh cluster with an operator of its own: what is
//! backed up in one cluster is restored in the other equal to the original, a tampered,
//! truncated or re-encrypted backup is never used, and retention keeps what it promises.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{wait::await_condition, watcher},
};
use resurgo::{
    api::backup::{Backup, BackupPhase, BackupStatus},
    backup::{archive, selection},
};
use resurgo_tests::{
    backup_finished, client, install_crds, k8s_bin, kubectl_ok, minio, repo_root, unique_name,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// A directory for a filesystem BackupStore; the operator runs on this machine.
fn store_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resurgo-store-{name}"));
    std::fs::create_dir_all(&dir).expect("create the store directory");
    dir
}

fn apply_to(kubeconfig: Option<&Path>, manifest: &Value) {
    let mut args = vec![];
    let flag;
    if let Some(path) = kubeconfig {
        flag = format!("--kubeconfig={}", path.display());
        args.push(flag.as_str());
    }
    args.extend([
        "apply",
        "--server-side",
        "--field-manager=resurgo-tests",
        "-f",
        "-",
    ]);
    kubectl_ok(&args, Some(&manifest.to_string())).expect("apply");
}

fn apply(manifest: &Value) {
    apply_to(None, manifest)
}

/// The objects of a small clinical service: what a backup must bring back.
fn clinical_objects(namespace: &str, version: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": namespace, "labels": {"app": "records"}},
               "data": {"mode": "clinical", "retention": "10y"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "version", "namespace": namespace}, "data": {"version": version}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": namespace}, "stringData": {"cert": "CERT", "key": "KEY"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "records", "namespace": namespace}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "records", "namespace": namespace, "annotations": {"team": "clinical"}},
               "spec": {"selector": {"app": "records"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "records", "namespace": namespace, "labels": {"app": "records"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "records"}},
                        "template": {"metadata": {"labels": {"app": "records"}}, "spec": {
                            "serviceAccountName": "records",
                            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [{"name": "main", "image": "registry.example/records:7",
                                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}}}),
    ]
}

fn store_manifest(name: &str, dir: &Path) -> Value {
    json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore", "metadata": {"name": name},
           "spec": {"filesystem": {"path": dir.to_str().unwrap()}}})
}

fn backup_manifest(name: &str, store: &str, namespace: &str, recipient: &str) -> Value {
    json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
           "spec": {"store": store, "include": {"namespaces": [namespace]},
                    "encryption": {"recipients": [recipient]}}})
}

/// Waits for the Backup to finish and returns its status.
async fn finished(client: &Client, name: &str) -> BackupStatus {
    backup_finished(client, name, Duration::from_secs(60)).await
}

async fn completed(client: &Client, name: &str) -> BackupStatus {
    let status = finished(client, name).await;
    assert_eq!(
        status.phase,
        Some(BackupPhase::Completed),
        "Backup {name}: {status:?}"
    );
    status
}

/// A second cluster with an operator of its own, torn down on drop.
struct FreshCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    operator: Option<Child>,
    operator_log: PathBuf,
}

impl FreshCluster {
    fn up(name: &str) -> Self {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("resurgo-fresh-{name}"));
        let output = Command::new(repo_root().join("tests/cluster/up.sh"))
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run up.sh");
        assert!(output.status.success(), "the second cluster did not start");
        let kubeconfig = dir.join("kubeconfig");
        let operator_log = std::env::temp_dir().join(format!("resurgo-fresh-{name}-operator.log"));
        FreshCluster {
            dir,
            kubeconfig,
            operator: None,
            operator_log,
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let flag = format!("--kubeconfig={}", self.kubeconfig.display());
        let mut all = vec![flag.as_str()];
        all.extend_from_slice(args);
        kubectl_ok(&all, stdin).expect("kubectl on the second cluster")
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("client config");
        Client::try_from(config).expect("client of the second cluster")
    }

    fn start_operator(&mut self) {
        let log = std::fs::File::create(&self.operator_log).expect("operator log");
        let child = Command::new(repo_root().join("target/debug/resurgo"))
            .arg("run")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "warn,resurgo=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the second operator");
        self.operator = Some(child);
    }

    fn operator_log(&self) -> String {
        std::fs::read_to_string(&self.operator_log).unwrap_or_default()
    }
}

impl Drop for FreshCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(repo_root().join("tests/cluster/down.sh"))
            .arg(&self.dir)
            .status();
        // Kept when the test failed, for its operator's side of the story.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.operator_log);
        }
    }
}

async fn get<K>(client: &Client, namespace: &str, name: &str) -> Value
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let object = Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|error| panic!("{} {namespace}/{name}: {error}", K::kind(&())));
    let mut value = serde_json::to_value(object).unwrap();
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    value
}

/// An object as a restore should reproduce it: without server-set fields, and without the
/// labels the recovery adds to mark what it created.
fn comparable(object: Value) -> Value {
    let mut object = selection::clean(object);
    if let Some(labels) = object
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.retain(|key, _| {
            !key.starts_with("resurgo.dev/") && key != "app.kubernetes.io/managed-by"
        });
        if labels.is_empty() {
            object["metadata"].as_object_mut().unwrap().remove("labels");
        }
    }
    object
}

async fn the_clinical_objects(client: &Client, namespace: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (
            "ConfigMap/settings".into(),
            get::<ConfigMap>(client, namespace, "settings").await,
        ),
        (
            "ConfigMap/version".into(),
            get::<ConfigMap>(client, namespace, "version").await,
        ),
        (
            "Secret/tls".into(),
            get::<Secret>(client, namespace, "tls").await,
        ),
        (
            "ServiceAccount/records".into(),
            get::<ServiceAccount>(client, namespace, "records").await,
        ),
        (
            "Service/records".into(),
            get::<Service>(client, namespace, "records").await,
        ),
        (
            "Deployment/records".into(),
            get::<Deployment>(client, namespace, "records").await,
        ),
    ])
    .into_iter()
    .map(|(key, value)| (key, comparable(value)))
    .collect()
}

fn read_store(dir: &Path, backup: &str, file: &str) -> Vec<u8> {
    std::fs::read(dir.join("backups").join(backup).join(file)).expect("read the stored backup")
}

fn write_store(dir: &Path, backup: &str, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join("backups").join(backup).join(file), bytes)
        .expect("tamper with the stored backup");
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn backups_restore_into_a_fresh_cluster_and_tampered_ones_are_never_used() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("bk");
    let namespace = format!("{name}-clinical");
    let dir = store_dir(&name);
    let (identity, recipient) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));

    // Four backups of the same namespace; only the `version` ConfigMap changes between them.
    let mut originals = BTreeMap::new();
    let mut statuses = Vec::new();
    let backups: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|suffix| format!("{name}-{suffix}"))
        .collect();
    for (index, backup) in backups.iter().enumerate() {
        for object in clinical_objects(&namespace, &format!("v{}", index + 1)) {
            apply(&object);
        }
        if index == 0 {
            originals = the_clinical_objects(&client, &namespace).await;
        }
        apply(&backup_manifest(backup, &store, &namespace, &recipient));
        let status = completed(&client, backup).await;
        // What the Backup records matches what is in the store.
        assert_eq!(
            status.manifest_sha256.as_deref(),
            Some(archive::sha256_hex(&read_store(&dir, backup, archive::MANIFEST)).as_str())
        );
        statuses.push(status);
    }
    let first = &statuses[0];
    // settings, version, tls, records ServiceAccount, Service, Deployment: not the
    // ReplicaSet, Pods, default ServiceAccount or kube-root-ca.crt.
    assert_eq!(first.items, Some(6), "{first:?}");
    let manifest: archive::Manifest =
        serde_json::from_slice(&read_store(&dir, &backups[0], archive::MANIFEST)).unwrap();
    let mut kinds: Vec<_> = manifest.entries.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    // Encrypted: the Secret's value is not in the store in clear.
    let stored = read_store(&dir, &backups[0], archive::OBJECTS);
    assert!(!String::from_utf8_lossy(&stored).contains("Q0VSVA"));

    // The attack: b has a flipped byte, c lost an object, d was re-encrypted to the
    // attacker's key with a manifest (and a recorded hash) to match.
    let mut flipped = read_store(&dir, &backups[1], archive::OBJECTS);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    write_store(&dir, &backups[1], archive::OBJECTS, &flipped);

    let plaintext =
        archive::decrypt(&read_store(&dir, &backups[2], archive::OBJECTS), &identity).unwrap();
    let first_line = plaintext.iter().position(|b| *b == b'\n').unwrap();
    let dropped = archive::encrypt_to(&plaintext[first_line + 1..], &recipient).unwrap();
    write_store(&dir, &backups[2], archive::OBJECTS, &dropped);

    let (_, attacker) = archive::generate_identity();
    let plaintext =
        archive::decrypt(&read_store(&dir, &backups[3], archive::OBJECTS), &identity).unwrap();
    let reencrypted = archive::encrypt_to(&plaintext, &attacker).unwrap();
    let mut forged: archive::Manifest =
        serde_json::from_slice(&read_store(&dir, &backups[3], archive::MANIFEST)).unwrap();
    forged.ciphertext_sha256 = archive::sha256_hex(&reencrypted);
    forged.ciphertext_bytes = reencrypted.len() as u64;
    let forged_bytes = serde_json::to_vec(&forged).unwrap();
    write_store(&dir, &backups[3], archive::OBJECTS, &reencrypted);
    write_store(&dir, &backups[3], archive::MANIFEST, &forged_bytes);
    statuses[3].manifest_sha256 = Some(archive::sha256_hex(&forged_bytes));

    // A fresh cluster: the store, the Backup records (with their status: it holds the
    // manifest hashes), the identity, an Incident, and an operator of its own.
    let mut fresh = FreshCluster::up(&name);
    let crds = repo_root().join("crds");
    fresh.kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=resurgo-tests",
            "-f",
            crds.to_str().unwrap(),
        ],
        None,
    );
    fresh.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds.to_str().unwrap(),
        ],
        None,
    );
    let fresh_client = fresh.client().await;
    apply_to(Some(&fresh.kubeconfig), &store_manifest(&store, &dir));
    for (backup, status) in backups.iter().zip(&statuses) {
        let mut record = backup_manifest(backup, &store, &namespace, &recipient);
        record["metadata"]["annotations"] = json!({"resurgo.dev/imported": "true"});
        apply_to(Some(&fresh.kubeconfig), &record);
        Api::<Backup>::all(fresh_client.clone())
            .patch_status(
                backup,
                &PatchParams::apply("resurgo-tests").force(),
                &Patch::Apply(json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup", "status": status})),
            )
            .await
            .expect("import the Backup status");
    }
    fresh.kubectl(&["create", "namespace", "keys"], None);
    fresh.kubectl(
        &[
            "-n",
            "keys",
            "create",
            "secret",
            "generic",
            "age-key",
            "--from-file=identity=/dev/stdin",
        ],
        Some(&identity),
    );
    apply_to(
        Some(&fresh.kubeconfig),
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Incident", "metadata": {"name": "ransomware"},
                "spec": {"compromisedSince": "2999-01-01T00:00:00Z", "recoveryPlans": ["restore"],
                         "restorePoint": {"allowUnverified": true}}}),
    );
    fresh.start_operator();

    // Restore from the clean restore point, and (another plan) from the named re-encrypted one.
    let from = json!({"identitySecretRef": {"name": "age-key", "namespace": "keys"}});
    let plan = |plan_name: &str, from: Value| {
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan", "metadata": {"name": plan_name},
               "spec": {"tiers": [{"name": "clinical", "rto": "4h"}],
                        "services": [{"name": "records", "tier": "clinical", "namespace": namespace,
                                      "workload": {"fromBackup": from}, "readiness": {"timeout": "2m"}}]}})
    };
    apply_to(Some(&fresh.kubeconfig), &plan("restore", from.clone()));
    let wait = Command::new(k8s_bin().join("kubectl"))
        .arg(format!("--kubeconfig={}", fresh.kubeconfig.display()))
        .args([
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            "recoveryplan/restore",
        ])
        .output()
        .unwrap();
    assert!(
        wait.status.success(),
        "the restore plan did not become Ready: {}\n{}\n{}",
        String::from_utf8_lossy(&wait.stderr),
        fresh.kubectl(&["get", "recoveryplan", "restore", "-o", "yaml"], None),
        fresh.operator_log()
    );

    // Equal to the originals at backup a: the newest three were refused.
    let restored = the_clinical_objects(&fresh_client, &namespace).await;
    for (key, original) in &originals {
        assert_eq!(&restored[key], original, "{key} differs from the original");
    }
    assert_eq!(restored["ConfigMap/version"]["data"]["version"], "v1");
    let log = fresh.operator_log();
    let chosen = log
        .lines()
        .find(|line| line.contains("restore point"))
        .unwrap_or_else(|| panic!("no restore point in the operator's log:\n{log}"));
    assert!(
        chosen.contains(&format!("backup {}", backups[0])),
        "{chosen}"
    );
    assert!(
        chosen.contains(&format!(
            "{}: its encrypted objects do not match",
            backups[1]
        )),
        "{chosen}"
    );
    assert!(
        chosen.contains(&format!(
            "{}: its encrypted objects do not match",
            backups[2]
        )),
        "{chosen}"
    );
    assert!(
        chosen.contains(&format!("{}: it does not decrypt", backups[3])),
        "{chosen}"
    );
    assert!(!log.contains(&identity), "the identity was logged");
    // The choice is an Event on the plan too.
    let events = fresh.kubectl(
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=RestorePointChosen",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    );
    assert!(
        events.contains(&format!("backup {}", backups[0])),
        "{events}"
    );
    assert!(
        events.contains(&format!("{}: it does not decrypt", backups[3])),
        "{events}"
    );

    // Named, the re-encrypted backup fails the service instead of restoring anything.
    let mut named = from.clone();
    named["backup"] = json!(backups[3]);
    let mut named_plan = plan("named", named);
    named_plan["spec"]["services"][0]["namespace"] = json!(format!("{namespace}-named"));
    named_plan["spec"]["services"][0]["workload"]["fromBackup"]["sourceNamespace"] =
        json!(namespace);
    apply_to(Some(&fresh.kubeconfig), &named_plan);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = fresh.kubectl(
            &[
                "get",
                "recoveryplan",
                "named",
                "-o",
                "jsonpath={.status.services[0].phase} {.status.services[0].message}",
            ],
            None,
        );
        if status.starts_with("Failed") {
            assert!(status.contains("refused"), "{status}");
            assert!(status.contains("does not decrypt"), "{status}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "named plan: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let configmaps = fresh.kubectl(
        &[
            "-n",
            &format!("{namespace}-named"),
            "get",
            "configmaps",
            "-o",
            "name",
        ],
        None,
    );
    assert!(!configmaps.contains("settings"), "{configmaps}");
    drop(fresh);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn retention_keeps_the_newest_and_the_newest_verified_and_waits_while_frozen() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("ret");
    let namespace = format!("{name}-data");
    let dir = store_dir(&name);
    let (_, recipient) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));
    apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}, "data": {"k": "v"}}),
    );
    let schedule = format!("{name}-nightly");
    let schedule_manifest = |frozen: &str| {
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule",
               "metadata": {"name": schedule, "annotations": {"resurgo.dev/pruning-frozen": frozen}},
               "spec": {"schedule": "30 2 * * *", "timeZone": "Europe/Rome", "store": store,
                        "include": {"namespaces": [namespace]},
                        "encryption": {"recipients": [recipient]}, "retention": {"keepLast": 1}}})
    };
    apply(&schedule_manifest("true"));

    // Three completed backups of the schedule; the oldest passed a restore test.
    let backups: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
    for backup in &backups {
        let mut manifest = backup_manifest(backup, &store, &namespace, &recipient);
        manifest["metadata"]["labels"] = json!({"resurgo.dev/schedule": schedule});
        apply(&manifest);
        completed(&client, backup).await;
    }
    Api::<Backup>::all(client.clone())
        .patch_status(
            &backups[0],
            &PatchParams::apply("resurgo-tests-verifier"),
            &Patch::Apply(
                json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup",
                "status": {"verification": {"state": "Verified", "time": "2026-01-01T00:00:00Z"}}}),
            ),
        )
        .await
        .expect("mark the oldest verified");

    let schedules = Api::<resurgo::api::BackupSchedule>::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = schedules
            .get(&schedule)
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if status.pruning_frozen && status.last_successful_backup_time.is_some() {
            let next = status.next_run.expect("nextRun is set").0;
            assert!(next > k8s_openapi::jiff::Timestamp::now());
            // 02:30 in Rome is 00:30 or 01:30 UTC.
            let utc = next.strftime("%M").to_string();
            assert_eq!(utc, "30");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "schedule status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Frozen: all three are still there, in the cluster and in the store.
    let api = Api::<Backup>::all(client.clone());
    for backup in &backups {
        assert!(
            api.get_opt(backup).await.unwrap().is_some(),
            "{backup} was pruned while frozen"
        );
        assert!(
            dir.join("backups")
                .join(backup)
                .join(archive::MANIFEST)
                .exists()
        );
    }

    // Unfrozen: keepLast 1 keeps the newest, and the verified oldest survives too.
    apply(&schedule_manifest("false"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.get_opt(&backups[1]).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the middle backup was not pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !dir.join("backups")
            .join(&backups[1])
            .join(archive::OBJECTS)
            .exists()
    );
    for kept in [&backups[0], &backups[2]] {
        assert!(
            api.get_opt(kept).await.unwrap().is_some(),
            "{kept} was pruned"
        );
        assert!(
            dir.join("backups")
                .join(kept)
                .join(archive::OBJECTS)
                .exists()
        );
    }

    // keepLast counts backups, not time: no expiry to tell.
    for kept in [&backups[0], &backups[2]] {
        let status = api.get(kept).await.unwrap().status.unwrap();
        assert_eq!(status.expires, None, "{kept}: {status:?}");
    }
    // With keepDaily 7 the newest backup of the day is kept until seven days have begun
    // after its own (UTC); the older one of the same day may go when it completed.
    let mut daily = schedule_manifest("false");
    daily["spec"]["retention"] = json!({"keepLast": 1, "keepDaily": 7});
    apply(&daily);
    let expiring = await_condition(api.clone(), &backups[2], |b: Option<&Backup>| {
        b.and_then(|b| b.status.as_ref()?.expires.as_ref())
            .is_some()
    });
    let newest = tokio::time::timeout(Duration::from_secs(30), expiring)
        .await
        .expect("status.expires set within 30 s")
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    let completed_day = |status: &BackupStatus| {
        status
            .completed
            .clone()
            .unwrap()
            .0
            .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .date()
    };
    let day = completed_day(&newest);
    let week_later = day
        .checked_add(k8s_openapi::jiff::Span::new().days(7))
        .unwrap()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    assert_eq!(newest.expires.unwrap().0, week_later);
    let oldest = api.get(&backups[0]).await.unwrap().status.unwrap();
    if completed_day(&oldest) == day {
        assert_eq!(oldest.expires, oldest.completed, "{oldest:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_store_that_cannot_lock_is_reported_and_refused_when_immutability_is_required() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("worm");
    let dir = store_dir(&name);
    let (_, recipient) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));
    let stores = Api::<resurgo::api::BackupStore>::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = stores.get(&store).await.unwrap().status
            && status.last_probed.is_some()
        {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store {store} was not probed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    };
    assert_eq!(condition("Ready").as_deref(), Some("True"));
    assert_eq!(condition("Immutable").as_deref(), Some("False"));
    assert_eq!(condition("DeleteProtected").as_deref(), Some("False"));
    assert_eq!(status.credentials_can_delete, Some(true));
    assert!(status.object_lock.is_none());

    let backup = format!("{name}-locked");
    let mut manifest = backup_manifest(&backup, &store, "default", &recipient);
    manifest["spec"]["immutability"] = json!({"period": "720h", "required": true});
    apply(&manifest);
    let status = finished(&client, &backup).await;
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("immutability is required"), "{message}");
    assert!(message.contains("cannot lock objects"), "{message}");
    assert!(
        !dir.join("backups").join(&backup).exists(),
        "a refused backup wrote something"
    );

    // A store that does not exist is reported, not probed as fine.
    let missing = format!("{name}-missing");
    apply(&store_manifest(&missing, Path::new("/nonexistent/resurgo")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = stores.get(&missing).await.unwrap().status
            && status.last_probed.is_some()
        {
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap();
            assert_eq!(ready.status, "False");
            assert!(
                ready.message.contains("/nonexistent/resurgo"),
                "{}",
                ready.message
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn restore_tests_mark_the_newest_backup_verified_or_failed() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("verify");
    let namespace = format!("{name}-data");
    let dir = store_dir(&name);
    let (identity, recipient) = archive::generate_identity();
    let (wrong_identity, _) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));
    apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}, "data": {"k": "v"}}),
    );
    for (secret, value) in [("right", &identity), ("wrong", &wrong_identity)] {
        apply(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-{secret}"), "namespace": "default"},
                      "stringData": {"identity": value}}),
        );
    }
    // Two schedules over the same namespace, each with one backup; one holds the wrong key.
    let mut backups = Vec::new();
    for key in ["right", "wrong"] {
        let schedule = format!("{name}-{key}");
        apply(
            &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule", "metadata": {"name": schedule},
            "spec": {"schedule": "0 3 1 1 *", "store": store, "include": {"namespaces": [namespace]},
                     "encryption": {"recipients": [recipient]}, "retention": {"keepLast": 5},
                     "verification": {"schedule": "* * * * *", "restore": key == "right",
                                      "identitySecretRef": {"name": format!("{name}-{key}"), "namespace": "default"}}}}),
        );
        let backup = format!("{schedule}-manual");
        let mut manifest = backup_manifest(&backup, &store, &namespace, &recipient);
        manifest["metadata"]["labels"] = json!({"resurgo.dev/schedule": schedule});
        apply(&manifest);
        completed(&client, &backup).await;
        backups.push(backup);
    }
    // The verification cron fires at the next minute boundary.
    let api = Api::<Backup>::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let states: Vec<_> = futures::future::join_all(backups.iter().map(|b| api.get(b)))
            .await
            .into_iter()
            .map(|b| b.unwrap().status.unwrap_or_default().verification)
            .collect();
        if states.iter().all(Option::is_some) {
            let right = states[0].clone().unwrap();
            let wrong = states[1].clone().unwrap();
            assert_eq!(
                right.state,
                resurgo::api::backup::VerificationState::Verified,
                "{right:?}"
            );
            assert!(
                right
                    .message
                    .unwrap_or_default()
                    .contains("1 objects match the manifest")
            );
            assert_eq!(
                wrong.state,
                resurgo::api::backup::VerificationState::Failed,
                "{wrong:?}"
            );
            assert!(
                wrong
                    .message
                    .unwrap_or_default()
                    .contains("does not decrypt")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not verified in time: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The scratch namespace of the dry-run restore is gone, or going.
    let scratch = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .list(
            &kube::api::ListParams::default().labels(&format!("resurgo.dev/schedule={name}-right")),
        )
        .await
        .unwrap();
    assert!(
        scratch
            .items
            .iter()
            .all(|ns| ns.metadata.deletion_timestamp.is_some()),
        "{:?}",
        scratch.items
    );
    // The Backup controller's fields survive the verification's patch.
    let right = api.get(&backups[0]).await.unwrap().status.unwrap();
    assert_eq!(right.phase, Some(BackupPhase::Completed));
    assert!(right.manifest_sha256.is_some());
    let schedule = Api::<resurgo::api::BackupSchedule>::all(client.clone())
        .get(&format!("{name}-right"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(schedule.next_verification.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A check Job that fails: its pod is held back (kwok's pod-ready delay) past the Job's
/// deadline, so the Job controller marks the Job Failed (DeadlineExceeded).
fn failing_job_spec() -> Value {
    let mut spec = resurgo_tests::job_spec();
    spec["activeDeadlineSeconds"] = json!(1);
    spec["template"]["metadata"] =
        json!({"annotations": {"pod-ready.stage.kwok.x-k8s.io/delay": "1h"}});
    spec
}

/// Collects, until dropped, the objects a watch sees, keyed by namespace/name.
fn observe<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<BTreeMap<String, K>>>,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Some(Ok(object)) = stream.next().await {
            let key = format!(
                "{}/{}",
                object.meta().namespace.clone().unwrap_or_default(),
                object.meta().name.clone().unwrap_or_default()
            );
            sink.lock().unwrap().insert(key, object);
        }
    });
    (task, seen)
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_restore_test_restores_for_real_runs_its_checks_and_cleans_up() {
    use k8s_openapi::api::{batch::v1::Job, core::v1::Namespace};
    use resurgo::{
        api::backup::VerificationState,
        backup::verify::{BACKUP_ANNOTATION, SCRATCH_LABEL},
    };
    install_crds().await;
    let client = client().await;
    let name = unique_name("restore-test");
    let namespace = format!("{name}-data");
    let settings = format!("{name}-settings");
    let dir = store_dir(&name);
    let (identity, recipient) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));
    apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": settings, "namespace": namespace, "labels": {"app": "records"}},
                "data": {"mode": "clinical"}}),
    );
    apply(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "records", "namespace": namespace},
                "spec": {"type": "NodePort", "selector": {"app": "records"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-identity"), "namespace": "default"},
                "stringData": {"identity": identity}}),
    );
    let passing = format!("{name}-pass");
    let failing = format!("{name}-fail");
    // The backups first, so that both exist when the verification cron fires.
    let mut backups = Vec::new();
    for schedule in [&passing, &failing] {
        let backup = format!("{schedule}-manual");
        let mut manifest = backup_manifest(&backup, &store, &namespace, &recipient);
        manifest["metadata"]["labels"] = json!({"resurgo.dev/schedule": schedule});
        apply(&manifest);
        completed(&client, &backup).await;
        backups.push(backup);
    }

    let tests = format!("{SCRATCH_LABEL} in ({passing},{failing})");
    let (namespaces_task, scratch_seen) = observe(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(&tests),
    );
    let (jobs_task, jobs_seen) = observe(
        Api::<Job>::all(client.clone()),
        watcher::Config::default().labels(&tests),
    );
    let (copies_task, copies_seen) = observe(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={settings}")),
    );

    for (schedule, checks) in [
        (
            &passing,
            json!([{"name": "smoke", "spec": resurgo_tests::job_spec()}]),
        ),
        (
            &failing,
            json!([{"name": "smoke", "spec": resurgo_tests::job_spec()},
                   {"name": "integrity", "spec": failing_job_spec()}]),
        ),
    ] {
        apply(
            &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule", "metadata": {"name": schedule},
            "spec": {"schedule": "0 3 1 1 *", "store": store, "include": {"namespaces": [namespace]},
                     "encryption": {"recipients": [recipient]}, "retention": {"keepLast": 5},
                     "verification": {"schedule": "* * * * *", "checks": checks,
                                      "identitySecretRef": {"name": format!("{name}-identity"), "namespace": "default"}}}}),
        );
    }

    // The verification cron fires at the next minute boundary; then the checks run.
    let api = Api::<Backup>::all(client.clone());
    let mut verdicts = Vec::new();
    for backup in &backups {
        let judged = await_condition(api.clone(), backup, |b: Option<&Backup>| {
            b.and_then(|b| b.status.as_ref()?.verification.as_ref())
                .is_some_and(|v| v.state != VerificationState::Unverified)
        });
        let backup = match tokio::time::timeout(Duration::from_secs(150), judged).await {
            Ok(Ok(Some(backup))) => backup,
            other => panic!(
                "Backup {backup} was not verified in time: {other:?}; {:?}",
                api.get(backup).await.unwrap().status
            ),
        };
        verdicts.push(backup.status.unwrap().verification.unwrap());
    }
    let (passed, failed) = (&verdicts[0], &verdicts[1]);
    let passed_message = passed.message.clone().unwrap_or_default();
    assert_eq!(passed.state, VerificationState::Verified, "{passed:?}");
    assert!(
        passed_message.contains("2 objects match the manifest")
            && passed_message.contains("read back equal to the backup")
            && passed_message.contains("checks passed")
            && passed_message.contains("smoke"),
        "{passed_message}"
    );
    let failed_message = failed.message.clone().unwrap_or_default();
    assert_eq!(failed.state, VerificationState::Failed, "{failed:?}");
    assert!(
        failed_message.contains("read back equal to the backup")
            && failed_message.contains("check integrity failed")
            && failed_message.contains("deadline"),
        "{failed_message}"
    );

    // The watches saw each test restore into a restricted scratch namespace of its own,
    // with the backed-up ConfigMap equal to the original, and run its checks there.
    let scratch: BTreeMap<String, Namespace> = scratch_seen.lock().unwrap().clone();
    for schedule in [&passing, &failing] {
        let ours: Vec<&Namespace> = scratch
            .values()
            .filter(|ns| ns.metadata.labels.as_ref().unwrap()[SCRATCH_LABEL] == *schedule)
            .collect();
        assert_eq!(ours.len(), 1, "{schedule}: {scratch:?}");
        let labels = ours[0].metadata.labels.clone().unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "resurgo");
        let scratch_name = ours[0].metadata.name.clone().unwrap();
        let copy = copies_seen
            .lock()
            .unwrap()
            .get(&format!("{scratch_name}/{settings}"))
            .cloned()
            .unwrap_or_else(|| panic!("no restored ConfigMap in {scratch_name}"));
        assert_eq!(copy.data.unwrap()["mode"], "clinical");
        assert_eq!(copy.metadata.labels.unwrap()["app"], "records");
        let jobs = jobs_seen.lock().unwrap().clone();
        assert!(
            jobs.contains_key(&format!("{scratch_name}/check-smoke")),
            "{:?}",
            jobs.keys()
        );
    }
    // The original was not touched by the test.
    let original = get::<ConfigMap>(&client, &namespace, &settings).await;
    assert_eq!(original["data"]["mode"], "clinical");

    // Every scratch namespace is deleted after the verdict, passed or failed.
    let namespaces = Api::<Namespace>::all(client.clone());
    for ns in scratch.values() {
        let name = ns.metadata.name.clone().unwrap();
        let uid = ns.metadata.uid.clone().unwrap();
        let gone = await_condition(
            namespaces.clone(),
            &name,
            kube::runtime::wait::conditions::is_deleted(&uid),
        );
        tokio::time::timeout(Duration::from_secs(90), gone)
            .await
            .unwrap_or_else(|_| panic!("scratch namespace {name} was not deleted"))
            .unwrap();
    }

    // A scratch namespace left by an operator that stopped mid-test, for a backup that is
    // gone, is found by its label and deleted.
    let leftover = format!("{name}-leftover");
    apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": leftover,
                "labels": {SCRATCH_LABEL: passing}, "annotations": {BACKUP_ANNOTATION: format!("{name}-gone")}}}),
    );
    let uid = namespaces
        .get(&leftover)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let gone = await_condition(namespaces.clone(), &leftover, |ns: Option<&Namespace>| {
        ns.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some())
    });
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .unwrap_or_else(|_| panic!("leftover scratch namespace {leftover} ({uid}) was not deleted"))
        .unwrap();

    namespaces_task.abort();
    jobs_task.abort();
    copies_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn an_s3_bucket_with_object_lock_is_probed_immutable_and_holds_backups_that_restore() {
    use resurgo::{
        api::backup_store::{BackupStore, ObjectLockMode, S3Store, SecretRef},
        backup::{engine, s3},
    };
    install_crds().await;
    let client = client().await;
    let (endpoint, access_key, secret_key) = minio();
    let name = unique_name("s3");
    let namespace = format!("{name}-data");
    let (identity, recipient) = archive::generate_identity();
    let spec = |bucket: &str| S3Store {
        bucket: bucket.into(),
        prefix: Some("lazio/".into()),
        region: None,
        endpoint: Some(endpoint.clone()),
        force_path_style: true,
        allow_insecure_http: true,
        credentials_secret_ref: SecretRef {
            name: format!("{name}-s3"),
            namespace: "default".into(),
        },
    };
    let locked = format!("{name}-locked");
    let plain = format!("{name}-plain");
    s3::create_locked_bucket(
        &s3::Target::of(&spec(&locked), &access_key, &secret_key),
        ObjectLockMode::Compliance,
        1,
    )
    .await
    .expect("create the locked bucket");
    s3::create_bucket(&s3::Target::of(&spec(&plain), &access_key, &secret_key))
        .await
        .expect("create the plain bucket");
    apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-s3"), "namespace": "default"},
                  "stringData": {"accessKeyId": access_key, "secretAccessKey": secret_key}}),
    );
    for bucket in [&locked, &plain] {
        apply(
            &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore", "metadata": {"name": bucket},
                      "spec": {"s3": spec(bucket)}}),
        );
    }
    let stores = Api::<BackupStore>::all(client.clone());
    let probed = |store: String| {
        let stores = stores.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = stores.get(&store).await.unwrap().status
                    && status.last_probed.is_some()
                {
                    return status;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{store} was not probed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let condition = |status: &resurgo::api::backup_store::BackupStoreStatus, type_: &str| {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.message.clone())
    };
    let locked_status = probed(locked.clone()).await;
    assert_eq!(
        condition(&locked_status, "Ready").0,
        "True",
        "{locked_status:?}"
    );
    assert_eq!(
        condition(&locked_status, "Immutable").0,
        "True",
        "{locked_status:?}"
    );
    assert_eq!(
        condition(&locked_status, "DeleteProtected").0,
        "True",
        "{locked_status:?}"
    );
    assert_eq!(locked_status.credentials_can_delete, Some(false));
    let lock = locked_status
        .object_lock
        .clone()
        .expect("object lock reported");
    assert_eq!(lock.mode, ObjectLockMode::Compliance);
    assert_eq!(lock.default_retention_days, Some(1));

    let plain_status = probed(plain.clone()).await;
    assert_eq!(
        condition(&plain_status, "Ready").0,
        "True",
        "{plain_status:?}"
    );
    assert_eq!(condition(&plain_status, "Immutable").0, "False");
    assert_eq!(plain_status.credentials_can_delete, Some(true));
    assert!(plain_status.object_lock.is_none());

    // Immutability required: written to the locked bucket, refused by the plain one.
    apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}, "data": {"k": "v"}}),
    );
    let mut statuses = Vec::new();
    for bucket in [&locked, &plain] {
        let backup = format!("{bucket}-bk");
        let mut manifest = backup_manifest(&backup, bucket, &namespace, &recipient);
        manifest["spec"]["immutability"] = json!({"period": "24h", "required": true});
        apply(&manifest);
        statuses.push((backup.clone(), finished(&client, &backup).await));
    }
    let (locked_backup, status) = &statuses[0];
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert!(status.immutable_until.is_some());
    let (_, refused) = &statuses[1];
    assert_eq!(refused.phase, Some(BackupPhase::Failed));
    assert!(
        refused
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("no object lock"),
        "{refused:?}"
    );

    // What is in the bucket opens with every check and gives the ConfigMap back.
    let backup = Api::<Backup>::all(client.clone())
        .get(locked_backup)
        .await
        .unwrap();
    let objects = engine::read_backup(&client, &backup, &identity)
        .await
        .unwrap()
        .expect("the backup in the locked bucket opens");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["data"]["k"], "v");
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_schedule_creates_a_backup_when_its_cron_is_due() {
    install_crds().await;
    let client = client().await;
    let name = unique_name("cron");
    let namespace = format!("{name}-data");
    let dir = store_dir(&name);
    let (_, recipient) = archive::generate_identity();
    let store = format!("{name}-store");
    apply(&store_manifest(&store, &dir));
    apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}, "data": {"k": "v"}}),
    );
    let schedule = format!("{name}-minutely");
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule", "metadata": {"name": schedule},
        "spec": {"schedule": "* * * * *", "timeZone": "Europe/Rome", "store": store,
                 "include": {"namespaces": [namespace]},
                 "encryption": {"recipients": [recipient]}, "retention": {"keepLast": 3}}}),
    );
    let schedules = Api::<resurgo::api::BackupSchedule>::all(client.clone());
    // The first run is the next minute boundary; the controller requeues itself for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (backup, first_due) = loop {
        let status = schedules
            .get(&schedule)
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if let Some(backup) = status.last_backup {
            break (backup, status.next_run.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backup created: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(backup.starts_with(&format!("{schedule}-")), "{backup}");
    let status = completed(&client, &backup).await;
    assert_eq!(status.items, Some(1));
    let created = Api::<Backup>::all(client.clone())
        .get(&backup)
        .await
        .unwrap();
    assert_eq!(created.spec.schedule.as_deref(), Some(schedule.as_str()));
    assert_eq!(
        created
            .metadata
            .labels
            .unwrap_or_default()
            .get("resurgo.dev/schedule"),
        Some(&schedule)
    );
    // The next run is a minute boundary in the future.
    let next = first_due.expect("nextRun").0;
    assert_eq!(next.as_second() % 60, 0);
    assert!(
        next > k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(60)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
