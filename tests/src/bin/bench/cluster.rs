//! The processes the benchmark owns: a control plane from tests/cluster/up.sh in its own
//! directory, and the operator. [`Teardown`] stops whatever of them is running, on success,
//! on error and on Ctrl-C alike.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use resurgo::api::RecoveryPlan;
use serde_json::json;
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};

fn log(message: impl std::fmt::Display) {
    eprintln!("[bench] {message}");
}

/// What must be stopped before the benchmark exits.
#[derive(Default)]
pub struct Teardown {
    /// The cluster directory, from the moment up.sh is asked to use it.
    cluster_dir: Option<PathBuf>,
    /// up.sh while it runs.
    up: Option<Child>,
    pub operator: Option<Operator>,
    root: PathBuf,
}

impl Teardown {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            ..Self::default()
        }
    }

    /// Stops the operator, then the cluster (down.sh removes its directory). Idempotent.
    pub async fn finish(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.stop().await;
        }
        if let Some(mut up) = self.up.take() {
            // Interrupted while starting: down.sh stops what up.sh had started (its pids file).
            let _ = up.start_kill();
            let _ = up.wait().await;
        }
        if let Some(dir) = self.cluster_dir.take()
            && dir.exists()
        {
            let status = Command::new(self.root.join("tests/cluster/down.sh"))
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .await;
            if !matches!(status, Ok(s) if s.success()) {
                log(format!(
                    "WARNING: tests/cluster/down.sh {} failed ({status:?}); stop it by hand",
                    dir.display()
                ));
            }
        }
    }
}

/// A running control plane.
pub struct Cluster {
    pub dir: PathBuf,
    /// The control-plane binaries (kubectl among them).
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub client: Client,
}

/// Where cluster directories go: tmpfs when there is one (etcd is much faster there).
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly())
        && tempfile_probe(shm);
    if writable {
        shm.to_owned()
    } else {
        std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    }
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".resurgo-bench-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Starts a fresh control plane with tests/cluster/up.sh (which builds or reuses the
/// binaries through build.sh) and returns a client for it.
/// `lean`: up.sh's UP_LEAN (see tests/cluster/up.sh).
pub async fn up(teardown: &mut Teardown, label: &str, lean: bool) -> Result<Cluster> {
    let dir = base_dir().join(format!("resurgo-bench.{}.{label}", std::process::id()));
    ensure!(
        !dir.exists(),
        "{} exists: a previous run of this process id was not torn down",
        dir.display()
    );
    teardown.cluster_dir = Some(dir.clone());
    log(format!("starting a cluster in {}", dir.display()));
    // up.sh prints the env file's path on stdout; a file keeps it without a pipe to drain.
    let printed_path = teardown
        .root
        .join(format!("target/bench/up-{label}.stdout"));
    std::fs::create_dir_all(teardown.root.join("target/bench"))?;
    let printed_file = std::fs::File::create(&printed_path)
        .with_context(|| format!("create {}", printed_path.display()))?;
    let child = Command::new(teardown.root.join("tests/cluster/up.sh"))
        .arg(&dir)
        .env("UP_LEAN", if lean { "true" } else { "false" })
        .stdin(Stdio::null())
        .stdout(printed_file)
        .stderr(Stdio::inherit())
        .spawn()
        .context("start tests/cluster/up.sh")?;
    teardown.up = Some(child);
    let status = teardown.up.as_mut().context("up.sh child")?.wait().await?;
    teardown.up = None;
    let printed = std::fs::read_to_string(&printed_path).unwrap_or_default();
    let _ = std::fs::remove_file(&printed_path);
    ensure!(status.success(), "tests/cluster/up.sh failed ({status})");

    let env_file = PathBuf::from(printed.trim());
    let env = std::fs::read_to_string(&env_file)
        .with_context(|| format!("read {}", env_file.display()))?;
    let var = |name: &str| -> Result<String> {
        env.lines()
            .find_map(|line| line.strip_prefix(&format!("export {name}=")))
            .map(|value| value.trim_matches('"').to_owned())
            .with_context(|| format!("{} sets no {name}", env_file.display()))
    };
    let kubeconfig = PathBuf::from(var("KUBECONFIG")?);
    let bin = PathBuf::from(var("RESURGO_K8S_BIN")?);
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    Ok(Cluster {
        dir,
        bin,
        kubeconfig,
        client,
    })
}

