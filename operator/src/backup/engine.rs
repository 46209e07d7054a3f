//! The I/O around the pure archive: reading the selected objects from the cluster, and
//! reading a stored backup back with every check.

use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams},
    discovery::{Discovery, Scope, verbs},
};
use serde_json::Value;

use super::{archive, selection, store::Store};
use crate::api::{
    backup::Backup,
    backup_schedule::Selection,
    backup_store::{BackupStore, BackupStoreSpec},
    common::NamespacedRef,
};

/// What the cluster gave for a selection.
#[derive(Debug, Default)]
pub struct Collected {
    pub objects: Vec<Value>,
    /// Kinds the operator may not list (no RBAC): left out, and said so.
    pub forbidden_kinds: Vec<String>,
}

/// Why a backup could not be read from the cluster or written: a message for the status.
pub type Failure = String;

/// Reads every wanted object of the selection, cleaned.
pub async fn collect(
    client: &Client,
    include: &Selection,
    exclude_kinds: &[String],
) -> Result<Result<Collected, Failure>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let selector = include.label_selector.as_ref().map(selector_text);
    let mut params = ListParams::default();
    if let Some(selector) = &selector {
        params = params.labels(selector);
    }
    let mut collected = Collected::default();
    let mut found_kinds = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || !selection::kind_wanted(&resource.kind, &include.kinds, exclude_kinds)
            {
                continue;
            }
            found_kinds.push(resource.kind.clone());
            for namespace in &include.namespaces {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &resource);
                let list = match api.list(&params).await {
                    Ok(list) => list,
                    Err(kube::Error::Api(status)) if status.code == 403 => {
                        if !include.kinds.is_empty() {
                            return Ok(Err(format!(
                                "the operator may not list {} in {namespace}: grant it get/list on {} ({})",
                                resource.kind, resource.plural, resource.group
                            )));
                        }
                        if !collected.forbidden_kinds.contains(&resource.kind) {
                            collected.forbidden_kinds.push(resource.kind.clone());
                        }
                        continue;
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => continue,
                    Err(error) => return Err(error),
                };
                for item in list.items {
                    let mut object = serde_json::to_value(&item).unwrap_or_default();
                    object["apiVersion"] = Value::String(resource.api_version.clone());
                    object["kind"] = Value::String(resource.kind.clone());
                    if selection::object_wanted(&object) {
                        collected.objects.push(selection::clean(object));
                    }
                }
            }
        }
    }
    let missing: Vec<_> = include
        .kinds
        .iter()
        .filter(|kind| !found_kinds.contains(kind))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(format!(
            "kinds not served by this cluster (or excluded): {}",
            missing
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Ok(collected))
}

