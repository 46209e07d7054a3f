//! The objects a `fromBackup` workload restores: from the named Backup, or from the clean
//! restore point (the newest intact backup of the namespace that completed before the open
//! Incident's `compromisedSince`, verified unless the Incident allows unverified ones). A
//! drill's copy of a plan follows the rule of the drill that made it.
//!
//! Every backup is opened with all of [`archive::open`]'s checks; a refused one is never
//! used. Backups that opened are remembered per (backup uid, manifest hash,
//! identity hash), so a reconcile does not read and decrypt the store every time.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
};

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde_json::Value;

use super::{archive, engine, restore_point, selection};
use crate::api::{
    backup::{Backup, BackupPhase, VerificationState},
    incident::{Incident, IncidentMode, IncidentState, RestorePointRule},
    recovery_plan::{FromBackup, RecoveryPlan, Service},
};
use crate::labels;

type Opened = Result<Arc<Vec<Value>>, String>;
/// (backup uid, manifest hash, identity hash) to what opening the backup gave.
type OpenedCache = Mutex<BTreeMap<(String, String, String), Opened>>;

fn opened_cache() -> &'static OpenedCache {
    static CACHE: OnceLock<OpenedCache> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The objects to apply for the service, in restore order, and a sentence on where they
/// came from; or why there is nothing safe to restore.
pub async fn objects(
    client: &Client,
    plan: &RecoveryPlan,
    service: &Service,
    from: &FromBackup,
) -> Result<Result<(Vec<Value>, String), String>, kube::Error> {
    let namespace = source_namespace(service, from);
    let (chosen, description) = match choose(client, plan, service, from).await? {
        Ok(chosen) => chosen,
        Err(failure) => return Ok(Err(failure)),
    };
    let mut wanted: Vec<Value> = chosen
        .1
        .iter()
        .filter(|object| object["metadata"]["namespace"] == namespace.as_str())
        .filter(|object| {
            let kind = object["kind"].as_str().unwrap_or_default();
            from.kinds.is_empty() || from.kinds.iter().any(|k| k == kind)
        })
        // Credentials the plan regenerates are never restored: the backup's may be known
        // to the attacker.
        .filter(|object| {
            object["kind"] != "Secret"
                || !service
                    .regenerate_secrets
                    .iter()
                    .any(|s| object["metadata"]["name"] == s.name.as_str())
        })
        .cloned()
        .collect();
    wanted
        .sort_by_key(|object| selection::restore_rank(object["kind"].as_str().unwrap_or_default()));
    for object in &mut wanted {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("namespace");
        }
    }
    Ok(Ok((wanted, description)))
}

/// The namespace whose objects (and data dumps) a `fromBackup` service restores.
pub fn source_namespace(service: &Service, from: &FromBackup) -> String {
    from.source_namespace
        .clone()
        .unwrap_or_else(|| service.namespace.clone())
}

/// The backup a `fromBackup` service restores from, checked, with its objects and a
/// sentence on the choice: ((backup, objects), description), or why there is none.
pub async fn choose(
    client: &Client,
    plan: &RecoveryPlan,
    service: &Service,
    from: &FromBackup,
) -> Result<Result<((String, Arc<Vec<Value>>), String), String>, kube::Error> {
    let namespace = source_namespace(service, from);
    let identity = match engine::identity(client, &from.identity_secret_ref).await? {
        Ok(identity) => identity,
        Err(failure) => return Ok(Err(failure)),
    };
    let incident = open_incident(client, plan).await?;
    let plan = plan.name_any();
    // The restore point the incident recorded wins: the incident chose it for this service
    // before the plan started, and a backup verified since must not change the choice.
    let recorded = incident.as_ref().and_then(|i| {
        i.status
            .as_ref()?
            .restore_points
            .iter()
            .find(|p| p.plan == plan && p.service == service.name && p.backup.is_some())
            .cloned()
    });
    let rule = rule_of(incident.as_ref(), &namespace);
    let named = from
        .backup
        .clone()
        .or_else(|| recorded.as_ref().and_then(|p| p.backup.clone()))
        .or_else(|| {
            incident.as_ref().and_then(|i| {
                (i.spec.restore_point.rule == RestorePointRule::Named)
                    .then(|| i.spec.restore_point.backup.clone())
                    .flatten()
            })
        });
    let (choice, objects) = restore_point(client, &identity, &rule, named.as_deref()).await?;
    // The incident's record says why this backup and not a newer one; keep saying it.
    let description = match (&recorded, &from.backup, &objects) {
        (Some(point), None, Some(_)) => point
            .message
            .clone()
            .unwrap_or_else(|| choice.describe(&namespace)),
        _ => choice.describe(&namespace),
    };
    Ok(match (choice.backup, objects) {
        (Some(backup), Some(objects)) => Ok(((backup, objects), description)),
        _ => Err(description),
    })
}

