//! The lockdown bench (`bench --lockdown`): how fast an AccessPolicy's Lockdown takes every
//! human binding away, the most powerful first, and how fast Normal brings them back, against
//! the raw rate of the same API server for the same number of deletes.
//!
//! On one fresh control plane it creates N human bindings (10 ClusterRoleBindings to
//! cluster-admin, 10 other ClusterRoleBindings, the rest RoleBindings spread over 20
//! namespaces). Each run then:
//! 1. with no operator running, deletes all N from a plain client with as many requests in
//!    flight as the operator's lockdown makes (32), and creates them again: the raw rates.
//!    Then it makes the operator's own requests per binding, 32 bindings at a
//!    time, itself: save (a ConfigMap in place of a SuspendedBinding) and delete, then save,
//!    delete and an Event: what the operator's work costs the API server alone;
//! 2. starts the operator, switches the policy to Lockdown and times, from the moment the
//!    spec patch is sent, until the last ClusterRoleBinding to cluster-admin is deleted and
//!    until all N are;
//! 3. switches it back to Normal and times until all N are back, then checks that each one
//!    is byte for byte what it was (subjects, roleRef, labels, annotations, owners).
//!
//! Every time comes from this process's watches of RoleBindings and ClusterRoleBindings
//! (client-side arrival of the event), never from the operator's log or status; the raw
//! rates are timed the same way. The policy's status is read only for the "Ready" figures,
//! after the watch-timed ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{Debug, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, ObjectReference},
        events::v1::Event as K8sEvent,
        rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        wait::await_condition,
        watcher::{self, Event},
    },
};
use resurgo::api::{AccessPolicy, SuspendedBinding, access_policy::AccessMode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

use crate::{
    cluster::{self, Cluster, Operator, RequestCounts, Teardown, proc_stats},
    measure::AbortOnDrop,
};

/// Requests in flight: as many as the operator's lockdown makes (PARALLEL in
/// operator/src/access/enforce.rs), so that the raw rate is the same work done the plain way.
const PARALLEL: usize = 32;
/// On every binding the bench makes: its watches select on it.
const LABEL: &str = "bench.resurgo.dev/lockdown";
const POLICY: &str = "bench-lockdown";
/// Where the raw chains keep their saves.
const SAVES: &str = "bench-saves";
const NAMESPACES: usize = 20;
const CLUSTER_ADMIN: usize = 10;
const OTHER_CLUSTER: usize = 10;
/// The issue's targets, in seconds: all suspended, cluster-admin gone, all restored.
const TARGET_ALL: f64 = 5.0;
const TARGET_CLUSTER_ADMIN: f64 = 1.0;
const TARGET_RESTORE: f64 = 5.0;
/// A phase that has not finished in this long is a failure, not a slow figure.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

fn log(message: impl std::fmt::Display) {
    eprintln!("[bench] {message}");
}

/// One of the bench's bindings.
#[derive(Clone)]
enum Made {
    Namespaced(RoleBinding),
    Cluster(ClusterRoleBinding),
}

impl Made {
    fn key(&self) -> String {
        match self {
            Made::Namespaced(rb) => key("RoleBinding", rb.namespace().as_deref(), &rb.name_any()),
            Made::Cluster(crb) => key("ClusterRoleBinding", None, &crb.name_any()),
        }
    }

    fn to_cluster_admin(&self) -> bool {
        matches!(self, Made::Cluster(crb) if crb.role_ref.name == "cluster-admin")
    }
}

fn key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{kind} {}/{name}", namespace.unwrap_or_default())
}

fn user(name: String) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name,
        namespace: None,
    }
}

fn group(name: String) -> Subject {
    Subject {
        kind: "Group".into(),
        ..user(name)
    }
}

fn cluster_role(name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: name.into(),
    }
}

fn metadata(name: String, namespace: Option<String>, team: &str, i: usize) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(BTreeMap::from([
            (LABEL.into(), "true".into()),
            ("team".into(), team.into()),
        ])),
        annotations: Some(BTreeMap::from([
            ("ticket".into(), format!("IT-{i:05}")),
            ("note".into(), "bound by hand by the admin".into()),
        ])),
        ..Default::default()
    }
}

