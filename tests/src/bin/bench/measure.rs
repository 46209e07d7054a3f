//! What the benchmark measures, from watch streams only: client-side arrival times of the
//! first event showing each of the plan's Deployments and Jobs (created) and the first
//! showing it ready (Deployment Available with every replica, Job Complete), and of the plan's
//! Ready condition. Then the figures computed from them.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use resurgo::{
    api::recovery_plan::{RecoveryPlan, RecoveryPlanSpec, RecoveryPlanStatus},
    planner::RecoveryOrder,
};
use serde::de::DeserializeOwned;
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

/// When one object was first seen, and first seen ready.
#[derive(Clone, Debug)]
pub struct ObjectTimes {
    pub service: String,
    /// `resurgo.dev/part`: workload, restore or check.
    pub part: String,
    pub created: Instant,
    pub ready: Option<Instant>,
}

/// Every object of the plan seen so far, by "Kind namespace/name".
pub type Timeline = Arc<Mutex<BTreeMap<String, ObjectTimes>>>;

/// A spawned task that is aborted when this is dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the plan's objects of kind `K` (label `resurgo.dev/plan=<plan>`) into `timeline`.
/// The receiver fires once the first list is done, so that nothing created later is missed.
pub fn watch<K>(
    api: Api<K>,
    plan: &str,
    ready: fn(&K) -> bool,
    timeline: Timeline,
) -> (AbortOnDrop, oneshot::Receiver<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&format!("resurgo.dev/plan={plan}"));
    let (synced, on_synced) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut synced = Some(synced);
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            let object = match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => object,
                Ok(Event::InitDone) => {
                    if let Some(synced) = synced.take() {
                        let _ = synced.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(error) => {
                    eprintln!("[bench] watch of {}s: {error} (retrying)", K::kind(&()));
                    continue;
                }
            };
            let key = format!(
                "{} {}/{}",
                K::kind(&()),
                object.namespace().unwrap_or_default(),
                object.name_any()
            );
            let is_ready = ready(&object);
            let mut timeline = timeline.lock().expect("timeline lock");
            let entry = timeline.entry(key).or_insert_with(|| ObjectTimes {
                service: object
                    .labels()
                    .get(resurgo::labels::SERVICE)
                    .cloned()
                    .unwrap_or_default(),
                part: object
                    .labels()
                    .get(resurgo::labels::PART)
                    .cloned()
                    .unwrap_or_default(),
                created: at,
                ready: None,
            });
            if is_ready && entry.ready.is_none() {
                entry.ready = Some(at);
            }
        }
    });
    (AbortOnDrop(task), on_synced)
}

/// Available the way the operator (and `kubectl rollout status`) reads it: the controller saw
/// the current spec, every replica is updated and available, the condition says Available.
pub fn deployment_ready(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else {
        return false;
    };
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let seen =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let available = status.conditions.as_ref().is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    });
    seen && available
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
}

pub fn job_complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

fn condition(status: &RecoveryPlanStatus, type_: &str) -> Option<(bool, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status == "True", c.message.clone()))
}

/// Waits, through a watch of the plan, until its Ready condition is True for the current
/// generation; returns when that event arrived. Fails when the plan is Stalled or `deadline`
/// passes. Prints progress every 15 s.
pub async fn plan_ready(
    plans: Api<RecoveryPlan>,
    name: &str,
    deadline: Instant,
) -> Result<(Instant, RecoveryPlanStatus)> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(plans, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let started = Instant::now();
    let mut next_progress = started + Duration::from_secs(15);
    let mut last = RecoveryPlanStatus::default();
    loop {
        let event = tokio::time::timeout_at(deadline.min(next_progress), stream.next()).await;
        let at = Instant::now();
        match event {
            Ok(Some(Ok(plan))) => {
                let status = plan.status.clone().unwrap_or_default();
                let current = status.observed_generation == plan.metadata.generation;
                if current && condition(&status, "Ready").is_some_and(|(ok, _)| ok) {
                    return Ok((at, status));
                }
                if current && let Some((true, message)) = condition(&status, "Stalled") {
                    bail!("recoveryplan/{name} is Stalled: {message}");
                }
                last = status;
            }
            Ok(Some(Err(error))) => eprintln!("[bench] watch of the plan: {error} (retrying)"),
            Ok(None) => bail!("the watch of recoveryplan/{name} ended"),
            Err(_) if at >= deadline => bail!(
                "recoveryplan/{name} not Ready after {:.0} s: {} services ready, phase {:?}, tier {:?}",
                (at - started).as_secs_f64(),
                last.ready.as_deref().unwrap_or("0"),
                last.phase,
                last.current_tier
            ),
            Err(_) => {}
        }
        if at >= next_progress {
            eprintln!(
                "[bench] {:>5.0} s: {} services ready, tier {}",
                (at - started).as_secs_f64(),
                last.ready.as_deref().unwrap_or("0"),
                last.current_tier.as_deref().unwrap_or("-")
            );
            next_progress = at + Duration::from_secs(15);
        }
    }
}

