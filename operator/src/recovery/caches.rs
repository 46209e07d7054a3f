//! The operator's caches of what the plans made: every object carrying the
//! `resurgo.dev/plan` label, as its watch last saw it. A reconcile reads readiness and
//! existence here instead of asking the API server once per object per service, and a
//! change to one of these objects wakes the plan's reconcile after the cache has it.

use std::collections::HashMap;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::Job,
};
use kube::{
    Api, Client, Resource,
    api::{DynamicObject, PartialObjectMeta},
    core::ApiResource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::Value;

use super::{PlanMeta, plan_of};
use crate::{
    labels,
    operator::{TriggerBackoff, spawn_watch},
};

/// The plans' workloads as their watches last saw them, slimmed (see [`Slim`]): what a
/// reconcile needs of them is whether they exist and how ready they are, and that it can
/// read here instead of asking the API server once per service per reconcile.
pub(super) struct Created {
    pub(super) deployments: Store<Deployment>,
    pub(super) stateful_sets: Store<StatefulSet>,
    pub(super) daemon_sets: Store<DaemonSet>,
    /// Workload Jobs, and the dataRestore and check Jobs (see `run_job`).
    pub(super) jobs: Store<Job>,
    /// Every other namespaced kind found in a workload, metadata only, by `apiVersion/kind`.
    /// Its watch starts when a workload first names the kind (see [`Created::watch`]).
    /// Secrets are never watched: the operator has no right to list them.
    pub(super) others: std::sync::Mutex<HashMap<String, (ApiResource, Store<ObjectMeta>)>>,
    pub(super) client: Client,
    /// Where those watches send the plan of an object deleted, so that it is rebuilt.
    pub(super) lost: futures::channel::mpsc::UnboundedSender<ObjectRef<PlanMeta>>,
}

/// An object of a kind known only at run time, metadata only.
type ObjectMeta = PartialObjectMeta<DynamicObject>;

impl Created {
    /// Whether the caches show the object; `None` when no filled cache holds its kind.
    pub(super) fn has(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<bool> {
        let typed = match (api_version, kind) {
            ("apps/v1", "Deployment") => Some(
                self.deployments
                    .get(&ObjectRef::new(name).within(namespace))
                    .is_some(),
            ),
            ("apps/v1", "StatefulSet") => Some(
                self.stateful_sets
                    .get(&ObjectRef::new(name).within(namespace))
                    .is_some(),
            ),
            ("apps/v1", "DaemonSet") => Some(
                self.daemon_sets
                    .get(&ObjectRef::new(name).within(namespace))
                    .is_some(),
            ),
            ("batch/v1", "Job") => Some(
                self.jobs
                    .get(&ObjectRef::new(name).within(namespace))
                    .is_some(),
            ),
            _ => None,
        };
        if typed.is_some() {
            return typed;
        }
        let others = self.others.lock().expect("never poisoned");
        let (resource, store) = others.get(&format!("{api_version}/{kind}"))?;
        store.wait_until_ready().now_or_never()?.ok()?;
        let at = ObjectRef::new_with(name, resource.clone()).within(namespace);
        Some(store.get(&at).is_some())
    }

    /// Starts the metadata watch of a kind's objects carrying the plan label, once.
    pub(super) fn watch(&self, key: &str, resource: &ApiResource) {
        if Self::holds(&resource.kind) || (resource.group.is_empty() && resource.kind == "Secret") {
            return;
        }
        let mut others = self.others.lock().expect("never poisoned");
        if others.contains_key(key) {
            return;
        }
        let writer = reflector::store::Writer::new(resource.clone());
        others.insert(key.to_owned(), (resource.clone(), writer.as_reader()));
        let lost = self.lost.clone();
        let changes = watcher(
            Api::<ObjectMeta>::all_with(self.client.clone(), resource),
            watcher::Config::default().labels(labels::PLAN),
        )
        .backoff(TriggerBackoff::default())
        .modify(|object| slim_metadata(&mut object.metadata))
        .reflect(writer);
        tokio::spawn(changes.for_each(move |event| {
            if let Ok(watcher::Event::Delete(object)) = event
                && let Some(plan) = plan_of(object)
            {
                let _ = lost.unbounded_send(plan);
            }
            futures::future::ready(())
        }));
    }

    /// Whether the caches hold objects of this kind.
    pub(super) fn holds(kind: &str) -> bool {
        matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job")
    }

    /// The object as a JSON value; `None` when the cache does not have it or does not hold
    /// its kind.
    pub(super) fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        fn find<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Value>
        where
            K: Resource<DynamicType = ()> + Clone + serde::Serialize,
        {
            let object = store.get(&ObjectRef::new(name).within(namespace))?;
            serde_json::to_value(&*object).ok()
        }
        let mut object = match kind {
            "Deployment" => find(&self.deployments, namespace, name),
            "StatefulSet" => find(&self.stateful_sets, namespace, name),
            "DaemonSet" => find(&self.daemon_sets, namespace, name),
            "Job" => find(&self.jobs, namespace, name),
            _ => None,
        }?;
        object["kind"] = Value::String(kind.to_owned());
        Some(object)
    }
}

/// What a workload cache keeps of an object: its identity, generation, replica count and
/// status, without managedFields, annotations or the pod template, which are most of its
/// size (a whole Deployment is about 20 KB in memory).
pub(super) trait Slim {
    fn slim(&mut self);
}

impl Slim for Deployment {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for StatefulSet {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
            spec.volume_claim_templates = None;
        }
    }
}

impl Slim for Job {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for DaemonSet {
    fn slim(&mut self) {
        slim_metadata(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

fn slim_metadata(metadata: &mut kube::api::ObjectMeta) {
    metadata.managed_fields = None;
    metadata.annotations = None;
}

/// A watch of `K` objects carrying the plan label, reflected into a store before each
/// change reaches the controller: a reconcile woken by a change finds it in the store.
pub(super) fn reflected<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // With backoff: a watch refused (403 under too narrow RBAC, an API server restarting)
    // is retried with growing pauses, not in a tight loop that floods the log.
    let stream = watcher(
        Api::<K>::all(client.clone()),
        watcher::Config::default().labels(labels::PLAN),
    )
    .backoff(TriggerBackoff::default())
    .modify(Slim::slim)
    .reflect(writer)
    .touched_objects();
    // On a task of its own: the store is then as fresh as the watch, whether or not the
    // Controller (which runs its reconciles on the same task as its inputs) is busy.
    (reader, spawn_watch(K::kind(&()), stream))
}