pub fn namespace_of(i: usize) -> String {
    format!("bench-team-{:02}", i % NAMESPACES)
}

/// The N bindings, most powerful first (the order the raw deletes go in too).
fn bindings(n: usize) -> Vec<Made> {
    let mut made = Vec::with_capacity(n);
    for i in 0..CLUSTER_ADMIN {
        made.push(Made::Cluster(ClusterRoleBinding {
            metadata: metadata(format!("bench-admin-{i:02}"), None, "platform", i),
            role_ref: cluster_role("cluster-admin"),
            subjects: Some(vec![user(format!("oncall-{i}@example.com"))]),
        }));
    }
    for i in 0..OTHER_CLUSTER {
        made.push(Made::Cluster(ClusterRoleBinding {
            metadata: metadata(format!("bench-auditors-{i:02}"), None, "audit", i),
            role_ref: cluster_role(if i % 2 == 0 { "view" } else { "edit" }),
            subjects: Some(vec![
                group(format!("auditors-{i}")),
                user(format!("auditor-{i}@example.com")),
            ]),
        }));
    }
    for i in 0..n - CLUSTER_ADMIN - OTHER_CLUSTER {
        let namespace = namespace_of(i);
        let mut subjects = vec![user(format!("dev-{i}@example.com"))];
        if i % 5 == 0 {
            subjects.push(group(format!("{namespace}-leads")));
        }
        made.push(Made::Namespaced(RoleBinding {
            metadata: metadata(format!("human-{i:04}"), Some(namespace), "apps", i),
            role_ref: cluster_role(["edit", "view", "admin"][i % 3]),
            subjects: Some(subjects),
        }));
    }
    made
}

/// What a restore must give back byte for byte, as the API server serves it.
fn essence(meta: &ObjectMeta, subjects: &Option<Vec<Subject>>, role: &RoleRef) -> String {
    json!({
        "subjects": subjects, "roleRef": role, "labels": meta.labels,
        "annotations": meta.annotations, "ownerReferences": meta.owner_references,
    })
    .to_string()
}

/// Every bench binding as served now, by key.
async fn snapshot(client: &Client) -> Result<BTreeMap<String, String>> {
    let selector = ListParams::default().labels(&format!("{LABEL}=true"));
    let mut all = BTreeMap::new();
    for rb in Api::<RoleBinding>::all(client.clone())
        .list(&selector)
        .await?
        .items
    {
        all.insert(
            key("RoleBinding", rb.namespace().as_deref(), &rb.name_any()),
            essence(&rb.metadata, &rb.subjects, &rb.role_ref),
        );
    }
    for crb in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&selector)
        .await?
        .items
    {
        all.insert(
            key("ClusterRoleBinding", None, &crb.name_any()),
            essence(&crb.metadata, &crb.subjects, &crb.role_ref),
        );
    }
    Ok(all)
}

/// The bench's bindings as this process's watches see them.
#[derive(Default)]
struct Seen {
    present: BTreeSet<String>,
    /// When each binding last appeared or disappeared (arrival of the event).
    changed: BTreeMap<String, Instant>,
}

