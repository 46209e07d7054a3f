//! Data dumps back into a rebuilt service: a RecoveryPlan service with `fromBackup` and a
//! `dataRestore` Job gets, for each data dump of the chosen backup in its source namespace,
//! a pre-signed GET URL and the SHA-256 the manifest recorded, as environment variables
//! `RESURGO_DUMP_<NAME>_URL` and `RESURGO_DUMP_<NAME>_SHA256` (`<NAME>` is the dump's name
//! in capitals, `-` as `_`), from a Secret `<job>-dumps` in the service's namespace that is
//! deleted once the Job is done. The Job downloads, checks the SHA-256, decrypts with the
//! identity it is given (never by the operator) and loads the data.
//!
//! Not wired into the RecoveryPlan controller yet: its `run_job` (operator/src/recovery/
//! mod.rs) is to call [`prepare`] just before it creates a `restore` Job, add the returned
//! source to the Job's containers with [`add_env_from`], and call [`forget`] once the Job
//! completed or failed. The rebuilt namespace's default-deny NetworkPolicy must then let
//! the restore Job reach the store's endpoint.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::JobSpec,
        core::v1::{EnvFromSource, Secret, SecretEnvSource},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};

use super::{archive, dump, engine, restore};
use crate::{
    api::{
        common::JobTemplate,
        recovery_plan::{RecoveryPlan, Service},
    },
    labels::{self, FIELD_MANAGER},
};

/// How much longer than the restore Job's timeout its download URLs stay valid.
pub const URL_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The prefix of a dump's variables: `RESURGO_DUMP_FSE_DUMP` for `fse-dump`.
pub fn variable(dump: &str) -> String {
    format!(
        "RESURGO_DUMP_{}",
        dump.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// The Secret with a restore Job's download URLs.
pub fn secret_name(job: &str) -> String {
    format!("{job}-dumps")
}

/// The Secret's data: `<variable>_URL` and `<variable>_SHA256` per dump, given its URL.
pub fn secret_data(dumps: &[(archive::DumpEntry, String)]) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    for (entry, url) in dumps {
        let variable = variable(&entry.name);
        data.insert(
            format!("{variable}_URL"),
            ByteString(url.clone().into_bytes()),
        );
        data.insert(
            format!("{variable}_SHA256"),
            ByteString(entry.sha256.clone().into_bytes()),
        );
    }
    data
}

/// What every container of the restore Job gets: the Secret's keys as variables.
pub fn env_from(job: &str) -> EnvFromSource {
    EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret_name(job),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// Adds `source` to every container and init container of the spec.
pub fn add_env_from(spec: &mut JobSpec, source: &EnvFromSource) {
    for container in dump::containers_mut(spec) {
        let sources = container.env_from.get_or_insert_with(Vec::new);
        if !sources.contains(source) {
            sources.push(source.clone());
        }
    }
}

/// For the restore Job `job` of a `fromBackup` service, in `namespace`: chooses the backup
/// (the same choice and checks as the workload's restore, dumps included), signs a GET URL
/// for each of its dumps of the source namespace and applies the Secret. `Ok(None)`: the
/// backup has no dump of that namespace (no Secret, nothing to add). The inner error is why
/// there is nothing safe to restore.
pub async fn prepare(
    client: &Client,
    plan: &RecoveryPlan,
    service: &Service,
    template: &JobTemplate,
    job: &str,
    namespace: &str,
) -> Result<Result<Option<EnvFromSource>, String>, kube::Error> {
    let Some(from) = service
        .workload
        .as_ref()
        .and_then(|w| w.from_backup.as_ref())
    else {
        return Ok(Ok(None));
    };
    let source = restore::source_namespace(service, from);
    let (backup, _) = match restore::choose(client, plan, service, from).await? {
        Ok(((backup, _), description)) => (backup, description),
        Err(failure) => return Ok(Err(failure)),
    };
    let Some(backup) = Api::<crate::api::backup::Backup>::all(client.clone())
        .get_opt(&backup)
        .await?
    else {
        return Ok(Err(format!("Backup {backup} is gone")));
    };
    let status = backup.status.clone().unwrap_or_default();
    let store = match engine::store_named(client, &backup.spec.store).await? {
        Ok(store) => store,
        Err(failure) => return Ok(Err(failure)),
    };
    let location = status.location.clone().unwrap_or_default();
    let manifest = match store
        .read(&format!("{location}{}", archive::MANIFEST))
        .await
    {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error.to_string())),
    };
    // Checked again against the hash the Backup recorded: the dumps' hashes come from it.
    let manifest = match archive::check_manifest(status.manifest_sha256.as_deref(), &manifest) {
        Ok(manifest) => manifest,
        Err(refusal) => return Ok(Err(refusal.to_string())),
    };
    let dumps: Vec<_> = manifest
        .dumps
        .into_iter()
        .filter(|d| d.namespace == source)
        .collect();
    if dumps.is_empty() {
        return Ok(Ok(None));
    }
    let valid_for = template
        .timeout
        .as_ref()
        .and_then(|t| t.to_std().ok())
        .unwrap_or(super::dump::DEFAULT_TIMEOUT)
        + URL_MARGIN;
    let mut signed = Vec::new();
    for entry in dumps {
        match store
            .presign(reqwest::Method::GET, &entry.key, valid_for)
            .await
        {
            Ok(url) => signed.push((entry, url)),
            Err(error) => return Ok(Err(error.to_string())),
        }
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(job)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY_KEY.to_owned(),
                labels::MANAGED_BY.to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(secret_data(&signed)),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            &secret_name(job),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(Ok(Some(env_from(job))))
}

/// Takes the restore Job's download URLs out of the cluster, once it is done: deletes the
/// Secret, or, where the operator may not delete Secrets (the rebuilt namespaces are not in
/// the chart's `backup.dataDumpNamespaces`), empties it with the `patch` it has everywhere.
pub async fn forget(client: &Client, namespace: &str, job: &str) -> Result<(), kube::Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let name = secret_name(job);
    match secrets.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let empty = serde_json::json!({"data": null});
            match secrets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&empty))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_dump_gets_a_url_and_its_hash_under_its_own_name() {
        let entry = archive::DumpEntry {
            namespace: "clinical-records".into(),
            name: "fse-dump".into(),
            key: "backups/bk/dumps/clinical-records/fse-dump.age".into(),
            sha256: "ab".repeat(32),
            bytes: 10,
        };
        let data = secret_data(&[(entry, "https://s3/u".into())]);
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["RESURGO_DUMP_FSE_DUMP_SHA256", "RESURGO_DUMP_FSE_DUMP_URL"]
        );
        assert_eq!(data["RESURGO_DUMP_FSE_DUMP_URL"].0, b"https://s3/u");
        let mut spec: JobSpec = serde_json::from_value(json!({"template": {"spec": {
            "containers": [{"name": "load", "image": "pg:16"}],
            "initContainers": [{"name": "fetch", "image": "curl"}]}}}))
        .unwrap();
        add_env_from(&mut spec, &env_from("records-restore"));
        add_env_from(&mut spec, &env_from("records-restore"));
        let value = serde_json::to_value(&spec).unwrap();
        for container in ["containers", "initContainers"] {
            assert_eq!(
                value["template"]["spec"][container][0]["envFrom"],
                json!([{"secretRef": {"name": "records-restore-dumps", "optional": false}}])
            );
        }
    }
}