/// A service's first object created and its last object ready, in seconds from the apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServiceTimes {
    pub created: f64,
    pub ready: f64,
}

/// Per service: the first of its objects seen and the moment the last of them was seen
/// ready. Services with an object that never became ready are left out.
pub fn service_times(
    objects: &BTreeMap<String, ObjectTimes>,
    apply: Instant,
) -> BTreeMap<String, ServiceTimes> {
    let seconds = |t: Instant| t.saturating_duration_since(apply).as_secs_f64();
    let mut out: BTreeMap<String, Option<ServiceTimes>> = BTreeMap::new();
    for object in objects.values() {
        let ready = object.ready.map(seconds);
        let slot = out
            .entry(object.service.clone())
            .or_insert(Some(ServiceTimes {
                created: f64::INFINITY,
                ready: 0.0,
            }));
        match (slot.as_mut(), ready) {
            (Some(times), Some(ready)) => {
                times.created = times.created.min(seconds(object.created));
                times.ready = times.ready.max(ready);
            }
            _ => *slot = None,
        }
    }
    out.into_iter()
        .filter_map(|(service, times)| Some((service, times?)))
        .collect()
}

/// What the cluster adds to the simulated delay, per service, in seconds: from the first of
/// the objects that carry the delay created to the last of them ready, minus the delay. Those
/// objects are its workload (Deployments), or its check Jobs when it has no workload. The
/// rest is the ReplicaSet and pod round trips, scheduling, kwok and status updates.
pub fn cluster_latency(
    objects: &BTreeMap<String, ObjectTimes>,
    delays: &BTreeMap<String, Duration>,
) -> Vec<f64> {
    let mut spans: BTreeMap<(&str, &str), (Instant, Option<Instant>)> = BTreeMap::new();
    for object in objects.values() {
        if !matches!(object.part.as_str(), "workload" | "check") {
            continue;
        }
        let span = spans
            .entry((&object.service, &object.part))
            .or_insert((object.created, Some(object.created)));
        span.0 = span.0.min(object.created);
        span.1 = match (span.1, object.ready) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    delays
        .iter()
        .filter_map(|(service, delay)| {
            let (created, ready) = spans
                .get(&(service.as_str(), "workload"))
                .or_else(|| spans.get(&(service.as_str(), "check")))?;
            Some(signed_seconds((*ready)?, *created) - delay.as_secs_f64())
        })
        .collect()
}

/// Within a service, from its data-restore Job complete to its workload's first object.
pub fn restore_to_workload(objects: &BTreeMap<String, ObjectTimes>) -> Vec<f64> {
    let mut by_service: BTreeMap<&str, (Option<Instant>, Option<Instant>)> = BTreeMap::new();
    for object in objects.values() {
        let slot = by_service.entry(&object.service).or_default();
        match object.part.as_str() {
            "restore" => slot.0 = object.ready.max(slot.0),
            "workload" => slot.1 = Some(slot.1.map_or(object.created, |c| c.min(object.created))),
            _ => {}
        }
    }
    by_service
        .values()
        .filter_map(|(restored, created)| {
            let (restored, created) = ((*restored)?, (*created)?);
            Some(signed_seconds(created, restored))
        })
        .collect()
}

/// `later - earlier` in seconds, negative when `later` came first.
pub fn signed_seconds(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64()
    } else {
        -(earlier - later).as_secs_f64()
    }
}

/// What a service waited for last before it could start.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// The last service of the tier before it.
    Barrier,
    /// One of its dependencies.
    Dependency(String),
}

/// The latency of one tier boundary.
#[derive(Clone, Debug)]
pub struct Boundary {
    pub from: String,
    pub to: String,
    /// From the last service of `from` ready to the first object of `to` created, seconds.
    pub overhead: f64,
}

/// One service's start: from the last of its prerequisites ready to its first object.
#[derive(Clone, Debug)]
pub struct Start {
    pub service: String,
    pub gate: Gate,
    pub latency: f64,
}

/// Figures computed from the service times.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub boundaries: Vec<Boundary>,
    /// Every service that waited for something (all but first-tier services without
    /// dependencies).
    pub starts: Vec<Start>,
    /// Apply to the first object created, seconds.
    pub first_object: f64,
    /// The recovery time if every service had started the instant its prerequisites were
    /// ready (no ordering overhead), with each service taking as long as it took.
    pub without_ordering_overhead: f64,
    /// The last service ready, seconds from the apply.
    pub last_ready: f64,
    /// Services of the plan the watches never saw ready.
    pub missing: Vec<String>,
    /// The chain that finished last, as it ran, from its first service to the last service
    /// ready: each link's prerequisite that was ready last is the link before it.
    pub chain: Vec<ChainLink>,
}

