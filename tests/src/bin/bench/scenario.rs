//! The plans the benchmark runs: the Lazio example with its durations scaled down, and a
//! generated plan of N services in T tiers. Both carry their simulated readiness delays as a
//! pod annotation that kwok's pod-ready stage honours (see tests/cluster/build.sh).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use resurgo::{
    api::{common::Duration as PlanDuration, recovery_plan::RecoveryPlanSpec},
    planner::{self, DEFAULT_EXPECTED_DURATION},
};
use serde_json::{Value, json};

/// The pod annotation kwok's pod-ready stage reads: the pod becomes Running and Ready that
/// long after it is scheduled (a Job's pod completes right after).
pub const DELAY_ANNOTATION: &str = "pod-ready.stage.kwok.x-k8s.io/delay";

/// A plan to run, with what the benchmark needs to know about it.
pub struct Scenario {
    /// Short name: `lazio` or `generated`.
    pub name: &'static str,
    /// One line saying what it is.
    pub title: String,
    /// The RecoveryPlan object to create.
    pub plan: Value,
    pub spec: RecoveryPlanSpec,
    /// Namespaces that must exist before the plan runs (those of Verify services: their data
    /// survived, so their namespace is already there).
    pub namespaces: Vec<String>,
    /// Pods the plan creates at most, so that the fake nodes have room for all of them.
    pub pods: usize,
    /// The simulated readiness delay of each service: how long kwok holds its pods.
    pub delays: BTreeMap<String, Duration>,
}

impl Scenario {
    pub fn plan_name(&self) -> &str {
        self.plan["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Adds the readiness delay to a pod template (`spec.template` of a Deployment or a Job).
fn delay_pods(template: &mut Value, delay: Duration) -> Result<()> {
    let template = template
        .as_object_mut()
        .context("a pod template that is not an object")?;
    let metadata = template.entry("metadata").or_insert_with(|| json!({}));
    let metadata = metadata
        .as_object_mut()
        .context("pod template metadata that is not an object")?;
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    let annotations = annotations
        .as_object_mut()
        .context("pod template annotations that are not an object")?;
    annotations.insert(DELAY_ANNOTATION.into(), json!(millis(delay)));
    Ok(())
}

/// `duration / scale`, at least 1 ms (a zero duration is not a valid `expectedDuration`).
fn scaled(duration: Duration, scale: f64) -> Duration {
    let millis = (duration.as_secs_f64() * 1000.0 / scale).round().max(1.0);
    Duration::from_millis(millis as u64)
}

/// examples/lazio/recovery-plan.yaml with every `expectedDuration` divided by `scale`, and the
/// same duration as the readiness delay of the service's pods:
/// - the pods of its workload Deployments/StatefulSets/DaemonSets, when it has a workload;
/// - otherwise (a Verify service) the pods of its check Jobs, so that verifying takes its
///   expected time too.
///
/// Data-restore Jobs get no delay: the service's whole expected duration is spent in its
/// workload, and the restore step costs what it costs the cluster (a Job round trip).
pub fn lazio(root: &Path, scale: f64) -> Result<Scenario> {
    ensure!(scale > 0.0, "--scale must be positive");
    let path = root.join("examples/lazio/recovery-plan.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut documents =
        resurgo::yaml::documents(&text).with_context(|| format!("parse {}", path.display()))?;
    ensure!(
        documents.len() == 1,
        "{} has {} documents, expected one RecoveryPlan",
        path.display(),
        documents.len()
    );
    let mut plan = documents.remove(0);
    // The example waits for an Incident (`trigger: Incident`); the bench measures the
    // recovery itself, from the moment the plan may start.
    if let Some(spec) = plan.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("trigger");
    }
    let mut namespaces = Vec::new();
    let mut pods = 0;
    let mut delays = BTreeMap::new();
    let services = plan
        .pointer_mut("/spec/services")
        .and_then(Value::as_array_mut)
        .context("the Lazio plan has no spec.services")?;
    for service in services {
        let name = service["name"].as_str().unwrap_or_default().to_owned();
        // A workload restored from a backup needs a backup and its key; the backup bench
        // measures that path. Here the service gets a Deployment of its own name instead,
        // which carries its delay like every other workload.
        if service.pointer("/workload/fromBackup").is_some() {
            service["workload"] = json!({"manifests": [stand_in_deployment(&name)]});
        }
        let expected = match service["expectedDuration"].as_str() {
            Some(text) => PlanDuration::from(text)
                .to_std()
                .with_context(|| format!("service {name}"))?,
            None => DEFAULT_EXPECTED_DURATION,
        };
        let delay = scaled(expected, scale);
        service["expectedDuration"] = json!(millis(delay));
        delays.insert(name.clone(), delay);

        let mut delayed = 0;
        if let Some(manifests) = service
            .pointer_mut("/workload/manifests")
            .and_then(Value::as_array_mut)
        {
            for manifest in manifests {
                let kind = manifest["kind"].as_str().unwrap_or_default();
                if matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
                    pods += manifest["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                    delay_pods(&mut manifest["spec"]["template"], delay)
                        .with_context(|| format!("service {name}"))?;
                    delayed += 1;
                }
            }
        }
        if service.pointer("/dataRestore").is_some() {
            pods += 1;
        }
        if let Some(checks) = service
            .pointer_mut("/readiness/checks")
            .and_then(Value::as_array_mut)
        {
            for check in checks {
                pods += 1;
                if delayed == 0 {
                    delay_pods(&mut check["spec"]["template"], delay)
                        .with_context(|| format!("service {name}"))?;
                }
            }
        }
        if service["action"] == "Verify" {
            namespaces.push(service["namespace"].as_str().unwrap_or_default().to_owned());
        }
    }
    let spec: RecoveryPlanSpec = serde_json::from_value(plan["spec"].clone())
        .context("the scaled Lazio plan does not read as a RecoveryPlanSpec")?;
    Ok(Scenario {
        name: "lazio",
        title: format!(
            "examples/lazio/recovery-plan.yaml, durations divided by {scale} (1m -> {:.3}s)",
            60.0 / scale
        ),
        plan,
        spec,
        namespaces,
        pods,
        delays,
    })
}

/// A Deployment the restricted Pod Security level admits, standing in for a workload the
/// example restores from a backup.
fn stand_in_deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "main", "image": "registry.example/app:1",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    })
}

