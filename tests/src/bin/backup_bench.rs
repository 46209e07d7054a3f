//! Backup and restore of a namespace with many objects, on a real control plane.
//!
//! ```sh
//! tests/cluster/up.sh /dev/shm/bb && source /dev/shm/bb/env
//! cargo build -p resurgo && cargo run -p resurgo-tests --bin backup-bench -- --objects 10000
//! tests/cluster/down.sh /dev/shm/bb
//! ```
//!
//! It starts its own operator (`--operator`, default target/debug/resurgo), fills a namespace
//! with ConfigMaps, backs it up to a filesystem store, opens the backup in-process (read,
//! every hash, decryption), and restores it into another namespace through a RecoveryPlan
//! with `fromBackup`, timing each step.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use resurgo::{
    api::{
        backup::{Backup, BackupPhase},
        recovery_plan::{PlanPhase, RecoveryPlan},
    },
    backup::{archive, engine},
};
use resurgo_tests::{kubectl_ok, repo_root};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Backup and restore of many objects, timed")]
struct Args {
    /// ConfigMaps in the namespace backed up.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// The operator binary to run.
    #[arg(long)]
    operator: Option<PathBuf>,
}

fn apply(manifest: serde_json::Value) {
    kubectl_ok(
        &["apply", "--server-side", "--field-manager=bench", "-f", "-"],
        Some(&manifest.to_string()),
    )
    .expect("apply");
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not done in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG of a cluster from tests/cluster/up.sh");
    let crds = repo_root().join("crds");
    let crds = crds.to_str().unwrap();
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=bench",
            "-f",
            crds,
        ],
        None,
    )
    .unwrap();
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds,
        ],
        None,
    )
    .unwrap();

    let work = std::env::temp_dir().join(format!("resurgo-backup-bench-{}", std::process::id()));
    let store_dir = work.join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let operator_path = args
        .operator
        .unwrap_or_else(|| repo_root().join("target/debug/resurgo"));
    let mut operator = Command::new(&operator_path)
        .arg("run")
        .env("RUST_LOG", "warn,resurgo=info")
        .stderr(std::fs::File::create(work.join("operator.log")).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the operator");

    let source = "bench-source";
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": source}}));
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), source);
    let started = Instant::now();
    futures::stream::iter(0..args.objects)
        .map(|i| {
            let api = config_maps.clone();
            async move {
                let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("settings-{i:05}"), "labels": {"app": "records"}},
                    "data": {"index": i.to_string(), "text": "x".repeat(200)}});
                api.patch(
                    &format!("settings-{i:05}"),
                    &PatchParams::apply("bench"),
                    &Patch::Apply(&object),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("create the ConfigMaps");
    let fill = started.elapsed();

    let (identity, recipient) = archive::generate_identity();
    apply(
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore", "metadata": {"name": "bench"},
                 "spec": {"filesystem": {"path": store_dir.to_str().unwrap()}}}),
    );
    let backups = Api::<Backup>::all(client.clone());
    let started = Instant::now();
    apply(
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "bench"},
                 "spec": {"store": "bench", "include": {"namespaces": [source]},
                          "encryption": {"recipients": [recipient]}}}),
    );
    wait_for("the backup", Duration::from_secs(600), || {
        let backups = backups.clone();
        async move {
            let status = backups
                .get("bench")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            assert_ne!(status.phase, Some(BackupPhase::Failed), "{status:?}");
            status.phase == Some(BackupPhase::Completed)
        }
    })
    .await;
    let backup_time = started.elapsed();
    let backup = backups.get("bench").await.unwrap();
    let status = backup.status.clone().unwrap();

    let started = Instant::now();
    let objects = engine::read_backup(&client, &backup, &identity)
        .await
        .unwrap()
        .expect("the backup opens");
    let open_time = started.elapsed();
    assert_eq!(objects.len(), args.objects);

    kubectl_ok(&["create", "namespace", "bench-keys"], None).ok();
    kubectl_ok(
        &[
            "-n",
            "bench-keys",
            "create",
            "secret",
            "generic",
            "age-key",
            "--from-file=identity=/dev/stdin",
        ],
        Some(&identity),
    )
    .ok();
    let plans = Api::<RecoveryPlan>::all(client.clone());
    let started = Instant::now();
    apply(
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan", "metadata": {"name": "bench"},
        "spec": {"tiers": [{"name": "all", "rto": "1h"}],
                 "services": [{"name": "records", "tier": "all", "namespace": "bench-restored",
                               "workload": {"fromBackup": {"backup": "bench", "sourceNamespace": source,
                                   "identitySecretRef": {"name": "age-key", "namespace": "bench-keys"}}},
                               "readiness": {"timeout": "30m"}}]}}),
    );
    wait_for("the restore", Duration::from_secs(1800), || {
        let plans = plans.clone();
        async move {
            let status = plans.get("bench").await.unwrap().status.unwrap_or_default();
            assert_ne!(status.phase, Some(PlanPhase::Failed), "{status:?}");
            status.phase == Some(PlanPhase::Recovered)
        }
    })
    .await;
    let restore_time = started.elapsed();
    let restored = Api::<ConfigMap>::namespaced(client.clone(), "bench-restored")
        .list_metadata(&ListParams::default().labels("app=records"))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(restored, args.objects);

    let _ = operator.kill();
    let _ = operator.wait();
    let _ = std::fs::remove_dir_all(&work);
    let per_second = |d: Duration| args.objects as f64 / d.as_secs_f64();
    println!("objects                          {}", args.objects);
    // The baseline: the same API server creating the same objects from a plain client with
    // 32 requests in flight, measured in this run.
    println!(
        "raw create rate (32 parallel)    {:>8.1} s  ({:.0} objects/s)",
        fill.as_secs_f64(),
        per_second(fill)
    );
    println!(
        "backup to Completed              {:>8.1} s  ({:.0} objects/s, {} bytes, {} items)",
        backup_time.as_secs_f64(),
        per_second(backup_time),
        status.bytes.unwrap_or_default(),
        status.items.unwrap_or_default()
    );
    println!(
        "open (read, hashes, decrypt)     {:>8.2} s",
        open_time.as_secs_f64()
    );
    println!(
        "restore to Recovered             {:>8.1} s  ({:.0} objects/s)",
        restore_time.as_secs_f64(),
        per_second(restore_time)
    );
    let ratio = |d: Duration| fill.as_secs_f64() / d.as_secs_f64();
    println!(
        "backup rate / raw create rate    {:>8.2}",
        ratio(backup_time)
    );
    println!(
        "restore rate / raw create rate   {:>8.2}  (target >= 0.80: {})",
        ratio(restore_time),
        if ratio(restore_time) >= 0.8 {
            "met"
        } else {
            "MISSED"
        }
    );
}