impl Cluster {
    /// Runs the cluster's kubectl and returns its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .context("run kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Installs crds/ and waits until the API server serves RecoveryPlans.
    pub async fn install_crds(&self, root: &Path) -> Result<()> {
        let crds = root.join("crds");
        let crds = crds.to_str().context("crds/ is not a UTF-8 path")?;
        self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=resurgo-bench",
            "-f",
            crds,
        ])
        .await?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds,
        ])
        .await?;
        let plans: Api<RecoveryPlan> = Api::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(error) = plans.list(&ListParams::default().limit(1)).await {
            if Instant::now() > deadline {
                bail!("RecoveryPlans are not served 30 s after the CRDs were established: {error}");
            }
            sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Adds a kwok node with room for `pods` pods (up.sh's node holds 250) and waits until
    /// it is Ready and untainted.
    pub async fn add_node(&self, name: &str, pods: usize) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let capacity = json!({"cpu": "1000", "memory": "4Ti", "pods": pods.to_string()});
        let node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok"}
            },
            "status": {"capacity": capacity, "allocatable": capacity, "phase": "Running"}
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let node = nodes.get(name).await?;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            if ready && !tainted {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {name} not Ready and untainted after 120 s");
            }
            sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("create namespace {name}"))?;
        Ok(())
    }

    /// CPU time used so far by each process of the control plane, by name.
    pub fn component_cpu(&self) -> BTreeMap<String, Duration> {
        let pids = std::fs::read_to_string(self.dir.join("pids")).unwrap_or_default();
        pids.lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
            .filter_map(|pid| {
                // argv[0]'s file name: comm is cut at 15 characters (kube-controller).
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let argv0 = cmdline.split(|b| *b == 0).next()?;
                let name = Path::new(std::str::from_utf8(argv0).ok()?).file_name()?;
                Some((
                    name.to_string_lossy().into_owned(),
                    proc_stats(pid).ok()?.cpu,
                ))
            })
            .collect()
    }
}

/// Requests the API server served, by "VERB resource[/subresource]": (count, seconds spent).
pub type RequestCounts = BTreeMap<String, (f64, f64)>;

impl Cluster {
    /// The API server's request counters (`apiserver_request_total` and the sum of
    /// `apiserver_request_duration_seconds`), from its /metrics. Empty when unavailable.
    pub async fn request_counts(&self) -> RequestCounts {
        let text = self
            .kubectl(&["get", "--raw", "/metrics"])
            .await
            .unwrap_or_default();
        parse_request_counts(&text)
    }
}

pub fn parse_request_counts(metrics: &str) -> RequestCounts {
    let mut counts = RequestCounts::new();
    for line in metrics.lines() {
        let (is_count, rest) = if let Some(rest) = line.strip_prefix("apiserver_request_total{") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
            (false, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        if !label("subresource").is_empty() {
            key = format!("{key}/{}", label("subresource"));
        }
        let entry = counts.entry(key).or_default();
        if is_count {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    counts
}

/// Memory and CPU of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
}

/// Clock ticks per second of /proc/<pid>/stat (sysconf(_SC_CLK_TCK): 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces: the
    // first is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
        cpu: Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / clock_ticks()),
    })
}

/// The operator process (`resurgo run`).
pub struct Operator {
    child: Child,
    pub pid: u32,
}

impl Operator {
    /// Starts `binary run` against the cluster, waits until it says it started, then gives
    /// its watches a moment to list.
    pub async fn start(binary: &Path, cluster: &Cluster, log_file: &Path) -> Result<Self> {
        // A fresh log: the report counts its lines.
        if let Some(parent) = log_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(log_file)
            .with_context(|| format!("create {}", log_file.display()))?;
        let operator = Self::spawn(binary, cluster, log_file).await?;
        // Its watches list (empty) collections right after; give them a moment.
        sleep(Duration::from_secs(2)).await;
        Ok(operator)
    }

    /// Starts `binary run` against the cluster, its output appended to `log_file`, and waits
    /// only until it says it started: the chaos loop restarts it in the middle of a recovery.
    pub async fn spawn(binary: &Path, cluster: &Cluster, log_file: &Path) -> Result<Self> {
        if let Some(parent) = log_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("open {}", log_file.display()))?;
        let started_lines = std::fs::read_to_string(log_file)
            .unwrap_or_default()
            .matches("resurgo operator started")
            .count();
        // Debug level for resurgo: one "reconciled" line per reconcile, which the report counts.
        let child = Command::new(binary)
            .arg("run")
            // Any free port: a fixed one would collide with other runs on the machine.
            .arg("--metrics-addr=127.0.0.1:0")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "warn,resurgo=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid = child.id().context("the operator has no pid")?;
        let mut operator = Self { child, pid };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = operator.child.try_wait()? {
                bail!(
                    "the operator exited ({status}) at start; its log:\n{}",
                    tail(log_file, 30)
                );
            }
            let text = std::fs::read_to_string(log_file).unwrap_or_default();
            if text.matches("resurgo operator started").count() > started_lines {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator did not start within 30 s; its log:\n{}",
                    tail(log_file, 30)
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
        Ok(operator)
    }

    /// SIGKILL: no graceful shutdown, no last status write.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (a graceful stop), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            log(format!(
                "the operator (pid {}) ignored SIGTERM for 10 s; killing it",
                self.pid
            ));
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_are_summed_by_verb_and_resource() {
        let metrics = r#"# HELP apiserver_request_total Counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="GET",version="v1"} 10
apiserver_request_total{code="404",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="GET",version="v1"} 5
apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="resurgo.dev",resource="recoveryplans",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 2.5
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="resurgo.dev",resource="recoveryplans",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 7
"#;
        let counts = parse_request_counts(metrics);
        assert_eq!(counts["GET deployments"], (15.0, 0.0));
        assert_eq!(counts["APPLY recoveryplans/status"], (0.0, 2.5));
    }
}
