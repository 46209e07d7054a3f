//! A service's workload in the cluster: what of it exists, applying what is missing, and
//! whether it is ready.
//!
//! What exists is read with one list per kind (by the service's labels), not one read per
//! object: a service restored from a backup can have thousands of objects. The missing
//! objects are applied concurrently, rank by rank (ServiceAccounts, Secrets and ConfigMaps
//! before the workloads that mount them; see [`restore_rank`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
    discovery::{self, Scope},
};
use serde_json::Value;

use super::{Context, Error, desired, kube_error, readiness::Readiness};
use crate::{
    api::recovery_plan::Service,
    backup::selection::restore_rank,
    labels::{self, FIELD_MANAGER},
};

/// How many objects of one service are applied at once.
const APPLIES_IN_FLIGHT: usize = 32;

/// Kinds whose readiness is read from their status; any other object is ready once it
/// exists, so listing its metadata is enough.
const WITH_STATUS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "Job"];

/// A manifest as the service applies it, with the API of its kind.
struct Wanted {
    object: Value,
    key: String,
    name: String,
}

/// Applies the manifests that are missing and says whether all of them are ready.
pub(super) async fn apply(
    ctx: &Context,
    plan: &str,
    service: &Service,
    manifests: &[Value],
) -> Result<Readiness, Error> {
    let (wanted, apis) = match resolve(ctx, plan, service, manifests).await? {
        Ok(resolved) => resolved,
        Err(message) => return Ok(Readiness::Failed(message)),
    };
    // A workload the caches miss is simply created: one that exists after all (made a
    // moment ago, not seen yet) answers AlreadyExists and is applied over, which costs less
    // than a list before every start.
    let mut current = existing(ctx, &apis, plan, &service.name, &wanted, false).await?;

    let mut ranks: BTreeMap<u8, Vec<&Wanted>> = BTreeMap::new();
    for item in wanted
        .iter()
        .filter(|w| !current.contains_key(&(w.key.clone(), w.name.clone())))
    {
        let kind = item.object["kind"].as_str().unwrap_or_default();
        ranks.entry(restore_rank(kind)).or_default().push(item);
    }
    for (_, items) in ranks {
        let applies: Vec<_> = items
            .into_iter()
            .map(|item| {
                let api = &apis[&item.key];
                async move { (item, create_one(api, item).await) }
            })
            .collect();
        let applied = futures::stream::iter(applies)
            .buffer_unordered(APPLIES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (item, result) in applied {
            match result? {
                Ok(object) => {
                    current.insert((item.key.clone(), item.name.clone()), object);
                }
                Err(rejected) => return Ok(Readiness::Failed(rejected)),
            }
        }
    }

    let mut waiting = Vec::new();
    for item in &wanted {
        match current.get(&(item.key.clone(), item.name.clone())) {
            None => waiting.push(format!("{} not created yet", describe(&item.object))),
            Some(object) => match super::readiness::of(object) {
                Readiness::Ready => {}
                Readiness::Failed(message) => return Ok(Readiness::Failed(message)),
                Readiness::Progressing(message) => waiting.push(message),
            },
        }
    }
    Ok(if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::Progressing(waiting.join("; "))
    })
}

/// Whether every object of a ready service's workload still exists.
pub(super) async fn present(
    ctx: &Context,
    plan: &str,
    service: &Service,
    manifests: &[Value],
) -> Result<bool, Error> {
    let (wanted, apis) = match resolve(ctx, plan, service, manifests).await? {
        Ok(resolved) => resolved,
        // A manifest the cluster cannot take was reported when the service was applied.
        Err(_) => return Ok(true),
    };
    let current = existing(ctx, &apis, plan, &service.name, &wanted, true).await?;
    Ok(wanted
        .iter()
        .all(|w| current.contains_key(&(w.key.clone(), w.name.clone()))))
}