/// Watches the bench's bindings of kind `K` into `seen`. The receiver fires once the first
/// list is done. After a re-list (a watch that expired), what the list no longer has counts
/// as deleted when the list arrives: late, never early.
fn watch_kind<K>(api: Api<K>, seen: watch::Sender<Seen>) -> (AbortOnDrop, oneshot::Receiver<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let (synced, on_synced) = oneshot::channel();
    let task = tokio::spawn(async move {
        let kind = K::kind(&()).into_owned();
        let key_of = |o: &K| key(&kind, o.meta().namespace.as_deref(), &o.name_any());
        let mut synced = Some(synced);
        let mut listing: Option<BTreeSet<String>> = None;
        let mut stream = watcher::watcher(api, config).boxed();
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(Event::Init) => listing = Some(BTreeSet::new()),
                Ok(Event::InitApply(object)) => {
                    listing.get_or_insert_default().insert(key_of(&object));
                }
                Ok(Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    let prefix = format!("{kind} ");
                    seen.send_modify(|s| {
                        let gone: Vec<String> = s
                            .present
                            .iter()
                            .filter(|k| k.starts_with(&prefix) && !listed.contains(*k))
                            .cloned()
                            .collect();
                        for k in gone {
                            s.present.remove(&k);
                            s.changed.insert(k, at);
                        }
                        for k in listed {
                            if s.present.insert(k.clone()) {
                                s.changed.insert(k, at);
                            }
                        }
                    });
                    if let Some(synced) = synced.take() {
                        let _ = synced.send(());
                    }
                }
                Ok(Event::Apply(object)) => {
                    let k = key_of(&object);
                    seen.send_modify(|s| {
                        if s.present.insert(k.clone()) {
                            s.changed.insert(k, at);
                        }
                    });
                }
                Ok(Event::Delete(object)) => {
                    let k = key_of(&object);
                    seen.send_modify(|s| {
                        if s.present.remove(&k) {
                            s.changed.insert(k, at);
                        }
                    });
                }
                Err(error) => {
                    log(format!("watch of {kind}s: {error} (retrying)"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (AbortOnDrop(task), on_synced)
}

/// Waits until every binding of `keys` is gone (`present` false) or back (true), and returns
/// the seconds from `since` to the last of them, and to the first.
async fn until(
    seen: &mut watch::Receiver<Seen>,
    keys: &[String],
    present: bool,
    since: Instant,
    what: &str,
) -> Result<(f64, f64)> {
    let wait = seen.wait_for(|s| keys.iter().all(|k| s.present.contains(k) == present));
    let state = match tokio::time::timeout(PHASE_TIMEOUT, wait).await {
        Ok(state) => state.context("the binding watches stopped")?,
        Err(_) => bail!("{what}: not done after {PHASE_TIMEOUT:?}"),
    };
    let mut times = Vec::with_capacity(keys.len());
    for k in keys {
        let at = state.changed.get(k).copied().context("never seen")?;
        ensure!(
            at >= since,
            "{what}: {k} had changed before the phase began"
        );
        times.push((at - since).as_secs_f64());
    }
    let last = times.iter().copied().fold(0.0, f64::max);
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((last, first))
}

/// Runs the phase's requests, `PARALLEL` at a time.
async fn for_each<F, Fut>(made: &[Made], request: F) -> Result<()>
where
    F: Fn(Made) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    stream::iter(made.iter().cloned().map(request))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn create(client: &Client, made: Made) -> Result<()> {
    let post = PostParams::default();
    match made {
        Made::Namespaced(rb) => {
            let namespace = rb.namespace().unwrap_or_default();
            Api::<RoleBinding>::namespaced(client.clone(), &namespace)
                .create(&post, &rb)
                .await
                .with_context(|| format!("create rolebinding {namespace}/{}", rb.name_any()))?;
        }
        Made::Cluster(crb) => {
            Api::<ClusterRoleBinding>::all(client.clone())
                .create(&post, &crb)
                .await
                .with_context(|| format!("create clusterrolebinding {}", crb.name_any()))?;
        }
    }
    Ok(())
}

async fn delete(client: &Client, made: Made) -> Result<()> {
    let params = DeleteParams::default();
    match made {
        Made::Namespaced(rb) => {
            let namespace = rb.namespace().unwrap_or_default();
            Api::<RoleBinding>::namespaced(client.clone(), &namespace)
                .delete(&rb.name_any(), &params)
                .await
                .with_context(|| format!("delete rolebinding {namespace}/{}", rb.name_any()))?;
        }
        Made::Cluster(crb) => {
            Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&crb.name_any(), &params)
                .await
                .with_context(|| format!("delete clusterrolebinding {}", crb.name_any()))?;
        }
    }
    Ok(())
}

/// The operator's requests for one binding, made the plain way: a save (a ConfigMap holding
/// the binding, as large as a SuspendedBinding, in place of one: the operator is not running
/// and must not find a ledger it did not write), the delete, and, `with_event`, an Event like
/// the one the operator publishes per binding (events.k8s.io/v1, one POST).
async fn raw_chain(client: &Client, made: Made, with_event: bool) -> Result<()> {
    let binding = match &made {
        Made::Namespaced(rb) => serde_json::to_string(rb)?,
        Made::Cluster(crb) => serde_json::to_string(crb)?,
    };
    let name = format!("save-{:016x}", fnv(&made.key()));
    let save = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("binding".into(), binding)])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), SAVES)
        .create(&PostParams::default(), &save)
        .await
        .with_context(|| format!("create configmap {SAVES}/{name}"))?;
    let key = made.key();
    delete(client, made).await?;
    if with_event {
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{POLICY}.{:x}", now.as_nanosecond())),
                namespace: Some("default".into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Access".into()),
            reason: Some("BindingSuspended".into()),
            note: Some(format!("{key} deleted; saved in {name}")),
            type_: Some("Normal".into()),
            reporting_controller: Some("bench".into()),
            reporting_instance: Some("bench".into()),
            // As the operator's: about the policy, related to the binding.
            regarding: Some(ObjectReference {
                api_version: Some("resurgo.dev/v1alpha1".into()),
                kind: Some("AccessPolicy".into()),
                name: Some(POLICY.into()),
                ..Default::default()
            }),
            related: Some(ObjectReference {
                api_version: Some("rbac.authorization.k8s.io/v1".into()),
                kind: Some(key.split(' ').next().unwrap_or_default().into()),
                name: Some(key.rsplit('/').next().unwrap_or_default().into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &event)
            .await
            .with_context(|| format!("create the event about {key}"))?;
    }
    Ok(())
}

/// A stable, short hash of a key (FNV-1a), for the saves' names.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Times the operator's request pattern made the plain way, `PARALLEL` chains at a time,
/// until the watch sees every binding gone; then puts the bindings back and drops the saves,
/// untimed.
async fn time_raw_chains(
    client: &Client,
    made: &[Made],
    keys: &[String],
    seen: &mut watch::Receiver<Seen>,
    with_event: bool,
) -> Result<f64> {
    let started = Instant::now();
    for_each(made, |m| raw_chain(client, m, with_event)).await?;
    let time = until(seen, keys, false, started, "the raw chains").await?.0;
    let started = Instant::now();
    for_each(made, |m| create(client, m)).await?;
    until(
        seen,
        keys,
        true,
        started,
        "the creates after the raw chains",
    )
    .await?;
    Api::<ConfigMap>::namespaced(client.clone(), SAVES)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .context("delete the raw chains' saves")?;
    Ok(time)
}

/// What one run measured, in seconds from the start of each phase.
#[derive(Debug, Default)]
pub struct Run {
    pub raw_delete: f64,
    pub raw_create: f64,
    /// The operator's requests per binding made the plain way, 32 bindings at a time:
    /// save and delete, then save, delete and Event.
    pub raw_save_delete: f64,
    pub raw_save_delete_event: f64,
    /// From the Lockdown patch: first binding gone, last ClusterRoleBinding to
    /// cluster-admin gone, last ClusterRoleBinding gone, all gone, the policy Ready.
    pub first_suspended: f64,
    pub cluster_admin_gone: f64,
    pub cluster_bindings_gone: f64,
    pub all_suspended: f64,
    pub lockdown_ready: f64,
    /// RoleBindings seen gone before the last ClusterRoleBinding to cluster-admin: the
    /// order, most powerful first, with `PARALLEL` requests in flight.
    pub namespaced_before_cluster_admin: usize,
    /// SuspendedBindings when the policy said Ready in Lockdown.
    pub saved: u32,
    /// From the Normal patch: first binding back, all back, the policy Ready.
    pub first_restored: f64,
    pub restore: f64,
    pub restore_ready: f64,
    /// Requests the API server served during the lockdown and the restore, by verb and
    /// resource (all clients; watches left out).
    pub lockdown_requests: RequestCounts,
    pub restore_requests: RequestCounts,
    /// CPU seconds of the operator, the API server and etcd during each phase.
    pub lockdown_cpu: BTreeMap<String, f64>,
    pub restore_cpu: BTreeMap<String, f64>,
    /// Bindings not back byte for byte, each with what differs.
    pub not_identical: Vec<String>,
}

/// Options of the lockdown bench.
pub struct Options {
    pub bindings: usize,
    pub runs: u32,
    pub lean: bool,
}

pub async fn run(
    root: &Path,
    operator_binary: &Path,
    teardown: &mut Teardown,
    options: &Options,
) -> Result<Vec<Run>> {
    ensure!(
        options.bindings > CLUSTER_ADMIN + OTHER_CLUSTER,
        "--bindings must be more than {}",
        CLUSTER_ADMIN + OTHER_CLUSTER
    );
    let cluster = cluster::up(teardown, "lockdown", options.lean).await?;
    cluster.install_crds(root).await?;
    for i in 0..NAMESPACES {
        cluster.create_namespace(&namespace_of(i)).await?;
    }
    cluster.create_namespace(SAVES).await?;
    let client = cluster.client.clone();
    let made = bindings(options.bindings);
    let keys: Vec<String> = made.iter().map(Made::key).collect();
    let cluster_admin: Vec<String> = made
        .iter()
        .filter(|m| m.to_cluster_admin())
        .map(Made::key)
        .collect();
    let cluster_wide: Vec<String> = made
        .iter()
        .filter(|m| matches!(m, Made::Cluster(_)))
        .map(Made::key)
        .collect();
    // Aborted when dropped: on errors and on Ctrl-C too.
    let (sender, mut seen) = watch::channel(Seen::default());
    let (_rbs, rbs_synced) = watch_kind(Api::<RoleBinding>::all(client.clone()), sender.clone());
    let (_crbs, crbs_synced) = watch_kind(Api::<ClusterRoleBinding>::all(client.clone()), sender);
    let _ = rbs_synced.await;
    let _ = crbs_synced.await;
    log(format!("creating {} bindings", made.len()));
    let started = Instant::now();
    for_each(&made, |m| create(&client, m)).await?;
    until(&mut seen, &keys, true, started, "the first creates").await?;

    let policies: Api<AccessPolicy> = Api::all(client.clone());
    let mut results = Vec::new();
    for number in 1..=options.runs {
        if options.runs > 1 {
            log(format!("run {number} of {}", options.runs));
        }
        let mut run = Run::default();

        // The raw rates, with no operator running to compete for the API server.
        let started = Instant::now();
        for_each(&made, |m| delete(&client, m)).await?;
        run.raw_delete = until(&mut seen, &keys, false, started, "the raw deletes")
            .await?
            .0;
        let started = Instant::now();
        for_each(&made, |m| create(&client, m)).await?;
        run.raw_create = until(&mut seen, &keys, true, started, "the raw creates")
            .await?
            .0;
        run.raw_save_delete = time_raw_chains(&client, &made, &keys, &mut seen, false).await?;
        run.raw_save_delete_event = time_raw_chains(&client, &made, &keys, &mut seen, true).await?;
        log(format!(
            "raw: {n} deletes in {:.2} s, {n} creates in {:.2} s, {n} saves and deletes in {:.2} s, with an Event each in {:.2} s",
            run.raw_delete,
            run.raw_create,
            run.raw_save_delete,
            run.raw_save_delete_event,
            n = made.len(),
        ));
        let before = snapshot(&client).await?;
        ensure!(
            before.len() == made.len(),
            "{} bindings listed, not {}",
            before.len(),
            made.len()
        );

        let log_file = root.join(format!("target/bench/operator-lockdown-{number}.log"));
        let operator = Operator::start(operator_binary, &cluster, &log_file).await?;
        let pid = operator.pid;
        teardown.operator = Some(operator);
        if policies.get_opt(POLICY).await?.is_none() {
            let policy = serde_json::from_value(json!({
                "apiVersion": "resurgo.dev/v1alpha1", "kind": "AccessPolicy",
                "metadata": {"name": POLICY}, "spec": {"mode": "Normal"}
            }))?;
            policies.create(&PostParams::default(), &policy).await?;
        }
        ready(&policies, AccessMode::Normal, |_| true).await?;

        let requests = cluster.request_counts().await;
        let cpu = cpu(&cluster, pid);
        let started = Instant::now();
        set_mode(&policies, AccessMode::Lockdown).await?;
        run.cluster_admin_gone = until(&mut seen, &cluster_admin, false, started, "cluster-admin")
            .await?
            .0;
        run.cluster_bindings_gone = until(
            &mut seen,
            &cluster_wide,
            false,
            started,
            "the ClusterRoleBindings",
        )
        .await?
        .0;
        (run.all_suspended, run.first_suspended) =
            until(&mut seen, &keys, false, started, "the lockdown").await?;
        run.namespaced_before_cluster_admin = {
            let state = seen.borrow();
            let last = cluster_admin
                .iter()
                .filter_map(|k| state.changed.get(k))
                .max();
            keys.iter()
                .filter(|k| k.starts_with("RoleBinding "))
                .filter(|k| state.changed.get(*k) < last)
                .count()
        };
        let n = made.len() as u32;
        let status = ready(&policies, AccessMode::Lockdown, |s| {
            s.suspended_bindings >= n
        })
        .await?;
        run.lockdown_ready = (Instant::now() - started).as_secs_f64();
        run.saved = status.suspended_bindings;
        run.lockdown_requests = since(&requests, &cluster.request_counts().await);
        run.lockdown_cpu = cpu_since(&cpu, &self::cpu(&cluster, pid));
        let saved = Api::<SuspendedBinding>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        log(format!(
            "lockdown: cluster-admin gone after {:.2} s, all {} after {:.2} s, Ready after {:.2} s; {saved} saved",
            run.cluster_admin_gone,
            made.len(),
            run.all_suspended,
            run.lockdown_ready
        ));

        let requests = cluster.request_counts().await;
        let cpu = self::cpu(&cluster, pid);
        let started = Instant::now();
        set_mode(&policies, AccessMode::Normal).await?;
        (run.restore, run.first_restored) =
            until(&mut seen, &keys, true, started, "the restore").await?;
        ready(&policies, AccessMode::Normal, |s| s.suspended_bindings == 0).await?;
        run.restore_ready = (Instant::now() - started).as_secs_f64();
        run.restore_requests = since(&requests, &cluster.request_counts().await);
        run.restore_cpu = cpu_since(&cpu, &self::cpu(&cluster, pid));
        log(format!(
            "restore: all {} back after {:.2} s, Ready after {:.2} s",
            made.len(),
            run.restore,
            run.restore_ready
        ));

        let after = snapshot(&client).await?;
        for (k, was) in &before {
            match after.get(k) {
                Some(now) if now == was => {}
                Some(now) => run.not_identical.push(format!("{k}: was {was}, is {now}")),
                None => run.not_identical.push(format!("{k}: missing")),
            }
        }
        // The next run's raw rates are measured with no operator running.
        if let Some(operator) = teardown.operator.take() {
            operator.stop().await;
        }
        results.push(run);
    }
    Ok(results)
}

async fn set_mode(policies: &Api<AccessPolicy>, mode: AccessMode) -> Result<()> {
    policies
        .patch(
            POLICY,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": mode}})),
        )
        .await
        .with_context(|| format!("set accesspolicy/{POLICY} to {mode:?}"))?;
    Ok(())
}

/// Waits until the policy's status describes its spec, in `mode`, Ready, and `also` holds.
async fn ready(
    policies: &Api<AccessPolicy>,
    mode: AccessMode,
    also: impl Fn(&resurgo::api::access_policy::AccessPolicyStatus) -> bool,
) -> Result<resurgo::api::access_policy::AccessPolicyStatus> {
    let wait = await_condition(policies.clone(), POLICY, |p: Option<&AccessPolicy>| {
        p.is_some_and(|p| {
            let status = p.status.clone().unwrap_or_default();
            status.observed_generation == p.metadata.generation
                && status.mode == Some(mode)
                && also(&status)
                && status.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.observed_generation == p.metadata.generation
                })
        })
    });
    match tokio::time::timeout(PHASE_TIMEOUT, wait).await {
        Ok(Ok(Some(policy))) => Ok(policy.status.unwrap_or_default()),
        Ok(other) => bail!("accesspolicy/{POLICY} did not become Ready in {mode:?}: {other:?}"),
        Err(_) => {
            let status = policies.get(POLICY).await?.status;
            bail!(
                "accesspolicy/{POLICY} not Ready in {mode:?} after {PHASE_TIMEOUT:?}: {}",
                serde_json::to_string(&status)?
            )
        }
    }
}

fn since(before: &RequestCounts, after: &RequestCounts) -> RequestCounts {
    after
        .iter()
        .map(|(k, (count, seconds))| {
            let (c, s) = before.get(k).copied().unwrap_or_default();
            (k.clone(), (count - c, seconds - s))
        })
        .filter(|(k, (count, _))| *count > 0.0 && !k.starts_with("WATCH"))
        .collect()
}

/// CPU time so far of the operator, the API server and etcd.
fn cpu(cluster: &Cluster, operator: u32) -> BTreeMap<String, Duration> {
    let mut cpu: BTreeMap<String, Duration> = cluster
        .component_cpu()
        .into_iter()
        .filter(|(name, _)| name == "kube-apiserver" || name == "etcd")
        .collect();
    if let Ok(stats) = proc_stats(operator) {
        cpu.insert("operator".into(), stats.cpu);
    }
    cpu
}

fn cpu_since(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            (k.clone(), a.saturating_sub(b).as_secs_f64())
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The report: one column per run, then the median, the worst, the target and the ratio of
/// the median to the median raw delete time.
pub fn render(runs: &[Run], bindings: usize, machine: &str) -> String {
    let mut out = String::new();
    let rbs = bindings - CLUSTER_ADMIN - OTHER_CLUSTER;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "== lockdown bench: {bindings} human bindings ({rbs} RoleBindings in {NAMESPACES} namespaces, \
         {CLUSTER_ADMIN} ClusterRoleBindings to cluster-admin, {OTHER_CLUSTER} other ClusterRoleBindings), {} runs",
        runs.len()
    );
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "times from this process's watches of the bindings, from the first request (raw) or the spec patch (lockdown, restore)"
    );
    let _ = writeln!(out);
    let mut head = format!("{:<44}", "figure");
    for i in 1..=runs.len() {
        let _ = write!(head, " {:>8}", format!("run {i}"));
    }
    let _ = writeln!(
        out,
        "{head} {:>8} {:>8}  {:<9} {:<7} {:>10}",
        "median", "worst", "target", "", "/ raw del"
    );
    let mut raw_delete: Vec<f64> = runs.iter().map(|r| r.raw_delete).collect();
    let raw = median(&mut raw_delete);
    type Pick = fn(&Run) -> f64;
    let rows: [(&str, Pick, Option<f64>); 12] = [
        ("raw delete of all (32 parallel)", |r| r.raw_delete, None),
        ("raw create of all (32 parallel)", |r| r.raw_create, None),
        (
            "raw save + delete of all (32 chains)",
            |r| r.raw_save_delete,
            None,
        ),
        (
            "raw save + delete + Event of all (32 chains)",
            |r| r.raw_save_delete_event,
            None,
        ),
        ("lockdown: first binding gone", |r| r.first_suspended, None),
        (
            "lockdown: cluster-admin gone",
            |r| r.cluster_admin_gone,
            Some(TARGET_CLUSTER_ADMIN),
        ),
        (
            "lockdown: all ClusterRoleBindings gone",
            |r| r.cluster_bindings_gone,
            None,
        ),
        (
            "lockdown: all suspended",
            |r| r.all_suspended,
            Some(TARGET_ALL),
        ),
        ("lockdown: policy Ready", |r| r.lockdown_ready, None),
        ("restore: first binding back", |r| r.first_restored, None),
        ("restore: all back", |r| r.restore, Some(TARGET_RESTORE)),
        ("restore: policy Ready", |r| r.restore_ready, None),
    ];
    for (what, pick, target) in rows {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        let mut line = format!("{what:<44}");
        for v in &values {
            let _ = write!(line, " {:>8}", format!("{v:.2} s"));
        }
        let worst = values.iter().copied().fold(0.0, f64::max);
        let mid = median(&mut values);
        let (target, verdict) = match target {
            Some(t) => {
                let met = runs.iter().filter(|r| pick(r) <= t).count();
                (
                    format!("<= {t:.0} s"),
                    if met == runs.len() {
                        "met".to_owned()
                    } else {
                        format!("MISSED ({met} of {} runs met)", runs.len())
                    },
                )
            }
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{line} {:>8} {:>8}  {target:<9} {verdict:<7} {:>10}",
            format!("{mid:.2} s"),
            format!("{worst:.2} s"),
            format!("{:.2}", mid / raw)
        );
    }
    let _ = writeln!(out);
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "run {}: {} RoleBindings gone before the last cluster-admin one; {} saved in the ledger at Ready; CPU lockdown {}; restore {}",
            i + 1,
            run.namespaced_before_cluster_admin,
            run.saved,
            describe_cpu(&run.lockdown_cpu),
            describe_cpu(&run.restore_cpu)
        );
        let _ = writeln!(
            out,
            "  lockdown requests: {}",
            describe_requests(&run.lockdown_requests)
        );
        let _ = writeln!(
            out,
            "  restore requests:  {}",
            describe_requests(&run.restore_requests)
        );
    }
    let wrong: usize = runs.iter().map(|r| r.not_identical.len()).sum();
    if wrong == 0 {
        let _ = writeln!(
            out,
            "restored byte-identical (subjects, roleRef, labels, annotations, owners): {bindings} of {bindings} in every run"
        );
    } else {
        let _ = writeln!(out, "NOT RESTORED EXACTLY: {wrong} bindings");
        for (i, run) in runs.iter().enumerate() {
            for line in run.not_identical.iter().take(20) {
                let _ = writeln!(out, "  run {}: {line}", i + 1);
            }
        }
    }
    out
}

