//! The recovery benchmark (issue 3): runs recovery plans on a real local control plane with
//! simulated readiness delays and prints the ordering overhead, recovery time against the
//! planner's critical path, and the operator's peak memory. It prints figures and never fails
//! on them: it is not a test and tests/run.sh does not run it.
//!
//! ```text
//! cargo run --release -p resurgo-tests --bin bench -- [OPTIONS]
//! ```
//!
//! For each scenario it starts a fresh cluster (tests/cluster/up.sh in /dev/shm), installs
//! crds/, adds a kwok node with room for the plan's pods, starts `resurgo run` (built with
//! `cargo build --release -p resurgo` unless `--operator` names a binary), creates the plan,
//! and watches it until it is Ready. Then it stops the operator and tears the cluster down,
//! also on errors and on Ctrl-C.
//!
//! Simulated readiness: kwok makes a pod Ready after the delay in its
//! `pod-ready.stage.kwok.x-k8s.io/delay` annotation (tests/cluster/build.sh adds that to kwok's
//! fast pod-ready stage). Each service's pods get its `expectedDuration` as that delay, so the
//! planner's critical path is what a recovery with no overhead would take.
//!
//! Measurement: one watch of the plan's Deployments and one of its Jobs (label
//! `resurgo.dev/plan`), with client-side arrival times of the first event showing each object
//! (created) and the first showing it ready (Deployment Available with every replica, Job
//! Complete). A service is created at its first object and ready at its last object ready.
//!
//! `--chaos N` runs the chaos loop instead (bench/chaos.rs), and `--lockdown` the lockdown
//! bench (bench/lockdown.rs): 1,000 human bindings suspended by an AccessPolicy's Lockdown and
//! restored by Normal, timed from watches against the raw delete rate of the same API server.
//!
//! Exit status: 0 when every run finished (targets met or not), 1 when a run failed (the
//! plan never became Ready within the timeout, the cluster did not start, a binding the
//! lockdown bench did not get back exactly, ...), 130 on Ctrl-C.

#[path = "bench/chaos.rs"]
mod chaos;
#[path = "bench/cluster.rs"]
mod cluster;
#[path = "bench/lockdown.rs"]
mod lockdown;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/scenario.rs"]
mod scenario;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::ApiResource,
};
use resurgo::{api::RecoveryPlan, planner};
use tokio::{process::Command, time::Instant};

use crate::{
    cluster::{Cluster, Operator, Teardown, proc_stats},
    measure::{Analysis, Gate, Summary, summary},
    scenario::{Generate, Scenario},
};