/// One service of the chain that finished last.
#[derive(Clone, Debug)]
pub struct ChainLink {
    pub service: String,
    /// From its last prerequisite ready (or the apply, for the first) to its first object
    /// created, seconds: what it waited for the operator.
    pub start_latency: f64,
    /// From its first object created to its last ready, minus its expected duration,
    /// seconds: what the cluster added to its simulated delay.
    pub in_cluster: f64,
    pub expected: f64,
}

impl Analysis {
    /// The chain's total start latency, expected durations and time in the cluster beyond
    /// them, seconds; they add up to the last service ready.
    pub fn chain_totals(&self) -> (f64, f64, f64) {
        self.chain.iter().fold((0.0, 0.0, 0.0), |(s, e, c), link| {
            (
                s + link.start_latency,
                e + link.expected,
                c + link.in_cluster,
            )
        })
    }
}

pub fn analyze(
    spec: &RecoveryPlanSpec,
    order: &RecoveryOrder,
    times: &BTreeMap<String, ServiceTimes>,
) -> Analysis {
    let mut analysis = Analysis {
        missing: spec
            .services
            .iter()
            .filter(|s| !times.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect(),
        ..Analysis::default()
    };
    let of = |name: &String| times.get(name);
    let tier_services = |tier: &str| -> Option<&[String]> {
        let tier = order.tiers.iter().find(|t| t.name == tier)?;
        Some(tier.services.as_slice())
    };
    let tier_ready = |tier: &str| -> Option<f64> {
        tier_services(tier)?
            .iter()
            .map(|s| of(s).map(|t| t.ready))
            .try_fold(0.0_f64, |max, ready| Some(max.max(ready?)))
    };
    for pair in order.tiers.windows(2) {
        let first = pair[1]
            .services
            .iter()
            .filter_map(of)
            .map(|t| t.created)
            .fold(f64::INFINITY, f64::min);
        if let Some(last) = tier_ready(&pair[0].name)
            && first.is_finite()
        {
            analysis.boundaries.push(Boundary {
                from: pair[0].name.clone(),
                to: pair[1].name.clone(),
                overhead: first - last,
            });
        }
    }
    let previous_tier: BTreeMap<&str, &str> = order
        .tiers
        .windows(2)
        .map(|pair| (pair[1].name.as_str(), pair[0].name.as_str()))
        .collect();
    // The service of a tier ready last: a barrier's gate.
    let tier_last = |tier: &str| -> Option<&String> {
        tier_services(tier)?
            .iter()
            .filter_map(|s| of(s).map(|t| (s, t.ready)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s)
    };
    // Per service: the prerequisite that was ready last, if any.
    let mut gated_by: BTreeMap<&str, &String> = BTreeMap::new();
    let mut simulated: BTreeMap<&str, f64> = BTreeMap::new();
    let mut simulated_tier: BTreeMap<&str, f64> = BTreeMap::new();
    for planned in &order.services {
        let Some(own) = of(&planned.name) else {
            continue;
        };
        let barrier = previous_tier
            .get(planned.tier.as_str())
            .and_then(|tier| tier_ready(tier));
        let dependency = planned
            .depends_on
            .iter()
            .filter_map(|d| of(d).map(|t| (d, t.ready)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let gate = match (barrier, dependency) {
            (Some(barrier), Some((name, ready))) if ready >= barrier => {
                Some((Gate::Dependency(name.clone()), ready))
            }
            (Some(barrier), _) => Some((Gate::Barrier, barrier)),
            (None, Some((name, ready))) => Some((Gate::Dependency(name.clone()), ready)),
            (None, None) => None,
        };
        if let Some((gate, at)) = gate {
            let by = match &gate {
                Gate::Dependency(name) => planned.depends_on.iter().find(|d| *d == name),
                Gate::Barrier => previous_tier
                    .get(planned.tier.as_str())
                    .and_then(|tier| tier_last(tier)),
            };
            if let Some(by) = by {
                gated_by.insert(&planned.name, by);
            }
            analysis.starts.push(Start {
                service: planned.name.clone(),
                gate,
                latency: own.created - at,
            });
        }
        // The same recovery with no ordering overhead: start at the simulated gate.
        let barrier = previous_tier
            .get(planned.tier.as_str())
            .and_then(|tier| simulated_tier.get(tier))
            .copied()
            .unwrap_or(0.0);
        let start = planned
            .depends_on
            .iter()
            .filter_map(|d| simulated.get(d.as_str()))
            .fold(barrier, |a, b| a.max(*b));
        let ready = start + (own.ready - own.created);
        simulated.insert(&planned.name, ready);
        let tier = simulated_tier.entry(&planned.tier).or_insert(0.0);
        *tier = tier.max(ready);
    }
    analysis.first_object = times
        .values()
        .map(|t| t.created)
        .fold(f64::INFINITY, f64::min);
    analysis.without_ordering_overhead = simulated.values().fold(0.0, |a, b| a.max(*b));
    analysis.last_ready = times.values().map(|t| t.ready).fold(0.0, f64::max);

    let expected: BTreeMap<&str, f64> = order
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.expected_duration.as_secs_f64()))
        .collect();
    let mut link = times
        .iter()
        .max_by(|a, b| a.1.ready.total_cmp(&b.1.ready))
        .map(|(name, _)| name);
    while let Some(name) = link {
        let own = &times[name];
        let by = gated_by.get(name.as_str()).copied();
        let gate_ready = by.and_then(of).map_or(0.0, |t| t.ready);
        let expected = expected.get(name.as_str()).copied().unwrap_or_default();
        analysis.chain.push(ChainLink {
            service: name.clone(),
            start_latency: own.created - gate_ready,
            in_cluster: own.ready - own.created - expected,
            expected,
        });
        // A chain cannot be longer than the plan; guards against a gate cycle from
        // out-of-order timestamps.
        link = by.filter(|_| analysis.chain.len() < times.len());
    }
    analysis.chain.reverse();
    analysis
}

/// Order statistics of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles; `None` for an empty sample.
pub fn summary(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Summary {
        n: sorted.len(),
        min: sorted[0],
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = summary(&values).unwrap();
        assert_eq!((s.p50, s.p99, s.max, s.min), (100.0, 198.0, 200.0, 1.0));
        assert_eq!(summary(&[3.0]).unwrap().p99, 3.0);
        assert!(summary(&[]).is_none());
    }

    #[test]
    fn gates_boundaries_and_the_overhead_free_replay() {
        let spec: RecoveryPlanSpec = serde_json::from_value(json!({
            "tiers": [{"name": "a", "rto": "1h"}, {"name": "b", "rto": "1h"}],
            "services": [
                {"name": "x", "tier": "a", "namespace": "x", "expectedDuration": "1s", "workload": {"manifests": []}},
                {"name": "y", "tier": "a", "namespace": "y", "expectedDuration": "2s", "workload": {"manifests": []}},
                {"name": "z", "tier": "b", "namespace": "z", "dependsOn": ["x"], "expectedDuration": "1s", "workload": {"manifests": []}},
                {"name": "w", "tier": "b", "namespace": "w", "dependsOn": ["z"], "expectedDuration": "1s", "workload": {"manifests": []}}
            ]
        }))
        .unwrap();
        let order = resurgo::planner::plan(&spec).unwrap();
        let t = |created, ready| ServiceTimes { created, ready };
        let times = BTreeMap::from([
            ("x".to_owned(), t(0.1, 1.2)),
            ("y".to_owned(), t(0.1, 2.2)),
            ("z".to_owned(), t(2.25, 3.3)),
            ("w".to_owned(), t(3.4, 4.5)),
        ]);
        let analysis = analyze(&spec, &order, &times);
        assert_eq!(analysis.boundaries.len(), 1);
        assert!((analysis.boundaries[0].overhead - 0.05).abs() < 1e-9);
        let starts: Vec<(&str, &Gate, f64)> = analysis
            .starts
            .iter()
            .map(|s| (s.service.as_str(), &s.gate, (s.latency * 1000.0).round()))
            .collect();
        assert_eq!(
            starts,
            [
                ("z", &Gate::Barrier, 50.0),
                ("w", &Gate::Dependency("z".into()), 100.0)
            ]
        );
        // y: 2.1 s, then z 1.05 s, then w 1.1 s, with no gaps.
        assert!((analysis.without_ordering_overhead - 4.25).abs() < 1e-9);
        assert!((analysis.first_object - 0.1).abs() < 1e-9);
        assert!(analysis.missing.is_empty());

        // The chain that finished last: y (the barrier's last), z, w.
        let chain: Vec<(&str, f64, f64)> = analysis
            .chain
            .iter()
            .map(|l| {
                let ms = |s: f64| (s * 1000.0).round();
                (l.service.as_str(), ms(l.start_latency), ms(l.in_cluster))
            })
            .collect();
        assert_eq!(
            chain,
            [("y", 100.0, 100.0), ("z", 50.0, 50.0), ("w", 100.0, 100.0)]
        );
        let (waited, expected, in_cluster) = analysis.chain_totals();
        assert!((waited + expected + in_cluster - analysis.last_ready).abs() < 1e-9);
    }
}
