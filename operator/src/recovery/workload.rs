//! A service's workload in the cluster: what of it exists, applying what is missing, and
//! whether it is ready.
//!
//! What exists is read from the operator's caches of the plans' objects (see
//! [`super::Created`]), and only where no filled cache holds a kind, with one list per kind
//! by the service's labels: never one read per object, since a service restored from a
//! backup can have thousands of objects, and a plan a thousand services. The missing
//! objects are created
//! concurrently, rank by rank (ServiceAccounts, Secrets and ConfigMaps before the workloads
//! that mount them; see [`restore_rank`]).

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
    let mut current = existing(ctx, &apis, plan, &service.name, &wanted).await?;

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

/// Enough of one object of a workload to find it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What a service's workload is made of; `None` when a manifest cannot be applied (that
/// was reported when the service was).
pub(super) async fn identities(
    ctx: &Context,
    plan: &str,
    service: &Service,
    manifests: &[Value],
) -> Result<Option<Vec<Identity>>, Error> {
    let Ok((wanted, _)) = resolve(ctx, plan, service, manifests).await? else {
        return Ok(None);
    };
    Ok(Some(
        wanted
            .iter()
            .map(|w| Identity {
                api_version: w.object["apiVersion"].as_str().unwrap_or_default().into(),
                kind: w.object["kind"].as_str().unwrap_or_default().into(),
                namespace: service.namespace.clone(),
                name: w.name.clone(),
            })
            .collect(),
    ))
}

/// Whether every object of a ready service's workload still exists.
///
/// The caches answer (see [`super::Created::has`]); what they do not show is asked of the
/// API server, one consistent list per kind by the service's labels, before the service is
/// called lost: a cache can lag behind a create (or still be filling, after a restart), and
/// a rebuild for nothing would restart the service's order.
pub(super) async fn present(
    ctx: &Context,
    plan: &str,
    service: &str,
    identities: &[Identity],
) -> Result<bool, Error> {
    let mut unsure: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    for identity in identities {
        let Identity {
            api_version,
            kind,
            namespace,
            name,
        } = identity;
        if ctx.created.has(api_version, kind, namespace, name) != Some(true) {
            unsure
                .entry((api_version, kind, namespace))
                .or_default()
                .push(name);
        }
    }
    for ((api_version, kind, namespace), names) in unsure {
        let api = match object_api(ctx, api_version, kind, namespace).await? {
            Ok(api) => api,
            // Not servable any more: nothing a rebuild could fix.
            Err(_) => continue,
        };
        let found = names_of(&api, plan, service, kind, &names, true).await?;
        if names.iter().any(|name| !found.contains(*name)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which of `names` exist, asked of the API server: one list by the service's labels
/// (consistent, or from the API server's watch cache), or, for Secrets, which the operator
/// may not list, one read each.
async fn names_of(
    api: &Api<DynamicObject>,
    plan: &str,
    service: &str,
    kind: &str,
    names: &[&str],
    consistent: bool,
) -> Result<BTreeSet<String>, Error> {
    let what = format!("{kind}s of service {service}");
    if kind == "Secret" {
        let mut found = BTreeSet::new();
        for name in names {
            if api
                .get_metadata_opt(name)
                .await
                .map_err(kube_error("read", format!("Secret {name}")))?
                .is_some()
            {
                found.insert((*name).to_owned());
            }
        }
        return Ok(found);
    }
    let selector = format!(
        "{}={plan},{}={service},{}=workload",
        labels::PLAN,
        labels::SERVICE,
        labels::PART
    );
    let mut params = ListParams::default().labels(&selector);
    if !consistent {
        params = params.match_any();
    }
    let list = api
        .list_metadata(&params)
        .await
        .map_err(kube_error("list", what))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|object| object.metadata.name)
        .collect())
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

/// The service's objects that exist, by (kind key, name): whole for the kinds with a
/// status, which the caches hold whole, else just their kind and name.
///
/// The caches answer (see [`super::Created`]). A kind no filled cache holds is listed
/// once by the service's labels, from the API server's watch cache: a stale answer only
/// costs a create refused as existing, which is then applied over.
async fn existing(
    ctx: &Context,
    apis: &BTreeMap<String, Api<DynamicObject>>,
    plan: &str,
    service: &str,
    wanted: &[Wanted],
) -> Result<BTreeMap<(String, String), Value>, Error> {
    let mut found = BTreeMap::new();
    let mut unknown: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for item in wanted {
        let api_version = item.object["apiVersion"].as_str().unwrap_or_default();
        let kind = item.object["kind"].as_str().unwrap_or_default();
        let namespace = item.object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let at = (item.key.clone(), item.name.clone());
        if let Some(object) = ctx.created.get(kind, namespace, &item.name) {
            found.insert(at, object);
            continue;
        }
        if super::Created::holds(kind) {
            continue;
        }
        match ctx.created.has(api_version, kind, namespace, &item.name) {
            Some(true) => {
                let value = serde_json::json!({"kind": kind, "metadata": {"name": item.name}});
                found.insert(at, value);
            }
            Some(false) => {}
            None => unknown
                .entry((item.key.as_str(), kind))
                .or_default()
                .push(&item.name),
        }
    }
    for ((key, kind), names) in unknown {
        for name in names_of(&apis[key], plan, service, kind, &names, false).await? {
            let value = serde_json::json!({"kind": kind, "metadata": {"name": name}});
            found.insert((key.to_owned(), name), value);
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
    drop(kinds);
    if scope == Scope::Namespaced {
        ctx.created.watch(&key, &resource);
    }
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