/// The manifests as the service applies them, and the API of each kind; or why one cannot
/// be applied.
#[allow(clippy::type_complexity)]
async fn resolve(
    ctx: &Context,
    plan: &str,
    service: &Service,
    manifests: &[Value],
) -> Result<Result<(Vec<Wanted>, BTreeMap<String, Api<DynamicObject>>), String>, Error> {
    let mut apis = BTreeMap::new();
    let mut wanted = Vec::with_capacity(manifests.len());
    for (index, manifest) in manifests.iter().enumerate() {
        let object = desired::workload_object(manifest, &service.namespace, plan, &service.name);
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let Some(name) = object["metadata"]["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
        else {
            return Ok(Err(format!(
                "manifests[{index}]: {kind} has no metadata.name"
            )));
        };
        let key = format!("{api_version}/{kind}");
        if !apis.contains_key(&key) {
            match object_api(ctx, api_version, kind, &service.namespace).await? {
                Ok(api) => {
                    apis.insert(key.clone(), api);
                }
                Err(message) => return Ok(Err(format!("manifests[{index}]: {message}"))),
            }
        }
        wanted.push(Wanted { object, key, name });
    }
    Ok(Ok((wanted, apis)))
}

/// The service's objects that exist, by (kind key, name): whole for kinds with a status,
/// else just their kind and name.
///
/// The workload caches answer first; their misses are confirmed with a list when
/// `confirm_misses`. What they do not hold is listed by the service's labels, one list per
/// kind: for a start, from the API server's watch cache for kinds without a status (a stale
/// answer only costs a create refused as existing); else consistently, since readiness must
/// not be read from the past nor a ready service's objects be missed.
async fn existing(
    ctx: &Context,
    apis: &BTreeMap<String, Api<DynamicObject>>,
    plan: &str,
    service: &str,
    wanted: &[Wanted],
    confirm_misses: bool,
) -> Result<BTreeMap<(String, String), Value>, Error> {
    let mut found = BTreeMap::new();
    let mut to_list: BTreeSet<(&str, &str)> = BTreeSet::new();
    for item in wanted {
        let kind = item.object["kind"].as_str().unwrap_or_default();
        let namespace = item.object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        match ctx.created.get(kind, namespace, &item.name) {
            Some(object) => {
                found.insert((item.key.clone(), item.name.clone()), object);
            }
            None if confirm_misses || !super::Created::holds(kind) => {
                to_list.insert((item.key.as_str(), kind));
            }
            None => {}
        }
    }
    let selector = format!(
        "{}={plan},{}={service},{}=workload",
        labels::PLAN,
        labels::SERVICE,
        labels::PART
    );
    let params = ListParams::default().labels(&selector);
    for (key, kind) in to_list {
        let api = &apis[key];
        let what = format!("{kind}s of service {service}");
        if WITH_STATUS.contains(&kind) {
            let list = api.list(&params).await.map_err(kube_error("list", what))?;
            for object in list {
                let name = object.metadata.name.clone().unwrap_or_default();
                let mut value = serde_json::to_value(object).unwrap_or_default();
                // Items of a list carry no kind, and readiness is read by kind.
                value["kind"] = Value::String(kind.to_owned());
                found.insert((key.to_owned(), name), value);
            }
        } else {
            // Only a start may take the watch cache's word: a ready service checked
            // against a cache that has not seen its objects yet would be rebuilt.
            let params = if confirm_misses {
                params.clone()
            } else {
                params.clone().match_any()
            };
            let list = api
                .list_metadata(&params)
                .await
                .map_err(kube_error("list", what))?;
            for object in list {
                let name = object.metadata.name.clone().unwrap_or_default();
                let value = serde_json::json!({"kind": kind, "metadata": {"name": name}});
                found.insert((key.to_owned(), name), value);
            }
        }
    }
    Ok(found)
}

/// Creates one object that the list did not show; the inner error says why the API server
/// refused it (the plan's fault, not a reason to retry).
///
/// A create, not an apply: the object is known to be missing, and a create costs the API
/// server less than an apply, which is most of a large restore. One that exists all the
/// same (made by someone else, without the service's labels) is server-side applied over,
/// so that it carries the labels and is found by the next list.
async fn create_one(
    api: &Api<DynamicObject>,
    item: &Wanted,
) -> Result<Result<Value, String>, Error> {
    let rejected = |status: &kube::core::Status| {
        format!(
            "{} was rejected: {}",
            describe(&item.object),
            status.message
        )
    };
    let object: DynamicObject = match serde_json::from_value(item.object.clone()) {
        Ok(object) => object,
        Err(error) => return Ok(Err(format!("{}: {error}", describe(&item.object)))),
    };
    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let made = match api.create(&create, &object).await {
        Ok(made) => made,
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let apply = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch(&item.name, &apply, &Patch::Apply(&item.object))
                .await
            {
                Ok(applied) => applied,
                Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                    return Ok(Err(rejected(&status)));
                }
                Err(error) => return Err(kube_error("apply", describe(&item.object))(error)),
            }
        }
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
            return Ok(Err(rejected(&status)));
        }
        Err(error) => return Err(kube_error("create", describe(&item.object))(error)),
    };
    let mut value = serde_json::to_value(made).unwrap_or_default();
    value["kind"] = item.object["kind"].clone();
    Ok(Ok(value))
}

pub(super) fn describe(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["kind"].as_str().unwrap_or("object"),
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The API of a kind in the service's namespace, or why it cannot be applied.
async fn object_api(
    ctx: &Context,
    api_version: &str,
    kind: &str,
    namespace: &str,
) -> Result<Result<Api<DynamicObject>, String>, Error> {
    let key = format!("{api_version}/{kind}");
    let mut kinds = ctx.kinds.lock().await;
    if !kinds.contains_key(&key) {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match discovery::pinned_kind(&ctx.client, &gvk).await {
            Ok((resource, capabilities)) => {
                kinds.insert(key.clone(), (resource, capabilities.scope));
            }
            Err(error) => {
                return Ok(Err(format!(
                    "{api_version} {kind} is not served by this cluster: {error}"
                )));
            }
        }
    }
    let (resource, scope) = kinds[&key].clone();
    if scope == Scope::Cluster {
        return Ok(Err(format!(
            "{kind} is cluster-scoped: a service's workload lives in its namespace"
        )));
    }
    Ok(Ok(Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &resource,
    )))
}
