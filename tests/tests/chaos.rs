//! Chaos on the real control plane: the operator is killed with SIGKILL, or the
//! kube-apiserver is restarted, at a random moment of a recovery, and the recovery must end
//! exactly as an undisturbed one would: the plan Ready with a true status, no service started
//! before the services of earlier tiers and its dependencies were ready, every object created
//! once (one uid per name, never deleted, regenerated credentials generated once) and none
//! lost.
//!
//! Everything is asserted from watches this test holds, never from the operator's logs. The
//! random moments derive from a seed each test prints; `RESURGO_CHAOS_SEED=<seed>` replays
//! a run.
//!
//! The operators here are processes of this test (target/debug/resurgo, built by
//! tests/run.sh). Their plans carry `resurgo.dev/test-operator=<id>`, which the operator that
//! tests/run.sh shares between all tests ignores. The kube-apiserver test restarts the API
//! server of a control plane of its own (tests/cluster/up.sh), never the shared one.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::ApiResource,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use resurgo::api::recovery_plan::{PlanPhase, RecoveryPlan, ServicePhase};
use resurgo_tests::{install_crds, repo_root, unique_name};
use serde_json::{Value, json};
use tokio::sync::watch as signal;

const TEST_OPERATOR: &str = "resurgo.dev/test-operator";
const DELAY_ANNOTATION: &str = "pod-ready.stage.kwok.x-k8s.io/delay";

/// A small xorshift64* generator: the tests need reproducible random moments, not
/// cryptographic quality, and a seed a failing run can print.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("RESURGO_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("[chaos] {test}: seed {seed} (RESURGO_CHAOS_SEED={seed} replays it)");
        Self(seed)
    }

    /// Uniform enough in `[low, high]`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low + 1)
    }
}

/// One service of the chaos plan, as the assertions need it.
struct Svc {
    name: &'static str,
    tier: usize,
    depends_on: &'static [&'static str],
    /// How long kwok holds its pods before they are ready.
    delay_ms: u64,
}

/// Three tiers modelled on examples/lazio: dependencies within and across tiers, a data
/// restore Job and a regenerated Secret, so that every kind of object the operator creates
/// is there to be created twice or lost.
const SERVICES: &[Svc] = &[
    Svc {
        name: "dispatch",
        tier: 0,
        depends_on: &[],
        delay_ms: 900,
    },
    Svc {
        name: "ops-room",
        tier: 0,
        depends_on: &["dispatch"],
        delay_ms: 500,
    },
    Svc {
        name: "records",
        tier: 1,
        depends_on: &[],
        delay_ms: 700,
    },
    Svc {
        name: "lab",
        tier: 1,
        depends_on: &["records"],
        delay_ms: 600,
    },
    Svc {
        name: "radiology",
        tier: 1,
        depends_on: &[],
        delay_ms: 1100,
    },
    Svc {
        name: "cup",
        tier: 2,
        depends_on: &["records"],
        delay_ms: 500,
    },
    Svc {
        name: "website",
        tier: 2,
        depends_on: &[],
        delay_ms: 400,
    },
];
const TIERS: [&str; 3] = ["life-critical", "clinical", "booking"];
/// The service with a data restore Job and regenerated credentials.
const WITH_DATA: &str = "records";

fn restricted_pod(delay_ms: Option<u64>) -> Value {
    let mut template = json!({"spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": "registry.example/app:1",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }]
    }});
    if let Some(delay) = delay_ms {
        template["metadata"] = json!({"annotations": {DELAY_ANNOTATION: format!("{delay}ms")}});
    }
    template
}

