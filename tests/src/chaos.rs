//! The chaos plan and the invariants of a disturbed recovery, shared by tests/tests/chaos.rs
//! (a few trials in the test suite) and the recovery bench's `--chaos N` loop
//! (tests/src/bin/bench.rs).
//!
//! A recovery that was disturbed (the operator killed, the API server restarted) must end
//! exactly as an undisturbed one: the plan Ready with a true status, no service started
//! before the services of earlier tiers and its dependencies were ready, every object
//! created once (one uid per name, never deleted) and none lost; the regenerated credentials
//! are generated once, or once more when the disturbance fell between their write and the
//! status that records it, and the status records them as they are. Everything is judged from watches and the API server's history, never from
//! the operator's logs.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, VersionMatch},
    core::ApiResource,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use resurgo::api::recovery_plan::{PlanPhase, RecoveryPlan, ServicePhase};
use serde_json::{Value, json};
use tokio::sync::watch as signal;

pub const TEST_OPERATOR: &str = "resurgo.dev/test-operator";
pub const DELAY_ANNOTATION: &str = "pod-ready.stage.kwok.x-k8s.io/delay";

/// A small xorshift64* generator: the tests need reproducible random moments, not
/// cryptographic quality, and a seed a failing run can print.
pub struct Rng(pub u64);

impl Rng {
    pub fn seeded(test: &str) -> Self {
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
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low + 1)
    }
}

/// One service of the chaos plan, as the assertions need it.
pub struct Svc {
    pub name: &'static str,
    pub tier: usize,
    pub depends_on: &'static [&'static str],
    /// How long kwok holds its pods before they are ready.
    pub delay_ms: u64,
}