/// The rule a service's restore point follows: before the incident's `compromisedSince`
/// (any time without an incident), verified unless the incident allows unverified backups.
pub fn rule_of(incident: Option<&Incident>, namespace: &str) -> restore_point::Rule {
    restore_point::Rule {
        namespace: namespace.to_owned(),
        compromised_since: incident.map(|i| i.spec.compromised_since.0),
        allow_unverified: incident.is_some_and(|i| i.spec.restore_point.allow_unverified),
    }
}

/// Chooses the restore point: the backup `named` (which must open with every check), or the
/// newest backup the rule allows that opens. Returns the choice and the chosen backup's
/// objects; a refused backup is never returned.
pub async fn restore_point(
    client: &Client,
    identity: &str,
    rule: &restore_point::Rule,
    named: Option<&str>,
) -> Result<(restore_point::Choice, Option<Arc<Vec<Value>>>), kube::Error> {
    let backups = Api::<Backup>::all(client.clone());
    if let Some(name) = named {
        let refused = |reason: String| restore_point::Choice {
            backup: None,
            completed: None,
            data_loss_window: None,
            refused: vec![restore_point::Refused {
                backup: name.to_owned(),
                reason,
            }],
        };
        let Some(backup) = backups.get_opt(name).await? else {
            return Ok((refused("not found".into()), None));
        };
        return Ok(match open(client, &backup, identity).await? {
            Ok(objects) => {
                let candidate = candidate(&backup);
                let choice = restore_point::choose(
                    Vec::new(),
                    vec![(candidate, Ok(()))],
                    rule,
                    Timestamp::now(),
                );
                (choice, Some(objects))
            }
            Err(refusal) => (refused(format!("refused: {refusal}")), None),
        });
    }
    let all = backups.list(&ListParams::default()).await?.items;
    let candidates: Vec<_> = all.iter().map(candidate).collect();
    let (tries, refused) = restore_point::candidates(&candidates, rule);
    let mut checked = Vec::new();
    let mut found = None;
    for candidate in tries {
        let backup = all
            .iter()
            .find(|b| b.name_any() == candidate.name)
            .expect("candidates come from the list");
        match open(client, backup, identity).await? {
            Ok(objects) => {
                checked.push((candidate, Ok(())));
                found = Some(objects);
                break;
            }
            Err(refusal) => checked.push((candidate, Err(refusal))),
        }
    }
    Ok((
        restore_point::choose(refused, checked, rule, Timestamp::now()),
        found,
    ))
}

fn candidate(backup: &Backup) -> restore_point::Candidate {
    let status = backup.status.clone().unwrap_or_default();
    let verification = status.verification.as_ref().map(|v| v.state);
    restore_point::Candidate {
        name: backup.name_any(),
        namespaces: backup.spec.include.namespaces.clone(),
        completed: status
            .completed
            .filter(|_| status.phase == Some(BackupPhase::Completed))
            .map(|t| t.0),
        verified: verification == Some(VerificationState::Verified),
        verification_failed: verification == Some(VerificationState::Failed),
    }
}

/// The incident whose rule the plan's restores follow: for a drill's copy, the Drill that
/// made it and owns it (its `compromisedSince` and `allowUnverified`); otherwise the open
/// Real Incident that names the plan, if any (the newest, when several).
async fn open_incident(
    client: &Client,
    plan: &RecoveryPlan,
) -> Result<Option<Incident>, kube::Error> {
    let api = Api::<Incident>::all(client.clone());
    if let Some(drill) = plan.labels().get(labels::INCIDENT) {
        let owns = |incident: &Incident| {
            incident.uid().is_some_and(|uid| {
                plan.owner_references()
                    .iter()
                    .any(|o| o.kind == "Incident" && o.uid == uid)
            })
        };
        return Ok(api
            .get_opt(drill)
            .await?
            .filter(|i| i.spec.mode == IncidentMode::Drill && owns(i)));
    }
    let name = plan.name_any();
    let incidents = api.list(&ListParams::default()).await?;
    Ok(incidents
        .items
        .into_iter()
        .filter(|i| i.spec.state == IncidentState::Open && i.spec.mode == IncidentMode::Real)
        .filter(|i| i.spec.recovery_plans.contains(&name))
        .max_by_key(|i| i.spec.compromised_since.0))
}

async fn open(
    client: &Client,
    backup: &Backup,
    identity: &str,
) -> Result<Result<Arc<Vec<Value>>, String>, kube::Error> {
    let status = backup.status.clone().unwrap_or_default();
    if status.phase != Some(BackupPhase::Completed) {
        return Ok(Err("it has not completed".into()));
    }
    let key = (
        backup.uid().unwrap_or_default(),
        status.manifest_sha256.clone().unwrap_or_default(),
        archive::sha256_hex(identity.as_bytes()),
    );
    if let Some(known) = opened_cache().lock().expect("not poisoned").get(&key) {
        return Ok(known.clone());
    }
    let result = engine::read_backup(client, backup, identity)
        .await?
        .map(Arc::new);
    // Only what opened is remembered: a refusal may be a store that is down for a moment.
    if result.is_ok() {
        opened_cache()
            .lock()
            .expect("not poisoned")
            .insert(key, result.clone());
    }
    Ok(result)
}