fn chaos_plan(name: &str, id: &str) -> RecoveryPlan {
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|s| {
            let mut pod = restricted_pod(Some(s.delay_ms));
            pod["metadata"]["labels"] = json!({"app": s.name});
            let mut service = json!({
                "name": s.name, "tier": TIERS[s.tier], "namespace": format!("{name}-{}", s.name),
                "dependsOn": s.depends_on,
                "workload": {"manifests": [
                    {
                        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": s.name},
                        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": s.name}}, "template": pod}
                    },
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{}-config", s.name)},
                     "data": {"mode": "recovery"}}
                ]}
            });
            if s.name == WITH_DATA {
                let mut job_pod = restricted_pod(None);
                job_pod["spec"]["restartPolicy"] = json!("Never");
                service["dataRestore"] =
                    json!({"name": "load", "spec": {"backoffLimit": 0, "template": job_pod}});
                service["regenerateSecrets"] =
                    json!([{"name": "db-credentials", "keys": ["password"]}]);
            }
            service
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
        "metadata": {"name": name, "labels": {TEST_OPERATOR: id}},
        "spec": {
            "tiers": TIERS.iter().map(|t| json!({"name": t, "rto": "15m"})).collect::<Vec<_>>(),
            "services": services
        }
    }))
    .expect("a RecoveryPlan")
}

/// What the watches of a plan's objects saw.
#[derive(Default, Debug)]
struct Seen {
    /// Every uid seen under each "Kind namespace/name", in the order first seen: more than
    /// one means the object was created twice.
    uids: BTreeMap<String, Vec<String>>,
    /// Objects seen deleted.
    deleted: BTreeSet<String>,
    /// Every distinct content of each regenerated Secret: more than one means the
    /// credentials were generated again.
    secret_data: BTreeMap<String, Vec<Value>>,
    /// Deployments created and ready, in the API server's order (one watch stream).
    order: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Created(String),
    Ready(String),
}

/// The kinds the operator creates for a plan, all labelled `resurgo.dev/plan`.
fn managed_kinds() -> Vec<ApiResource> {
    use k8s_openapi::api::{
        batch::v1::Job,
        core::v1::{ConfigMap, Namespace, Secret},
        networking::v1::NetworkPolicy,
    };
    vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
    ]
}

fn key(kind: &str, object: &DynamicObject) -> String {
    format!(
        "{kind} {}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Ready the way the operator reads a Deployment: the controller saw the current spec and
/// every replica is updated and available.
fn deployment_ready(object: &DynamicObject) -> bool {
    let Ok(deployment) = serde_json::from_value::<Deployment>(
        serde_json::to_value(object).expect("an object serialises"),
    ) else {
        return false;
    };
    let Some(status) = &deployment.status else {
        return false;
    };
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) == wanted
        && status.available_replicas.unwrap_or(0) == wanted
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Available" && c.status == "True")
}

/// Watches every managed kind of `plan` into one [`Seen`]. The returned receiver counts the
/// Deployment steps seen so far; the tasks stop when the handles are dropped.
async fn record(
    client: &Client,
    plan: &str,
) -> (Arc<Mutex<Seen>>, signal::Receiver<usize>, Vec<AbortOnDrop>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (steps, on_step) = signal::channel(0);
    let steps = Arc::new(steps);
    let mut tasks = Vec::new();
    let mut synced = Vec::new();
    for resource in managed_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={plan}"));
        let (seen, steps) = (seen.clone(), steps.clone());
        let (done, on_done) = tokio::sync::oneshot::channel();
        synced.push(on_done);
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            let mut done = Some(done);
            let kind = resource.kind.clone();
            // Errors are expected while the API server is down: the watcher backs off and
            // re-lists, and a re-listed object shows the same uid again.
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let mut seen = seen.lock().expect("seen lock");
                match event {
                    Ok(Event::Apply(object) | Event::InitApply(object)) => {
                        let key = key(&kind, &object);
                        let uid = object.uid().unwrap_or_default();
                        let uids = seen.uids.entry(key.clone()).or_default();
                        if !uids.contains(&uid) {
                            uids.push(uid);
                        }
                        if kind == "Secret" {
                            let data = object.data["data"].clone();
                            let versions = seen.secret_data.entry(key).or_default();
                            if !versions.contains(&data) {
                                versions.push(data);
                            }
                        }
                        if kind == "Deployment" {
                            let name = object.name_any();
                            let mut new = vec![Step::Created(name.clone())];
                            if deployment_ready(&object) {
                                new.push(Step::Ready(name));
                            }
                            for step in new {
                                if !seen.order.contains(&step) {
                                    seen.order.push(step);
                                }
                            }
                            steps.send_replace(seen.order.len());
                        }
                    }
                    Ok(Event::Delete(object)) => {
                        seen.deleted.insert(key(&kind, &object));
                    }
                    Ok(Event::InitDone) => {
                        if let Some(done) = done.take() {
                            let _ = done.send(());
                        }
                    }
                    Ok(Event::Init) | Err(_) => {}
                }
            }
        })));
    }
    // Every watch has listed before the plan exists, so none misses an object's creation.
    for on_done in synced {
        let _ = on_done.await;
    }
    (seen, on_step, tasks)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An operator process of this test, selecting the plans labelled with its id. Killed when
/// dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// Starts `resurgo run` against `kubeconfig`; its output is appended to `log`, so that
    /// the log of a killed operator and of its successor read as one story.
    fn start(kubeconfig: &Path, id: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the operator log");
        let binary = repo_root().join("target/debug/resurgo");
        let child = Command::new(&binary)
            .arg("run")
            .arg(format!("--selector={TEST_OPERATOR}={id}"))
            .arg("--metrics-addr=127.0.0.1:0")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn,resurgo=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// SIGKILL: no graceful shutdown, no last status write.
    fn kill9(&mut self) {
        self.child.kill().expect("kill -9 the operator");
        self.child.wait().expect("reap the operator");
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits, through a watch that survives API server restarts, until the plan is Ready for
/// its current generation.
async fn until_ready(plans: &Api<RecoveryPlan>, name: &str, timeout: Duration) -> RecoveryPlan {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(plans.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let ready = async {
        while let Some(event) = stream.next().await {
            let Ok(plan) = event else { continue };
            let status = plan.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && status.observed_generation == plan.metadata.generation {
                return plan;
            }
        }
        unreachable!("a watcher with backoff never ends")
    };
    match tokio::time::timeout(timeout, ready).await {
        Ok(plan) => plan,
        Err(_) => panic!(
            "recoveryplan/{name} not Ready after {timeout:?}: {:#?}",
            plans.get_status(name).await.ok().and_then(|p| p.status)
        ),
    }
}

/// Every invariant of a recovery that was disturbed, checked against what the watches saw
/// and what the API server holds at the end. Returns the violations, one line each.
async fn violations(client: &Client, plan: &RecoveryPlan, seen: &Seen) -> Vec<String> {
    let name = plan.name_any();
    let mut found = Vec::new();

    // Order: a service's Deployment appears only after every Deployment of earlier tiers and
    // of its dependencies was seen ready, in one stream in the API server's order.
    let position = |step: &Step| seen.order.iter().position(|s| s == step);
    for service in SERVICES {
        let Some(created) = position(&Step::Created(service.name.into())) else {
            found.push(format!("{}: its Deployment was never seen", service.name));
            continue;
        };
        let prerequisites = SERVICES
            .iter()
            .filter(|s| s.tier < service.tier || service.depends_on.contains(&s.name));
        for before in prerequisites {
            match position(&Step::Ready(before.name.into())) {
                Some(ready) if ready < created => {}
                _ => found.push(format!(
                    "{} was created before {} was ready (tier {} / {})",
                    service.name, before.name, service.tier, before.tier
                )),
            }
        }
    }

    // Created once, never deleted, credentials generated once.
    for (key, uids) in &seen.uids {
        if uids.len() > 1 {
            found.push(format!("{key} was created {} times: {uids:?}", uids.len()));
        }
    }
    for key in &seen.deleted {
        found.push(format!("{key} was deleted"));
    }
    for (key, versions) in &seen.secret_data {
        if versions.len() > 1 {
            found.push(format!(
                "{key} was regenerated {} times during one recovery",
                versions.len()
            ));
        }
    }

    // Nothing lost: what the API server holds now is what the watches saw, uid for uid, and
    // it includes what the plan must have produced.
    let mut now = BTreeMap::new();
    for resource in managed_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let listed = api
            .list(&ListParams::default().labels(&format!("resurgo.dev/plan={name}")))
            .await
            .expect("list the plan's objects");
        for object in listed.items {
            now.insert(
                key(&resource.kind, &object),
                object.uid().unwrap_or_default(),
            );
        }
    }
    for (key, uids) in &seen.uids {
        match now.get(key) {
            None => found.push(format!("{key} was lost")),
            Some(uid) if uids.first() != Some(uid) => {
                found.push(format!("{key} has uid {uid}, first seen as {uids:?}"))
            }
            Some(_) => {}
        }
    }
    let mut expected: Vec<String> = SERVICES
        .iter()
        .flat_map(|s| {
            let ns = format!("{name}-{}", s.name);
            [
                format!("Namespace /{ns}"),
                format!("Deployment {ns}/{}", s.name),
                format!("ConfigMap {ns}/{}-config", s.name),
            ]
        })
        .collect();
    expected.push(format!("Job {name}-{WITH_DATA}/{WITH_DATA}-load"));
    expected.push(format!("Secret {name}-{WITH_DATA}/db-credentials"));
    for key in expected {
        if !now.contains_key(&key) {
            found.push(format!("{key} does not exist at the end"));
        }
    }

    // The status tells the truth: everything ready, counted, and conditions to match.
    let status = plan.status.clone().unwrap_or_default();
    let total = SERVICES.len() as u32;
    if status.phase != Some(PlanPhase::Recovered) {
        found.push(format!("phase {:?}, not Recovered", status.phase));
    }
    if (status.ready_services, status.total_services) != (total, total)
        || status.ready.as_deref() != Some(&format!("{total}/{total}"))
    {
        found.push(format!(
            "counts {}/{} ({:?}), not {total}/{total}",
            status.ready_services, status.total_services, status.ready
        ));
    }
    for (condition, expected) in [
        ("Ready", "True"),
        ("Progressing", "False"),
        ("Stalled", "False"),
    ] {
        let actual = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition)
            .map(|c| c.status.as_str());
        if actual != Some(expected) {
            found.push(format!(
                "condition {condition} is {actual:?}, not {expected}"
            ));
        }
    }
    let reported: BTreeSet<&str> = status.services.iter().map(|s| s.name.as_str()).collect();
    if reported != SERVICES.iter().map(|s| s.name).collect() {
        found.push(format!("status lists the services {reported:?}"));
    }
    for service in &status.services {
        if service.phase != ServicePhase::Ready || service.ready.is_none() {
            found.push(format!(
                "service {} is {:?} (ready {:?})",
                service.name, service.phase, service.ready
            ));
        }
    }
    for tier in &status.tiers {
        if tier.phase != PlanPhase::Recovered || tier.ready.is_none() {
            found.push(format!("tier {} is {:?}", tier.name, tier.phase));
        }
    }
    if status.tiers.len() != TIERS.len() {
        found.push(format!("status lists {} tiers", status.tiers.len()));
    }
    found
}

fn admin_kubeconfig() -> PathBuf {
    PathBuf::from(
        std::env::var_os("KUBECONFIG")
            .expect("KUBECONFIG is not set: run the integration tests through tests/run.sh"),
    )
}

fn work_dir() -> PathBuf {
    std::env::var_os("RESURGO_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// How a trial disturbs the recovery once the watches have seen `after_steps` Deployment
/// steps (created or ready).
enum Disturbance<'a> {
    KillOperator,
    RestartApiServer(&'a OwnCluster),
}

/// One recovery of the chaos plan, disturbed once at a random moment. Returns the
/// violations found and when (in Deployment steps) it was disturbed.
async fn trial(
    client: &Client,
    kubeconfig: &Path,
    rng: &mut Rng,
    disturbance: Disturbance<'_>,
) -> (Vec<String>, u64) {
    let name = unique_name("chaos");
    let id = name.clone();
    let log = work_dir().join(format!("{name}-operator.log"));
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    let (seen, mut steps, watches) = record(client, &name).await;

    // 2 steps per service; disturbing after the first and before the last keeps the
    // disturbance inside the recovery.
    let all_steps = 2 * SERVICES.len() as u64;
    let after_steps = rng.between(1, all_steps - 1);
    let jitter = Duration::from_millis(rng.between(0, 300));
    let mut operator = Operator::start(kubeconfig, &id, &log);
    plans
        .create(&PostParams::default(), &chaos_plan(&name, &id))
        .await
        .expect("create the plan");
    tokio::time::timeout(
        Duration::from_secs(60),
        steps.wait_for(|n| *n as u64 >= after_steps),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{name}: the recovery never reached step {after_steps}: {:?}\n{}",
            seen.lock().unwrap().order,
            operator.log_tail()
        )
    })
    .expect("the watches run");
    // The jitter moves the disturbance off the exact moment a watch event arrived, where
    // the operator is most likely in the middle of writing.
    tokio::time::sleep(jitter).await;
    match disturbance {
        Disturbance::KillOperator => {
            eprintln!("[chaos] {name}: kill -9 after step {after_steps} + {jitter:?}");
            operator.kill9();
            operator = Operator::start(kubeconfig, &id, &log);
        }
        Disturbance::RestartApiServer(cluster) => {
            eprintln!(
                "[chaos] {name}: restarting kube-apiserver after step {after_steps} + {jitter:?}"
            );
            cluster.restart_apiserver();
        }
    }

    let ready = until_ready(&plans, &name, Duration::from_secs(120)).await;
    // The plan is Ready only once the operator saw every Deployment ready; the test's own
    // watches may be a moment behind it.
    tokio::time::timeout(
        Duration::from_secs(30),
        steps.wait_for(|n| *n as u64 >= all_steps),
    )
    .await
    .ok();
    drop(watches);
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    let found = violations(client, &ready, &seen).await;
    if !found.is_empty() {
        eprintln!(
            "[chaos] {name}: the operator's log ends with:\n{}",
            operator.log_tail()
        );
    }
    drop(operator);
    plans
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the plan");
    (found, after_steps)
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_recovery_survives_the_operator_killed_at_random_moments() {
    install_crds().await;
    let client = resurgo_tests::client().await;
    let mut rng = Rng::seeded("kill -9");
    let mut report = Vec::new();
    for trial_number in 1..=3 {
        let (found, after) = trial(
            &client,
            &admin_kubeconfig(),
            &mut rng,
            Disturbance::KillOperator,
        )
        .await;
        report.push(format!(
            "trial {trial_number}: killed after step {after}: {} violations {found:#?}",
            found.len()
        ));
    }
    let clean = report.iter().all(|r| r.contains(": 0 violations"));
    assert!(clean, "{}", report.join("\n"));
}

/// A control plane of this test's own, torn down when dropped (also when the test panics).
struct OwnCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl OwnCluster {
    fn up() -> Self {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("resurgo-chaos-apiserver.{}", std::process::id()));
        let output = Command::new(repo_root().join("tests/cluster/up.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/cluster/up.sh");
        // Owned from here, so that a failed start is torn down too.
        let cluster = Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        };
        assert!(output.status.success(), "tests/cluster/up.sh failed");
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let output = Command::new(resurgo_tests::k8s_bin().join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn client(&self) -> Client {
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&self.kubeconfig).expect("read the kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("a client config");
        Client::try_from(config).expect("a client")
    }

    /// tests/cluster/restart-apiserver.sh: stops the API server and starts it again with
    /// the same command line, then waits until it is ready.
    fn restart_apiserver(&self) {
        let status = Command::new(repo_root().join("tests/cluster/restart-apiserver.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status()
            .expect("run tests/cluster/restart-apiserver.sh");
        assert!(status.success(), "restart-apiserver.sh failed ({status})");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/cluster/down.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test]
#[ignore = "needs cluster: run tests/run.sh"]
async fn a_recovery_survives_a_kube_apiserver_restart() {
    let cluster = OwnCluster::up();
    let crds = repo_root().join("crds");
    let crds = crds.to_str().unwrap();
    cluster.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=resurgo-tests",
        "-f",
        crds,
    ]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        crds,
    ]);
    let client = cluster.client().await;
    // Discovery can lag the Established condition by a moment.
    let plans: Api<RecoveryPlan> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while plans.list(&ListParams::default().limit(1)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "RecoveryPlans not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut rng = Rng::seeded("kube-apiserver restart");
    let (found, after) = trial(
        &client,
        &cluster.kubeconfig,
        &mut rng,
        Disturbance::RestartApiServer(&cluster),
    )
    .await;
    assert!(
        found.is_empty(),
        "kube-apiserver restarted after step {after}: {found:#?}"
    );
}