/// Three tiers modelled on examples/lazio: dependencies within and across tiers, a data
/// restore Job and a regenerated Secret, so that every kind of object the operator creates
/// is there to be created twice or lost.
pub const SERVICES: &[Svc] = &[
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
pub const TIERS: [&str; 3] = ["life-critical", "clinical", "booking"];
/// The service with a data restore Job and regenerated credentials.
pub const WITH_DATA: &str = "records";

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

pub fn chaos_plan(name: &str, id: &str) -> RecoveryPlan {
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
pub struct Seen {
    /// Every uid seen under each "Kind namespace/name", in the order first seen: more than
    /// one means the object was created twice.
    pub uids: BTreeMap<String, Vec<String>>,
    /// Objects seen deleted.
    pub deleted: BTreeSet<String>,
    /// Every distinct content of each regenerated Secret: more than one means the
    /// credentials were generated again.
    pub secret_data: BTreeMap<String, Vec<Value>>,
    /// Deployments created and ready, in the order the watch first saw them.
    pub order: Vec<Step>,
    /// Where each step of `order` happened in the API server's history.
    pub when: BTreeMap<Step, Observed>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Created(String),
    Ready(String),
}

/// Where a step happened, as an etcd revision: on this control plane a resource version is
/// the revision of the write that made it.
///
/// A watch event carries the object as that write left it, so a step seen live is placed
/// exactly. A step first seen when the watch listed again (after the API server restarted,
/// its watch cache no longer reaches back to where the watch was) only says that it
/// happened at or before the listed object's revision and after the last event delivered
/// live: a list is in key order, not in the order things happened. [`violations`] places
/// such a step by reading the Deployments at past revisions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    /// The revision of the step (seen live), or of the listed object (an upper bound).
    pub revision: u64,
    /// For a step first seen in a list: the revision of the last event delivered live
    /// before it, which the step came after.
    pub listed_after: Option<u64>,
}

/// The kinds the operator creates for a plan, all labelled `resurgo.dev/plan`.
pub fn managed_kinds() -> Vec<ApiResource> {
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

/// The resource version as an etcd revision (see [`Observed`]).
fn revision(object: &DynamicObject) -> u64 {
    object
        .resource_version()
        .and_then(|v| v.parse().ok())
        .expect("resource versions are etcd revisions on this control plane")
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
pub fn deployment_ready(object: &DynamicObject) -> bool {
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
pub async fn record(
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
            // The revision of the last event delivered live, once the first list is done.
            let mut live = 0;
            while let Some(event) = stream.next().await {
                let listed_after = matches!(event, Ok(Event::InitApply(_))).then_some(live);
                let mut seen = seen.lock().expect("seen lock");
                match event {
                    Ok(Event::Apply(object) | Event::InitApply(object)) => {
                        let observed = Observed {
                            revision: revision(&object),
                            listed_after,
                        };
                        if listed_after.is_none() {
                            live = observed.revision;
                        }
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
                                if !seen.when.contains_key(&step) {
                                    seen.when.insert(step.clone(), observed);
                                    seen.order.push(step);
                                }
                            }
                            steps.send_replace(seen.order.len());
                        }
                    }
                    Ok(Event::Delete(object)) => {
                        live = revision(&object);
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

pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits, through a watch that survives API server restarts, until the plan is Ready for
/// its current generation.
pub async fn until_ready(
    plans: &Api<RecoveryPlan>,
    name: &str,
    timeout: Duration,
) -> Result<RecoveryPlan, String> {
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
        Ok(plan) => Ok(plan),
        Err(_) => Err(format!(
            "recoveryplan/{name} not Ready after {timeout:?}: {:#?}",
            plans.get_status(name).await.ok().and_then(|p| p.status)
        )),
    }
}

/// The revision at which a step happened. A step seen live is placed already; one first
/// seen in a list happened after the last live event and at or before the listed object's
/// revision, and is placed by reading the plan's Deployments as they were at revisions in
/// between (etcd keeps minutes of history; the API server reads it for an exact-revision
/// list). The search assumes the step stayed true within that window of a few seconds: the
/// test flags a Deployment deleted, and nothing here takes a ready one's pods away.
pub async fn place(
    client: &Client,
    plan: &str,
    step: &Step,
    observed: &Observed,
) -> Result<u64, String> {
    let Some(mut before) = observed.listed_after else {
        return Ok(observed.revision);
    };
    let deployments: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<Deployment>(&()));
    let (Step::Created(name) | Step::Ready(name)) = step;
    let mut at = observed.revision;
    while at - before > 1 {
        let middle = before + (at - before) / 2;
        let listed = deployments
            .list(
                &ListParams::default()
                    .labels(&format!("resurgo.dev/plan={plan}"))
                    .at(&middle.to_string())
                    .matching(VersionMatch::Exact),
            )
            .await
            .map_err(|e| {
                format!("{step:?}: cannot read the Deployments at revision {middle}: {e}")
            })?;
        let object = listed.items.iter().find(|d| d.name_any() == *name);
        let holds = match step {
            Step::Created(_) => object.is_some(),
            Step::Ready(_) => object.is_some_and(deployment_ready),
        };
        if holds {
            at = middle;
        } else {
            before = middle;
        }
    }
    eprintln!(
        "[chaos] {plan}: {step:?} first seen in a re-list at revision {}; it happened at revision {at}",
        observed.revision
    );
    Ok(at)
}

/// Every invariant of a recovery that was disturbed, checked against what the watches saw
/// and what the API server holds at the end. Returns the violations, one line each.
pub async fn violations(client: &Client, plan: &RecoveryPlan, seen: &Seen) -> Vec<String> {
    let name = plan.name_any();
    let mut found = Vec::new();

    // Order: a service's Deployment is created only after every Deployment of earlier tiers
    // and of its dependencies was ready, by the revisions of the API server's history.
    let mut when = BTreeMap::new();
    for (step, observed) in &seen.when {
        match place(client, &name, step, observed).await {
            Ok(revision) => {
                when.insert(step.clone(), (revision, observed.listed_after.is_some()));
            }
            Err(error) => found.push(error),
        }
    }
    let describe = |step: &Step| match when.get(step) {
        Some((revision, false)) => format!("revision {revision}"),
        Some((revision, true)) => format!("revision {revision}, read back after a re-list"),
        None => "never seen".into(),
    };
    for service in SERVICES {
        let created = Step::Created(service.name.into());
        let Some(&(created_at, _)) = when.get(&created) else {
            found.push(format!("{}: its Deployment was never seen", service.name));
            continue;
        };
        let prerequisites = SERVICES
            .iter()
            .filter(|s| s.tier < service.tier || service.depends_on.contains(&s.name));
        for before in prerequisites {
            let ready = Step::Ready(before.name.into());
            match when.get(&ready) {
                Some(&(ready_at, _)) if ready_at < created_at => {}
                _ => found.push(format!(
                    "{} was created ({}) before {} was ready ({}) (tier {} / {})",
                    service.name,
                    describe(&created),
                    before.name,
                    describe(&ready),
                    service.tier,
                    before.tier
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
    // The operator knows its regenerated Secret only by the uid and resourceVersion its
    // status records; a disturbance between the Secret's write and the status that records
    // it makes it regenerate the Secret once more (by design: nothing uses the first values
    // yet). One disturbance, so at most one extra generation.
    for (key, versions) in &seen.secret_data {
        if versions.len() > 2 {
            found.push(format!(
                "{key} was regenerated {} times during one recovery with one disturbance",
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
    // The regenerated Secret is, unchanged, the write the status records.
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        client.clone(),
        &format!("{name}-{WITH_DATA}"),
    )
    .get_metadata_opt("db-credentials")
    .await
    .expect("read the regenerated Secret");
    let recorded = status
        .services
        .iter()
        .filter(|s| s.name == WITH_DATA)
        .flat_map(|s| &s.regenerated_secrets)
        .any(|r| {
            secret.as_ref().is_some_and(|s| {
                s.metadata.uid.as_ref() == Some(&r.uid)
                    && s.metadata.resource_version.as_ref() == Some(&r.resource_version)
            })
        });
    if !recorded {
        found.push("the status does not record the regenerated Secret as it is".into());
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