fn describe_cpu(cpu: &BTreeMap<String, f64>) -> String {
    cpu.iter()
        .map(|(k, v)| format!("{k} {v:.1} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The requests served, most numerous first, with the API server's mean time for each.
fn describe_requests(requests: &RequestCounts) -> String {
    let mut all: Vec<(&String, &(f64, f64))> = requests.iter().collect();
    all.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let total: f64 = all.iter().map(|(_, (c, _))| c).sum();
    let each: Vec<String> = all
        .iter()
        .take(8)
        .map(|(k, (count, seconds))| {
            format!(
                "{k} {count:.0} ({:.1} ms)",
                1000.0 * seconds / count.max(1.0)
            )
        })
        .collect();
    format!("{total:.0} in all: {}", each.join(", "))
}

/// Bindings not restored exactly, over all runs.
pub fn failures(runs: &[Run]) -> usize {
    runs.iter().map(|r| r.not_identical.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bindings_are_the_issues_mix_most_powerful_first() {
        let made = bindings(1000);
        let keys: BTreeSet<String> = made.iter().map(Made::key).collect();
        assert_eq!(keys.len(), 1000, "every binding has its own name");
        assert!(made[..CLUSTER_ADMIN].iter().all(Made::to_cluster_admin));
        assert!(
            made[CLUSTER_ADMIN..CLUSTER_ADMIN + OTHER_CLUSTER]
                .iter()
                .all(|m| matches!(m, Made::Cluster(_)) && !m.to_cluster_admin())
        );
        let namespaces: BTreeSet<String> = made
            .iter()
            .filter_map(|m| match m {
                Made::Namespaced(rb) => rb.namespace(),
                Made::Cluster(_) => None,
            })
            .collect();
        assert_eq!(namespaces.len(), NAMESPACES);
        assert_eq!(
            made.iter()
                .filter(|m| matches!(m, Made::Namespaced(_)))
                .count(),
            980
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