/// A small seeded generator (SplitMix64): the same seed gives the same plan everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for choosing services and delays.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// What the generated plan looks like.
#[derive(Clone, Debug)]
pub struct Generate {
    pub services: usize,
    pub tiers: usize,
    pub seed: u64,
    /// Readiness delays are uniform in `[min_delay, max_delay]`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Each service depends on 0 to this many others.
    pub max_deps: usize,
    pub max_parallel: u32,
}

/// The name of the `i`th generated service.
fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// A Deployment of one replica that the restricted Pod Security level admits, whose pod kwok
/// makes Ready `delay` after it is scheduled.
fn deployment(name: &str, delay: Duration) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {DELAY_ANNOTATION: millis(delay)}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "main", "image": "registry.example/app:1",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    })
}

/// N services split evenly over T tiers (`tier-1` most urgent), each in its own namespace
/// with one Deployment. Each service depends on 0..=max_deps services chosen at random, each
/// with even odds an earlier service of its own tier or any service of an earlier tier (so
/// the graph has no cycle and no dependency on a later tier). Its readiness delay, which is
/// also its `expectedDuration`, is uniform in [min_delay, max_delay].
pub fn generated(options: &Generate) -> Result<Scenario> {
    let Generate {
        services: n,
        tiers: t,
        seed,
        min_delay,
        max_delay,
        max_deps,
        max_parallel,
    } = options.clone();
    ensure!(
        (1..=1000).contains(&n),
        "--services must be 1..=1000 (the CRD allows 1000)"
    );
    ensure!(
        (1..=16).contains(&t),
        "--tiers must be 1..=16 (the CRD allows 16)"
    );
    ensure!(t <= n, "--tiers cannot exceed --services");
    ensure!(min_delay <= max_delay, "--min-delay exceeds --max-delay");
    ensure!(
        max_deps <= 64,
        "--max-deps must be at most 64 (the CRD allows 64)"
    );
    let mut rng = Rng::new(seed);
    let tier_of = |i: usize| i * t / n;
    let tier_start = |tier: usize| (tier * n).div_ceil(t);
    let span = (max_delay - min_delay).as_millis() as u64;
    let mut services = Vec::with_capacity(n);
    let mut delays = BTreeMap::new();
    for i in 0..n {
        let tier = tier_of(i);
        let start = tier_start(tier);
        let mut depends_on: Vec<String> = Vec::new();
        for _ in 0..rng.below(max_deps as u64 + 1) {
            let same_tier = i > start && (tier == 0 || rng.below(2) == 0);
            let dependency = if same_tier {
                start + rng.below((i - start) as u64) as usize
            } else if tier > 0 {
                rng.below(start as u64) as usize
            } else {
                continue;
            };
            let dependency = service_name(dependency);
            if !depends_on.contains(&dependency) {
                depends_on.push(dependency);
            }
        }
        let delay = min_delay + Duration::from_millis(rng.below(span + 1));
        let name = service_name(i);
        delays.insert(name.clone(), delay);
        services.push(json!({
            "name": name, "tier": format!("tier-{}", tier + 1), "namespace": format!("bench-{name}"),
            "dependsOn": depends_on, "expectedDuration": millis(delay),
            "workload": {"manifests": [deployment(&name, delay)]}
        }));
    }
    let tiers: Vec<Value> = (1..=t)
        .map(|k| json!({"name": format!("tier-{k}"), "rto": "72h"}))
        .collect();
    let plan = json!({
        "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
        "metadata": {"name": "bench-generated"},
        "spec": {"maxParallel": max_parallel, "onFailure": "HaltLowerTiers", "tiers": tiers, "services": services}
    });
    let spec: RecoveryPlanSpec = serde_json::from_value(plan["spec"].clone())
        .context("the generated plan does not read as a RecoveryPlanSpec")?;
    if let Err(errors) = planner::plan(&spec) {
        bail!("the generated plan is invalid: {errors:?}");
    }
    Ok(Scenario {
        name: "generated",
        title: format!(
            "{n} services in {t} tiers, seed {seed}, 0-{max_deps} dependencies each, \
             delays {}-{} ms, maxParallel {max_parallel}",
            min_delay.as_millis(),
            max_delay.as_millis()
        ),
        plan,
        spec,
        namespaces: Vec::new(),
        pods: n,
        delays,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Generate {
        Generate {
            services: 1000,
            tiers: 5,
            seed: 1,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_millis(3000),
            max_deps: 3,
            max_parallel: 1000,
        }
    }

    #[test]
    fn the_generated_plan_is_valid_reproducible_and_has_even_tiers() {
        let a = generated(&options()).unwrap();
        let b = generated(&options()).unwrap();
        assert_eq!(a.plan, b.plan);
        let order = planner::plan(&a.spec).unwrap();
        assert_eq!(order.tiers.len(), 5);
        assert!(order.tiers.iter().all(|t| t.services.len() == 200));
        assert!(
            a.delays
                .values()
                .all(|d| (500..=3000).contains(&d.as_millis()))
        );
        let other = generated(&Generate {
            seed: 2,
            ..options()
        })
        .unwrap();
        assert_ne!(a.plan, other.plan);
    }

    #[test]
    fn the_lazio_plan_is_scaled_and_its_pods_delayed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let scenario = lazio(&root, 60.0).unwrap();
        let order = planner::plan(&scenario.spec).unwrap();
        // 3m + (10m + 45m + 30m) + 20m + (2h + 1h), one second per minute.
        assert_eq!(order.critical_path.length, Duration::from_secs(288));
        assert_eq!(scenario.namespaces, ["finance"]);
        let services = scenario.plan["spec"]["services"].as_array().unwrap();
        let cup = services
            .iter()
            .find(|s| s["name"] == "cup-booking")
            .unwrap();
        assert_eq!(
            cup["workload"]["manifests"][0]["spec"]["template"]["metadata"]["annotations"]
                [DELAY_ANNOTATION],
            "120000ms"
        );
        let ledger = services
            .iter()
            .find(|s| s["name"] == "balance-ledger")
            .unwrap();
        assert_eq!(
            ledger["readiness"]["checks"][0]["spec"]["template"]["metadata"]["annotations"]
                [DELAY_ANNOTATION],
            "20000ms"
        );
        // It starts when applied, and nothing of it needs a backup.
        assert!(scenario.plan["spec"].get("trigger").is_none());
        let records = services
            .iter()
            .find(|s| s["name"] == "clinical-records")
            .unwrap();
        assert_eq!(
            records["workload"]["manifests"][0]["spec"]["template"]["metadata"]["annotations"]
                [DELAY_ANNOTATION],
            "45000ms"
        );
        assert!(
            services
                .iter()
                .all(|s| s.pointer("/workload/fromBackup").is_none())
        );
    }
}