/// `matchLabels` and `matchExpressions` as a label selector string.
pub fn selector_text(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for LabelSelectorRequirement {
        key,
        operator,
        values,
    } in selector.match_expressions.iter().flatten()
    {
        let values = values.clone().unwrap_or_default().join(",");
        parts.push(match operator.as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.clone(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// The store, opened with the credentials from its Secret.
pub async fn open_store(
    client: &Client,
    spec: &BackupStoreSpec,
) -> Result<Result<Store, Failure>, kube::Error> {
    let credentials = match credentials(client, spec).await? {
        Ok(credentials) => credentials,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(Store::open(spec, credentials).map_err(|error| error.to_string()))
}

/// S3 credentials from the store's Secret (`accessKeyId`, `secretAccessKey`, and
/// `sessionToken` for temporary credentials); `None` for a filesystem store.
pub async fn credentials(
    client: &Client,
    spec: &BackupStoreSpec,
) -> Result<Result<Option<super::store::Credentials>, Failure>, kube::Error> {
    Ok(Ok(match &spec.s3 {
        None => None,
        Some(s3) => {
            let reference = &s3.credentials_secret_ref;
            let secret = Api::<Secret>::namespaced(client.clone(), &reference.namespace)
                .get_opt(&reference.name)
                .await?;
            let Some(secret) = secret else {
                return Ok(Err(format!(
                    "credentials Secret {}/{} not found",
                    reference.namespace, reference.name
                )));
            };
            let data = secret.data.unwrap_or_default();
            let key = |name: &str| {
                data.get(name)
                    .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_owned())
            };
            match (key("accessKeyId"), key("secretAccessKey")) {
                (Some(access_key_id), Some(secret_access_key)) => Some(super::store::Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: key(SESSION_TOKEN_KEY).filter(|token| !token.is_empty()),
                }),
                _ => {
                    return Ok(Err(format!(
                        "credentials Secret {}/{} needs the keys accessKeyId and secretAccessKey",
                        reference.namespace, reference.name
                    )));
                }
            }
        }
    }))
}

/// The key of a store's credentials Secret that holds the session token of temporary (STS)
/// credentials, next to `accessKeyId` and `secretAccessKey`.
pub const SESSION_TOKEN_KEY: &str = "sessionToken";

/// The BackupStore a backup names, opened.
pub async fn store_named(
    client: &Client,
    name: &str,
) -> Result<Result<Store, Failure>, kube::Error> {
    let Some(store) = Api::<BackupStore>::all(client.clone())
        .get_opt(name)
        .await?
    else {
        return Ok(Err(format!("BackupStore {name} not found")));
    };
    open_store(client, &store.spec).await
}

/// The age identity from a Secret (key `identity`). The value never leaves this process.
pub async fn identity(
    client: &Client,
    reference: &NamespacedRef,
) -> Result<Result<String, Failure>, kube::Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), &reference.namespace)
        .get_opt(&reference.name)
        .await?;
    let Some(secret) = secret else {
        return Ok(Err(format!(
            "identity Secret {}/{} not found",
            reference.namespace, reference.name
        )));
    };
    match secret.data.unwrap_or_default().get("identity") {
        // The key file as age-keygen and `resurgo keygen` write it: comment lines, then
        // the key.
        Some(bytes) => Ok(Ok(String::from_utf8_lossy(&bytes.0)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .unwrap_or_default()
            .to_owned())),
        None => Ok(Err(format!(
            "identity Secret {}/{} has no key `identity`",
            reference.namespace, reference.name
        ))),
    }
}

/// What a stored backup holds, once every check passed.
pub struct Opened {
    pub manifest: archive::Manifest,
    pub objects: Vec<Value>,
}

/// Reads a completed backup from its store and opens it with every check. The outer error
/// is the cluster's; the inner one why this backup is refused.
pub async fn read_backup(
    client: &Client,
    backup: &Backup,
    identity: &str,
) -> Result<Result<Vec<Value>, Failure>, kube::Error> {
    Ok(open_backup(client, backup, identity)
        .await?
        .map(|opened| opened.objects))
}

/// [`read_backup`], with the manifest: every check of [`archive::open`], then every data
/// dump read back (as a stream) against its SHA-256 and size in the manifest.
pub async fn open_backup(
    client: &Client,
    backup: &Backup,
    identity: &str,
) -> Result<Result<Opened, Failure>, kube::Error> {
    let status = backup.status.clone().unwrap_or_default();
    let Some(location) = status.location else {
        return Ok(Err("it records no location".into()));
    };
    let store = match store_named(client, &backup.spec.store).await? {
        Ok(store) => store,
        Err(failure) => return Ok(Err(failure)),
    };
    let manifest = match store
        .read(&format!("{location}{}", archive::MANIFEST))
        .await
    {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let ciphertext = match store.read(&format!("{location}{}", archive::OBJECTS)).await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let recorded = status.manifest_sha256.clone();
    let identity = identity.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        archive::open(recorded.as_deref(), &manifest, &ciphertext, &identity)
    })
    .await
    .map_err(|error| format!("the check stopped: {error}"));
    let (manifest, objects) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(refusal)) => return Ok(Err(refusal.to_string())),
        Err(failure) => return Ok(Err(failure)),
    };
    for entry in &manifest.dumps {
        let found = match store.digest(&entry.key, 0).await {
            Ok(found) => found,
            Err(error) => return Ok(Err(error.to_string())),
        };
        let found = found.as_ref().map(|d| (d.sha256.as_str(), d.bytes));
        if let Err(refusal) = archive::check_dump(entry, found) {
            return Ok(Err(refusal.to_string()));
        }
    }
    Ok(Ok(Opened { manifest, objects }))
}
