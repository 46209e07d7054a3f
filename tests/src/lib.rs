//! Harness for the integration tests: they run against the real control plane that
//! `tests/run.sh` starts (kube-apiserver, etcd, kube-controller-manager, kube-scheduler and
//! kwok built from the pinned Go modules), never against a mock.
//!
//! `tests/run.sh` exports `KUBECONFIG` and `RESURGO_K8S_BIN`; the tests that need them are
//! `#[ignore = "needs cluster"]`, so a plain `cargo test` runs only the unit tests.

pub mod access;
pub mod chaos;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use kube::{Api, Client};
use resurgo::api::{
    Backup,
    backup::{BackupPhase, BackupStatus},
};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Directory of the control-plane binaries (kubectl, helm, ...), from `RESURGO_K8S_BIN`.
pub fn k8s_bin() -> PathBuf {
    std::env::var_os("RESURGO_K8S_BIN")
        .map(PathBuf::from)
        .expect("RESURGO_K8S_BIN is not set: run the integration tests through tests/run.sh")
}

/// A kube-rs client for the test cluster's admin.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the integration tests through tests/run.sh"
    );
    Client::try_default()
        .await
        .expect("a client from KUBECONFIG")
}

/// Runs kubectl from the built control plane with `args`, feeding `stdin` when given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(k8s_bin().join("kubectl"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().expect("start kubectl");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl stdin");
    }
    child.wait_with_output().expect("wait for kubectl")
}

/// Runs kubectl and returns its stdout, failing with its stderr when it fails.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let output = kubectl(args, stdin);
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Writes to `path` a kubeconfig for the cluster that holds only a fresh token (one hour)
/// of the ServiceAccount `account` in `namespace`: no client certificate, so every request
/// made with it is that account's and nobody else's.
pub fn service_account_kubeconfig(namespace: &str, account: &str, path: &Path) -> Result<()> {
    let token = kubectl_ok(
        &["-n", namespace, "create", "token", account, "--duration=1h"],
        None,
    )
    .with_context(|| format!("a token for the ServiceAccount {namespace}/{account}"))?;
    let cluster = |path: &str| {
        kubectl_ok(
            &[
                "config",
                "view",
                "--minify",
                "--raw",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ],
            None,
        )
    };
    let server = cluster("server")?;
    let ca = cluster("certificate-authority-data")?;
    std::fs::write(
        path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: {server}, certificate-authority-data: {ca}}}
users:
- name: {account}
  user: {{token: {token}}}
contexts:
- name: test
  context: {{cluster: test, user: {account}, namespace: {namespace}}}
current-context: test
",
            token = token.trim()
        ),
    )
    .with_context(|| format!("write {}", path.display()))
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Installs the CRDs from crds/ once per test process (server-side apply, so a second
/// process re-applying them changes nothing) and waits until the API server serves them.
pub async fn install_crds() {
    CRDS.get_or_init(|| async {
        let dir = repo_root().join("crds");
        let dir = dir.to_str().expect("utf-8 path");
        kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=resurgo-tests",
                "-f",
                dir,
            ],
            None,
        )
        .expect("install CRDs");
        kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                dir,
            ],
            None,
        )
        .expect("CRDs established");
        wait_until_served(Duration::from_secs(30))
            .await
            .expect("CRDs served");
    })
    .await;
}

/// Discovery can lag the Established condition by a moment.
async fn wait_until_served(timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let output = kubectl(
            &["api-resources", "--api-group=resurgo.dev", "-o", "name"],
            None,
        );
        let served = String::from_utf8_lossy(&output.stdout).lines().count();
        if output.status.success() && served == resurgo::api::crds().len() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {served} resurgo.dev resources served after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

static NAMES: AtomicU32 = AtomicU32::new(0);

/// A name no other test in this run uses: tests share one cluster, and every Resurgo kind
/// is cluster-scoped.
pub fn unique_name(prefix: &str) -> String {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Every YAML file under examples/, sorted.
pub fn example_files() -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(&repo_root().join("examples"), &mut files)?;
    files.sort();
    Ok(files)
}

/// A binary of the `resurgo` package (`resurgo`, `kubectl-resurgo`) as tests/run.sh built
/// it: from `RESURGO_BIN_DIR`, or the workspace's debug target directory.
pub fn resurgo_bin(name: &str) -> PathBuf {
    std::env::var_os("RESURGO_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"))
        .join(name)
}

/// A Deployment the restricted Pod Security level admits. With `zone`, its pods only
/// schedule on a node labelled with that zone: the test holds the service back by not having
/// such a node yet.
pub fn deployment(name: &str, zone: Option<&str>) -> Value {
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

/// Applies `manifest` (YAML or JSON) by server-side apply, as a user would.
pub fn apply(manifest: &str) {
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

/// A Job spec the restricted Pod Security level admits; kwok completes its pod.
pub fn job_spec() -> Value {
    json!({
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": "registry.example/tools:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }}
    })
}

/// The MinIO that tests/run.sh starts: endpoint, access key, secret key.
pub fn minio() -> (String, String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the integration tests through tests/run.sh")
        })
    };
    (
        var("RESURGO_MINIO_ENDPOINT"),
        var("RESURGO_MINIO_ACCESS_KEY"),
        var("RESURGO_MINIO_SECRET_KEY"),
    )
}

/// The status of Backup `name` once it is Completed or Failed; panics after `within`.
pub async fn backup_finished(client: &Client, name: &str, within: Duration) -> BackupStatus {
    let api = Api::<Backup>::all(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = api
            .get(name)
            .await
            .expect("read the Backup")
            .status
            .unwrap_or_default();
        if matches!(
            status.phase,
            Some(BackupPhase::Completed | BackupPhase::Failed)
        ) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Backup {name} did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