/// Runs recovery plans on a local control plane with simulated readiness delays and prints
/// ordering overhead, recovery time / critical path and the operator's peak RSS.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Which,

    /// Speed-up of the Lazio plan: every expectedDuration, and the readiness delay of the
    /// service's pods, is divided by this (60: 1m becomes 1 s; its 288 min critical path
    /// becomes 288 s).
    #[arg(long, default_value_t = 60.0)]
    scale: f64,

    /// Services of the generated plan (at most 1000, the CRD's limit).
    #[arg(long, default_value_t = 1000)]
    services: usize,

    /// Tiers of the generated plan (at most 16).
    #[arg(long, default_value_t = 5)]
    tiers: usize,

    /// Seed of the generated plan: the same seed gives the same plan.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Shortest readiness delay of a generated service, in milliseconds.
    #[arg(long, default_value_t = 500)]
    min_delay_ms: u64,

    /// Longest readiness delay of a generated service, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    max_delay_ms: u64,

    /// Each generated service depends on 0 to this many others.
    #[arg(long, default_value_t = 3)]
    max_deps: usize,

    /// maxParallel of the generated plan (high, so that parallelism is not the limit).
    #[arg(long, default_value_t = 1000)]
    max_parallel: u32,

    /// Run each scenario this many times, each on a fresh cluster; the generated plan's seed
    /// goes up by one each run. With more than one run the summary also pools every run's
    /// tier boundaries: one run of 5 tiers has 4, too few for a p99 that is not just the max.
    /// Default 1; with `--lockdown`, 3 (lockdowns and restores on one cluster).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,

    /// Give up on a plan after this many seconds (default: 4 x its critical path + 600).
    #[arg(long)]
    timeout: Option<u64>,

    /// How the local control plane runs. `lean` is tests/cluster/up.sh with UP_LEAN=true:
    /// no LimitRanger or ResourceQuota admission, Go's GC at GOGC=400, a bearer token instead
    /// of a client certificate; on 2 cores those costs of the simulated cluster outweigh the
    /// operator's. `default` runs the components' defaults, as the tests do. The chaos loop
    /// always runs the defaults.
    #[arg(long, value_enum, default_value = "lean")]
    control_plane: ControlPlane,

    /// Use this operator binary instead of building target/release/resurgo.
    #[arg(long, value_name = "PATH")]
    operator: Option<PathBuf>,

    /// Only print each scenario's plan figures (services, waves, critical path); start nothing.
    #[arg(long)]
    dry_run: bool,

    /// Only write each scenario's plan as JSON to PATH-<scenario>.json, to apply or profile
    /// it by hand; start nothing.
    #[arg(long, value_name = "PATH")]
    write_plans: Option<PathBuf>,

    /// Instead of the scenarios, run the chaos loop: N recoveries of a 7-service plan in 3
    /// tiers, each with the operator killed (kill -9) at a random moment and restarted, then
    /// one undisturbed recovery; prints a table of the trials and the invariants violated.
    #[arg(long, value_name = "N")]
    chaos: Option<u32>,

    /// Seed of the chaos loop's kill moments (default: from the clock, printed).
    #[arg(long)]
    chaos_seed: Option<u64>,

    /// Instead of the scenarios, run the lockdown bench (bench/lockdown.rs): `--bindings`
    /// human bindings suspended by an AccessPolicy's Lockdown and restored by Normal, timed
    /// from watches against the raw delete rate of the same API server, `--runs` times.
    #[arg(long, conflicts_with = "chaos")]
    lockdown: bool,

    /// Human bindings of the lockdown bench: 10 ClusterRoleBindings to cluster-admin, 10
    /// other ClusterRoleBindings, the rest RoleBindings in 20 namespaces.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(21..=100_000))]
    bindings: u64,
}

impl Args {
    fn runs(&self) -> u32 {
        self.runs.unwrap_or(if self.lockdown { 3 } else { 1 })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ControlPlane {
    Lean,
    Default,
}

impl ControlPlane {
    fn lean(self) -> bool {
        self == ControlPlane::Lean
    }

    /// For the reports: every figure says which control plane it was measured on.
    fn describe(self) -> &'static str {
        match self {
            ControlPlane::Lean => {
                "lean (UP_LEAN=true: no LimitRanger/ResourceQuota admission, GOGC=400, token auth)"
            }
            ControlPlane::Default => "the components' defaults",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    Lazio,
    Generated,
}

fn log(message: impl std::fmt::Display) {
    eprintln!("[bench] {message}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("[bench] ERROR: no async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let root = resurgo_tests::repo_root()
            .canonicalize()
            .unwrap_or_else(|_| resurgo_tests::repo_root());
        let mut teardown = Teardown::new(&root);
        let outcome = tokio::select! {
            result = run(&args, &root, &mut teardown) => result.map_err(Some),
            () = interrupted() => Err(None),
        };
        teardown.finish().await;
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(Some(error)) => {
                eprintln!("[bench] ERROR: {error:#}");
                ExitCode::FAILURE
            }
            Err(None) => {
                eprintln!("[bench] interrupted; the cluster and the operator are stopped");
                ExitCode::from(130)
            }
        }
    })
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// The scenarios of run `run` (from 0): the generated plan's seed goes up by one each run.
fn scenarios(args: &Args, root: &Path, run: u32) -> Result<Vec<Scenario>> {
    let mut scenarios = Vec::new();
    if matches!(args.scenario, Which::All | Which::Lazio) {
        scenarios.push(scenario::lazio(root, args.scale)?);
    }
    if matches!(args.scenario, Which::All | Which::Generated) {
        scenarios.push(scenario::generated(&Generate {
            services: args.services,
            tiers: args.tiers,
            seed: args.seed.wrapping_add(u64::from(run)),
            min_delay: Duration::from_millis(args.min_delay_ms),
            max_delay: Duration::from_millis(args.max_delay_ms),
            max_deps: args.max_deps,
            max_parallel: args.max_parallel,
        })?);
    }
    Ok(scenarios)
}

async fn run(args: &Args, root: &Path, teardown: &mut Teardown) -> Result<()> {
    let scenarios = scenarios(args, root, 0)?;
    if let Some(path) = &args.write_plans {
        for scenario in &scenarios {
            let file = PathBuf::from(format!("{}-{}.json", path.display(), scenario.name));
            std::fs::write(&file, serde_json::to_vec_pretty(&scenario.plan)?)
                .with_context(|| format!("write {}", file.display()))?;
            println!("{}", file.display());
        }
        return Ok(());
    }
    if args.dry_run {
        for scenario in &scenarios {
            let order = planner::plan(&scenario.spec).map_err(|errors| {
                anyhow::anyhow!("the {} plan is invalid: {errors:?}", scenario.name)
            })?;
            println!(
                "{}: {}\n  {} services, {} tiers, {} waves, critical path {:.3} s, {} pods, {} KiB",
                scenario.name,
                scenario.title,
                scenario.spec.services.len(),
                scenario.spec.tiers.len(),
                order.waves.len(),
                order.critical_path.length.as_secs_f64(),
                scenario.pods,
                serde_json::to_vec(&scenario.plan)?.len() / 1024
            );
        }
        return Ok(());
    }
    let operator = match &args.operator {
        Some(path) => path.clone(),
        None => build_operator(root).await?,
    };
    log("building (or reusing) the control plane: tests/cluster/build.sh");
    let status = Command::new(root.join("tests/cluster/build.sh"))
        .stdout(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("tests/cluster/build.sh failed ({status})");
    }

    let machine = machine();
    if let Some(trials) = args.chaos {
        let outcome = chaos::run(root, &operator, teardown, trials, args.chaos_seed).await;
        teardown.finish().await;
        let (seed, trials) = outcome?;
        let machine = format!("{machine}; control plane: the components' defaults");
        println!("{}", chaos::render(seed, &trials, &machine));
        let violations: usize = trials.iter().map(|t| t.violations.len()).sum();
        if violations > 0 {
            bail!("the chaos loop found {violations} violations");
        }
        return Ok(());
    }
    let machine = format!(
        "{machine}; control plane: {}",
        args.control_plane.describe()
    );
    if args.lockdown {
        let options = lockdown::Options {
            bindings: usize::try_from(args.bindings)?,
            runs: args.runs(),
            lean: args.control_plane.lean(),
        };
        let outcome = lockdown::run(root, &operator, teardown, &options).await;
        teardown.finish().await;
        let runs = outcome?;
        println!("{}", lockdown::render(&runs, options.bindings, &machine));
        let failures = lockdown::failures(&runs);
        if failures > 0 {
            bail!("{failures} bindings were not restored exactly");
        }
        return Ok(());
    }
    let mut reports = Vec::new();
    for run in 0..args.runs() {
        for scenario in &self::scenarios(args, root, run)? {
            if args.runs() > 1 {
                log(format!("run {} of {}", run + 1, args.runs()));
            }
            let report = run_scenario(args, root, &operator, scenario, run + 1, teardown).await;
            // Stop this scenario's operator and cluster before the next one starts.
            teardown.finish().await;
            let report = report?;
            println!("{}", report.render(&machine));
            reports.push(report);
        }
    }
    if reports.len() > 1 {
        println!("{}", summary_table(&reports, args.runs(), &machine));
    }
    Ok(())
}

/// `cargo build --release -p resurgo`; returns the binary it built.
async fn build_operator(root: &Path) -> Result<PathBuf> {
    log("building the operator: cargo build --release --locked -p resurgo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // `cargo run` gave this process the bench package's CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
    // ...; build scripts that depend on those (ring's) would see them changed and rebuild
    // the TLS stack and everything above it on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*name,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            command.env_remove(&*name);
        }
    }
    let output = command
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "resurgo",
            "--bin",
            "resurgo",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("run cargo")?
        .wait_with_output()
        .await?;
    if !output.status.success() {
        bail!(
            "cargo build --release -p resurgo failed ({})",
            output.status
        );
    }
    let mut executable = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "resurgo"
            && let Some(path) = message["executable"].as_str()
        {
            executable = Some(PathBuf::from(path));
        }
    }
    executable.context("cargo built no resurgo executable")
}

/// What a scenario measured.
struct Report {
    scenario: &'static str,
    /// Which run of the scenario this was, from 1 (see `--runs`).
    run: u32,
    title: String,
    services: usize,
    tiers: usize,
    waves: usize,
    critical_path: Duration,
    recovery: f64,
    analysis: Analysis,
    restore_to_workload: Vec<f64>,
    /// Per service, what the cluster adds to its simulated delay (see measure::cluster_latency).
    cluster_latency: Vec<f64>,
    /// From the last service ready to the plan's Ready condition seen.
    ready_condition_lag: f64,
    operator: cluster::ProcStats,
    /// CPU seconds of each process during the recovery.
    cpu: BTreeMap<String, f64>,
    reconciles: usize,
    reconcile_errors: usize,
    /// "starting" lines in the operator's log: one per service start.
    starts_logged: usize,
    /// Size of the plan object as served at the end (JSON), and of its managedFields.
    plan_object_bytes: usize,
    plan_managed_fields_bytes: usize,
    /// The operator's RSS just before the plan was created, KiB.
    idle_rss_kib: u64,
    /// (seconds since the plan was created, RSS KiB), every 250 ms.
    rss_samples: Vec<(f64, u64)>,
    /// API server requests during the recovery (all clients), by verb and resource.
    requests: cluster::RequestCounts,
    operator_log: PathBuf,
    plan_bytes: usize,
    /// Whether the 1.10 target of the issue (1,000 services in 5 tiers) applies.
    ratio_target: Option<(f64, &'static str)>,
}

async fn run_scenario(
    args: &Args,
    root: &Path,
    operator_binary: &Path,
    scenario: &Scenario,
    run: u32,
    teardown: &mut Teardown,
) -> Result<Report> {
    let name = scenario.plan_name().to_owned();
    let order = planner::plan(&scenario.spec)
        .map_err(|errors| anyhow::anyhow!("the {} plan is invalid: {errors:?}", scenario.name))?;
    let critical_path = order.critical_path.length;
    log(format!(
        "scenario {}: {} ({} services, {} waves, critical path {:.1} s)",
        scenario.name,
        scenario.title,
        scenario.spec.services.len(),
        order.waves.len(),
        critical_path.as_secs_f64()
    ));

    let cluster = cluster::up(teardown, scenario.name, args.control_plane.lean()).await?;
    cluster.install_crds(root).await?;
    // up.sh's node holds 250 pods; this one holds the rest with room to spare.
    cluster.add_node("bench-node", scenario.pods + 100).await?;
    for namespace in &scenario.namespaces {
        cluster.create_namespace(namespace).await?;
    }
    let log_file = root.join("target/bench").join(if args.runs() > 1 {
        format!("operator-{}-{run}.log", scenario.name)
    } else {
        format!("operator-{}.log", scenario.name)
    });
    let operator = Operator::start(operator_binary, &cluster, &log_file).await?;
    let pid = operator.pid;
    log(format!(
        "operator running (pid {pid}, log {})",
        log_file.display()
    ));
    teardown.operator = Some(operator);

    // Watches first, so that the first object of the plan is seen being created.
    let timeline: measure::Timeline = Arc::new(Mutex::new(BTreeMap::new()));
    // Dropped (aborted) with this function's future: on errors and on Ctrl-C too.
    let (deployments, deployments_synced) = measure::watch(
        Api::<Deployment>::all(cluster.client.clone()),
        &name,
        measure::deployment_ready,
        timeline.clone(),
    );
    let (jobs, jobs_synced) = measure::watch(
        Api::<Job>::all(cluster.client.clone()),
        &name,
        measure::job_complete,
        timeline.clone(),
    );
    let _ = deployments_synced.await;
    let _ = jobs_synced.await;

    let requests_before = cluster.request_counts().await;
    let cpu_before = cpu_snapshot(&cluster, pid);
    let plan: DynamicObject = serde_json::from_value(scenario.plan.clone())?;
    let plan_bytes = serde_json::to_vec(&scenario.plan)?.len();
    let plans: Api<DynamicObject> = Api::all_with(
        cluster.client.clone(),
        &ApiResource::erase::<RecoveryPlan>(&()),
    );
    let timeout = Duration::from_secs(args.timeout.unwrap_or(4 * critical_path.as_secs() + 600));
    log(format!(
        "creating recoveryplan/{name} ({} KiB); giving it {} s",
        plan_bytes / 1024,
        timeout.as_secs()
    ));
    let idle_rss = proc_stats(pid).map(|s| s.rss_kib).unwrap_or_default();
    let applied = Instant::now();
    plans
        .create(&PostParams::default(), &plan)
        .await
        .with_context(|| format!("create recoveryplan/{name}"))?;
    // The operator's RSS every 250 ms, to show how its memory grows through the recovery.
    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let rss_samples = rss_samples.clone();
        measure::AbortOnDrop(tokio::spawn(async move {
            loop {
                if let Ok(stats) = proc_stats(pid) {
                    let at = applied.elapsed().as_secs_f64();
                    rss_samples
                        .lock()
                        .expect("rss samples lock")
                        .push((at, stats.rss_kib));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }))
    };
    let waited = measure::plan_ready(
        Api::<RecoveryPlan>::all(cluster.client.clone()),
        &name,
        applied + timeout,
    )
    .await;
    drop(sampler);
    let (ready_at, _status) = match waited {
        Ok(ready) => ready,
        Err(error) => {
            log(format!(
                "the operator's log ({}) ends with:\n{}",
                log_file.display(),
                cluster::tail(&log_file, 20)
            ));
            return Err(error);
        }
    };
    let recovery = (ready_at - applied).as_secs_f64();
    log(format!("recoveryplan/{name} Ready after {recovery:.2} s"));
    let cpu_after = cpu_snapshot(&cluster, pid);
    let operator_stats = proc_stats(pid)?;
    let requests_after = cluster.request_counts().await;
    let requests = requests_after
        .iter()
        .map(|(key, (count, seconds))| {
            let (count_before, seconds_before) =
                requests_before.get(key).copied().unwrap_or_default();
            (
                key.clone(),
                (count - count_before, seconds - seconds_before),
            )
        })
        .filter(|(key, (count, _))| *count > 0.0 && !key.starts_with("WATCH"))
        .collect();
    let served = plans.get(&name).await?;
    let plan_object_bytes = serde_json::to_vec(&served)?.len();
    let plan_managed_fields_bytes = serde_json::to_vec(&served.metadata.managed_fields)?.len();

    // The plan is Ready only after the operator saw every object ready; give this
    // process's watches a moment to catch up before reading them.
    let settle = Instant::now() + Duration::from_secs(10);
    let objects = loop {
        let objects = timeline.lock().expect("timeline lock").clone();
        let times = measure::service_times(&objects, applied);
        if times.len() == scenario.spec.services.len() || Instant::now() > settle {
            break objects;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((deployments, jobs));
    let times = measure::service_times(&objects, applied);
    let analysis = measure::analyze(&scenario.spec, &order, &times);
    let log_text = std::fs::read_to_string(&log_file).unwrap_or_default();
    let cpu = cpu_after
        .iter()
        .map(|(k, after)| {
            let before = cpu_before.get(k).copied().unwrap_or_default();
            (k.clone(), after.saturating_sub(before).as_secs_f64())
        })
        .collect();
    let ratio_target = match scenario.name {
        "lazio" => Some((1.05, "examples/lazio")),
        _ if scenario.spec.services.len() == 1000 && scenario.spec.tiers.len() == 5 => {
            Some((1.10, "1,000 services in 5 tiers"))
        }
        _ => None,
    };
    Ok(Report {
        scenario: scenario.name,
        run,
        title: scenario.title.clone(),
        services: scenario.spec.services.len(),
        tiers: scenario.spec.tiers.len(),
        waves: order.waves.len(),
        critical_path,
        recovery,
        restore_to_workload: measure::restore_to_workload(&objects),
        cluster_latency: measure::cluster_latency(&objects, &scenario.delays),
        ready_condition_lag: recovery - analysis.last_ready,
        analysis,
        operator: operator_stats,
        cpu,
        reconciles: log_text.matches("reconciled").count(),
        starts_logged: log_text.matches(" starting ").count(),
        plan_object_bytes,
        plan_managed_fields_bytes,
        idle_rss_kib: idle_rss,
        rss_samples: rss_samples.lock().expect("rss samples lock").clone(),
        requests,
        reconcile_errors: log_text.matches("reconcile failed").count(),
        operator_log: log_file,
        plan_bytes,
        ratio_target,
    })
}

/// CPU time so far of the control plane's processes, the operator and this process.
fn cpu_snapshot(cluster: &Cluster, operator: u32) -> BTreeMap<String, Duration> {
    let mut cpu = cluster.component_cpu();
    if let Ok(stats) = proc_stats(operator) {
        cpu.insert("resurgo (operator)".into(), stats.cpu);
    }
    if let Ok(stats) = proc_stats(std::process::id()) {
        cpu.insert("bench (this process)".into(), stats.cpu);
    }
    cpu
}

/// The machine, as one line.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(
            || "? GiB".into(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {memory} RAM, Linux {}",
        kernel.trim()
    )
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl Report {
    fn ratio(&self) -> f64 {
        self.recovery / self.critical_path.as_secs_f64()
    }

    fn boundary_summary(&self) -> Option<Summary> {
        summary(
            &self
                .analysis
                .boundaries
                .iter()
                .map(|b| b.overhead)
                .collect::<Vec<_>>(),
        )
    }

    fn render(&self, machine: &str) -> String {
        let mut out = String::new();
        let a = &self.analysis;
        let _ = writeln!(out);
        let _ = writeln!(out, "== scenario {}: {}", self.scenario, self.title);
        let _ = writeln!(out, "machine: {machine}");
        let _ = writeln!(
            out,
            "plan: {} services, {} tiers, {} waves, critical path {:.3} s, {} KiB",
            self.services,
            self.tiers,
            self.waves,
            self.critical_path.as_secs_f64(),
            self.plan_bytes / 1024
        );
        if !a.missing.is_empty() {
            let _ = writeln!(
                out,
                "WARNING: the watches never saw {} services ready: {:?}",
                a.missing.len(),
                &a.missing[..a.missing.len().min(10)]
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<66} {:>14}  target", "figure", "measured");
        let row = |out: &mut String, what: &str, value: String, target: &str, verdict: &str| {
            let _ = writeln!(out, "{what:<66} {value:>14}  {target:<11} {verdict}");
        };
        match self.boundary_summary() {
            Some(s) => {
                row(
                    &mut out,
                    "ordering overhead per tier boundary, p50",
                    ms(s.p50),
                    "",
                    "",
                );
                row(
                    &mut out,
                    "ordering overhead per tier boundary, p99",
                    ms(s.p99),
                    "<= 50 ms",
                    verdict(s.p99 <= 0.050),
                );
                row(
                    &mut out,
                    "ordering overhead per tier boundary, max",
                    ms(s.max),
                    "",
                    "",
                );
                let each: Vec<String> = a
                    .boundaries
                    .iter()
                    .map(|b| format!("{}->{} {}", b.from, b.to, ms(b.overhead)))
                    .collect();
                let _ = writeln!(out, "  ({} boundaries: {})", s.n, each.join(", "));
            }
            None => {
                let _ = writeln!(out, "  (one tier: no tier boundary)");
            }
        }
        let starts = |filter: &dyn Fn(&Gate) -> bool| -> Option<Summary> {
            summary(
                &a.starts
                    .iter()
                    .filter(|s| filter(&s.gate))
                    .map(|s| s.latency)
                    .collect::<Vec<_>>(),
            )
        };
        for (what, s) in [
            (
                "service start after its last prerequisite, all",
                starts(&|_| true),
            ),
            (
                "  ... the last prerequisite a dependency (dep edge)",
                starts(&|g| matches!(g, Gate::Dependency(_))),
            ),
            (
                "  ... the last prerequisite the tier barrier",
                starts(&|g| *g == Gate::Barrier),
            ),
        ] {
            if let Some(s) = s {
                row(
                    &mut out,
                    &format!("{what} (n={}) p50/p99", s.n),
                    format!("{:.0}/{:.0} ms", s.p50 * 1000.0, s.p99 * 1000.0),
                    "",
                    "",
                );
                row(&mut out, "      max", ms(s.max), "", "");
            }
        }
        if let Some(worst) = a
            .starts
            .iter()
            .max_by(|x, y| x.latency.total_cmp(&y.latency))
        {
            let gate = match &worst.gate {
                Gate::Barrier => "the tier barrier".to_owned(),
                Gate::Dependency(d) => format!("dependency {d}"),
            };
            let _ = writeln!(
                out,
                "  (slowest start: {} after {gate}, {})",
                worst.service,
                ms(worst.latency)
            );
        }
        if let Some(s) = summary(&self.restore_to_workload) {
            row(
                &mut out,
                &format!(
                    "restore Job complete -> workload created (n={}) p50/max",
                    s.n
                ),
                format!("{:.0}/{:.0} ms", s.p50 * 1000.0, s.max * 1000.0),
                "",
                "",
            );
        }
        let negative = a.starts.iter().filter(|s| s.latency < 0.0).count();
        if negative > 0 {
            let _ = writeln!(
                out,
                "  WARNING: {negative} services were seen created before their last prerequisite was seen ready"
            );
        }
        row(
            &mut out,
            "plan applied -> first object created",
            ms(a.first_object),
            "",
            "",
        );
        row(
            &mut out,
            "last service ready -> plan Ready condition seen",
            ms(self.ready_condition_lag),
            "",
            "",
        );
        row(
            &mut out,
            "critical path (planner)",
            format!("{:.3} s", self.critical_path.as_secs_f64()),
            "",
            "",
        );
        row(
            &mut out,
            "total recovery time (apply -> plan Ready)",
            format!("{:.3} s", self.recovery),
            "",
            "",
        );
        match self.ratio_target {
            Some((target, what)) => row(
                &mut out,
                "recovery time / critical path",
                format!("{:.4}", self.ratio()),
                &format!("<= {target:.2}"),
                &format!("{} ({what})", verdict(self.ratio() <= target)),
            ),
            None => row(
                &mut out,
                "recovery time / critical path",
                format!("{:.4}", self.ratio()),
                "",
                "(targets: 1.05 lazio, 1.10 at 1,000 services in 5 tiers)",
            ),
        }
        let critical = self.critical_path.as_secs_f64();
        row(
            &mut out,
            "  ... same, had nothing waited for the operator",
            format!("{:.4}", a.without_ordering_overhead / critical),
            "",
            "(services taking as long as they took)",
        );
        if let Some(first) = a.chain.first() {
            let (waited, expected, in_cluster) = a.chain_totals();
            row(
                &mut out,
                &format!(
                    "the chain that finished last, as it ran ({} services)",
                    a.chain.len()
                ),
                format!("{:.3} s", a.last_ready),
                "",
                &format!(
                    "(from {} to {})",
                    first.service,
                    a.chain[a.chain.len() - 1].service
                ),
            );
            row(
                &mut out,
                "  ... its expected durations",
                format!("{expected:.3} s"),
                "",
                "",
            );
            row(
                &mut out,
                "  ... its starts after their last prerequisite (operator)",
                format!("{waited:.3} s"),
                "",
                &format!("(the first, from the apply: {})", ms(first.start_latency)),
            );
            row(
                &mut out,
                "  ... its time in the cluster beyond expected (cluster)",
                format!("{in_cluster:.3} s"),
                "",
                "",
            );
            let _ = writeln!(
                out,
                "  (each link: service start/cluster ms, the start counted from its last prerequisite)"
            );
            for links in a.chain.chunks(6) {
                let line: Vec<String> = links
                    .iter()
                    .map(|link| {
                        format!(
                            "{} {:.0}/{:.0}",
                            link.service,
                            link.start_latency * 1000.0,
                            link.in_cluster * 1000.0
                        )
                    })
                    .collect();
                let _ = writeln!(out, "    {}", line.join(", "));
            }
        }
        if let Some(s) = summary(&self.cluster_latency) {
            row(
                &mut out,
                &format!(
                    "cluster time per service beyond its delay (n={}) p50/p99",
                    s.n
                ),
                format!("{:.0}/{:.0} ms", s.p50 * 1000.0, s.p99 * 1000.0),
                "",
                "(ReplicaSet, pod, scheduler, kwok)",
            );
        }
        let mib = self.operator.peak_rss_kib as f64 / 1024.0;
        row(
            &mut out,
            "operator peak RSS (VmHWM)",
            format!("{mib:.1} MiB"),
            "<= 64 MiB",
            verdict(mib <= 64.0),
        );
        row(
            &mut out,
            "operator RSS before the plan was created",
            format!("{:.1} MiB", self.idle_rss_kib as f64 / 1024.0),
            "",
            "",
        );
        if !self.rss_samples.is_empty() {
            // The highest sample in each tenth of the recovery.
            let tenths: Vec<String> = (0..10)
                .map(|i| {
                    let (from, to) = (
                        self.recovery * i as f64 / 10.0,
                        self.recovery * (i + 1) as f64 / 10.0,
                    );
                    let max = self
                        .rss_samples
                        .iter()
                        .filter(|(at, _)| *at >= from && *at < to)
                        .map(|(_, kib)| *kib)
                        .max()
                        .unwrap_or_default();
                    format!("{:.0}", max as f64 / 1024.0)
                })
                .collect();
            let _ = writeln!(
                out,
                "  (operator RSS, highest sample in each tenth of the recovery, MiB: {})",
                tenths.join(" ")
            );
        }
        row(
            &mut out,
            "operator RSS at the end (VmRSS)",
            format!("{:.1} MiB", self.operator.rss_kib as f64 / 1024.0),
            "",
            "",
        );
        row(
            &mut out,
            "operator CPU since start (utime+stime)",
            format!("{:.2} s", self.operator.cpu.as_secs_f64()),
            "",
            "",
        );
        row(
            &mut out,
            "operator reconciles (failed)",
            format!("{} ({})", self.reconciles, self.reconcile_errors),
            "",
            "",
        );
        row(
            &mut out,
            "service starts logged by the operator / services",
            format!("{} / {}", self.starts_logged, self.services),
            "",
            "",
        );
        row(
            &mut out,
            "recoveryplan object at the end: JSON / of it managedFields",
            format!(
                "{} / {} KiB",
                self.plan_object_bytes / 1024,
                self.plan_managed_fields_bytes / 1024
            ),
            "",
            "",
        );
        let _ = writeln!(
            out,
            "CPU seconds during the recovery ({:.1} s wall, {} cores):",
            self.recovery,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let mut cpu: Vec<(&String, &f64)> = self.cpu.iter().collect();
        cpu.sort_by(|a, b| b.1.total_cmp(a.1));
        for (name, seconds) in cpu {
            let _ = writeln!(
                out,
                "  {name:<28} {seconds:>8.2} s  ({:>5.1}% of one core)",
                seconds / self.recovery * 100.0
            );
        }
        let mut requests: Vec<(&String, &(f64, f64))> = self.requests.iter().collect();
        requests.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let total: f64 = requests.iter().map(|(_, (n, _))| n).sum();
        let _ = writeln!(
            out,
            "API server requests during the recovery, all clients ({total:.0}; the 20 costliest, WATCH excluded):"
        );
        for (key, (count, seconds)) in requests.iter().take(20) {
            let _ = writeln!(
                out,
                "  {key:<40} {count:>8.0}  {seconds:>8.2} s served  ({:>6.1} ms each)",
                seconds / count * 1000.0
            );
        }
        let _ = writeln!(out, "operator log: {}", self.operator_log.display());
        out
    }
}

fn summary_table(reports: &[Report], runs: u32, machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== summary ({machine})");
    let _ = writeln!(
        out,
        "{:<14} {:>9} {:>18} {:>12} {:>12} {:>8} {:>10}",
        "scenario", "services", "tier boundary p99", "critical", "recovery", "ratio", "peak RSS"
    );
    for r in reports {
        let p99 = r
            .boundary_summary()
            .map_or_else(|| "-".to_owned(), |s| ms(s.p99));
        let scenario = if runs > 1 {
            format!("{} #{}", r.scenario, r.run)
        } else {
            r.scenario.to_owned()
        };
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>18} {:>10.1} s {:>10.1} s {:>8.4} {:>6.1} MiB",
            scenario,
            r.services,
            p99,
            r.critical_path.as_secs_f64(),
            r.recovery,
            r.ratio(),
            r.operator.peak_rss_kib as f64 / 1024.0
        );
    }
    if runs > 1 {
        let mut names: Vec<&str> = reports.iter().map(|r| r.scenario).collect();
        names.dedup();
        for name in names {
            let of: Vec<&Report> = reports.iter().filter(|r| r.scenario == name).collect();
            let overheads: Vec<f64> = of
                .iter()
                .flat_map(|r| r.analysis.boundaries.iter().map(|b| b.overhead))
                .collect();
            let ratios = of.iter().map(|r| r.ratio());
            let (low, high) = ratios.fold((f64::INFINITY, 0.0_f64), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
            let rss = of
                .iter()
                .map(|r| r.operator.peak_rss_kib)
                .max()
                .unwrap_or(0);
            let boundaries = summary(&overheads).map_or_else(
                || "no tier boundaries".to_owned(),
                |s| {
                    format!(
                        "{} tier boundaries: p50 {}, p99 {} ({}), max {}",
                        s.n,
                        ms(s.p50),
                        ms(s.p99),
                        verdict(s.p99 <= 0.050),
                        ms(s.max)
                    )
                },
            );
            let _ = writeln!(
                out,
                "{name}, {} runs pooled: {boundaries}; ratio {low:.4}-{high:.4}; peak RSS {:.1} MiB",
                of.len(),
                rss as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        out,
        "targets: tier boundary p99 <= 50 ms; ratio <= 1.05 (lazio), <= 1.10 (1,000 services in 5 tiers); peak RSS <= 64 MiB"
    );
    out
}
