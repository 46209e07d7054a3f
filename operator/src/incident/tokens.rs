//! The InvalidateServiceAccountTokens step: which ServiceAccounts are re-created, in what
//! order, and when the step is done. Pure: the controller reads and acts.
//!
//! A token of a ServiceAccount names the account's uid, and the API server refuses it once
//! the account with that name has another uid; a legacy token Secret is refused once it is
//! gone. So deleting an account and creating it again with the same fields voids every token
//! it ever had, while the workloads that name it and the bindings that name it still hold.
//!
//! Crash safety comes from the order: an account is recorded in the incident's status (its
//! uid, its legacy token Secrets and the fields it is created again with) before it is
//! deleted; then its legacy token Secrets and the account are deleted and the account is
//! created again from the record, and the new uid is recorded. A stop anywhere in between
//! leaves a record without a new uid, and the next reconcile finishes it from the record,
//! whether the account is still there, gone, or already created again by someone else (the
//! ServiceAccount controller re-creates `default` at once). An account is done only while
//! its uid is the one the operator recorded, never because of a label or annotation.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{LocalObjectReference, ObjectReference, ServiceAccount};
use kube::{ResourceExt, api::ObjectMeta};

use super::checks::Act;
use super::timeline::Outcome;
use crate::api::{
    common::NamespacedRef,
    incident::{ReissuedServiceAccount, SavedServiceAccount, TokenInvalidation},
};

/// The type of a legacy token Secret.
pub const LEGACY_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the ServiceAccount of a legacy token Secret: the API server refuses
/// the token when it names another account than the one the token was made for.
pub const LEGACY_TOKEN_ACCOUNT: &str = "kubernetes.io/service-account.name";

/// The chart value that gives the operator the rights this step needs, per namespace.
pub const CHART_VALUE: &str = "incident.tokenInvalidationNamespaces";

/// The rights the step needs in each namespace: (verb, resource).
pub const RIGHTS: [(&str, &str); 6] = [
    ("list", "serviceaccounts"),
    ("delete", "serviceaccounts"),
    ("create", "serviceaccounts"),
    ("patch", "serviceaccounts"),
    ("list", "secrets"),
    ("delete", "secrets"),
];

/// What the controller read for the step.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Named namespaces where the operator lacks a right, with the first right it lacks
    /// (such as `delete serviceaccounts`).
    pub refused: BTreeMap<String, String>,
    /// The named namespaces that exist, with whether their deletion has begun.
    pub namespaces: BTreeMap<String, bool>,
    /// Every ServiceAccount of the named namespaces.
    pub service_accounts: Vec<ServiceAccount>,
    /// The legacy token Secrets of the named namespaces.
    pub legacy_tokens: Vec<LegacyToken>,
    /// The operator's own ServiceAccount, when it runs as one.
    pub operator: Option<NamespacedRef>,
}

/// A legacy token Secret, by name (its value is never read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyToken {
    pub namespace: String,
    pub name: String,
    /// The ServiceAccount its annotation names.
    pub service_account: String,
}

/// One ServiceAccount to delete (unless already gone) and create again from its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reissue {
    /// The record, with every legacy token Secret to delete.
    pub record: ReissuedServiceAccount,
    /// Whether the account with the replaced uid is still there to delete.
    pub delete: bool,
}

/// The ServiceAccount `username` names (`system:serviceaccount:NAMESPACE:NAME`), if any.
pub fn service_account_of(username: &str) -> Option<NamespacedRef> {
    let (namespace, name) = username
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    Some(NamespacedRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// What to keep of `account` when it is created again. Its legacy token Secrets, deleted,
/// leave its `secrets`.
pub fn saved(account: &ServiceAccount, legacy: &BTreeSet<String>) -> SavedServiceAccount {
    let names = |refs: Option<Vec<String>>| refs.unwrap_or_default();
    SavedServiceAccount {
        labels: account.metadata.labels.clone().unwrap_or_default(),
        annotations: account.metadata.annotations.clone().unwrap_or_default(),
        secrets: names(account.secrets.as_ref().map(|s| {
            s.iter()
                .filter_map(|r| r.name.clone())
                .filter(|n| !legacy.contains(n))
                .collect()
        })),
        image_pull_secrets: names(
            account
                .image_pull_secrets
                .as_ref()
                .map(|s| s.iter().map(|r| r.name.clone()).collect()),
        ),
        automount_service_account_token: account.automount_service_account_token,
    }
}

/// The ServiceAccount `record` creates again: its name and saved fields, nothing the server
/// sets (uid, resourceVersion) and no owner.
pub fn service_account(record: &ReissuedServiceAccount) -> ServiceAccount {
    let saved = &record.saved;
    let some = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(record.name.clone()),
            namespace: Some(record.namespace.clone()),
            labels: some(&saved.labels),
            annotations: some(&saved.annotations),
            ..Default::default()
        },
        secrets: (!saved.secrets.is_empty()).then(|| {
            saved
                .secrets
                .iter()
                .map(|name| ObjectReference {
                    name: Some(name.clone()),
                    ..Default::default()
                })
                .collect()
        }),
        image_pull_secrets: (!saved.image_pull_secrets.is_empty()).then(|| {
            saved
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        automount_service_account_token: saved.automount_service_account_token,
    }
}

/// Keeps one record per ServiceAccount: `new` replaces an earlier record of the same one.
pub fn remember(records: &mut Vec<ReissuedServiceAccount>, new: ReissuedServiceAccount) {
    records.retain(|r| !(r.namespace == new.namespace && r.name == new.name));
    records.push(new);
}

type Key = (String, String);

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

/// The outcome of the step for `wanted`, given the incident's records and what was read.
pub fn invalidate(
    wanted: &TokenInvalidation,
    records: &[ReissuedServiceAccount],
    seen: &Seen,
) -> Outcome<Act> {
    if let Some((namespace, right)) = seen.refused.iter().next() {
        return Outcome::Failed(format!(
            "spec.invalidateServiceAccountTokens.namespaces: the operator may not {right} in {namespace}: list {namespace} in the chart's {CHART_VALUE} and create a new Incident"
        ));
    }
    let deleting: Vec<&str> = seen
        .namespaces
        .iter()
        .filter(|(_, deleting)| **deleting)
        .map(|(n, _)| n.as_str())
        .collect();
    if !deleting.is_empty() {
        return Outcome::Waiting(format!(
            "waiting for namespace {} to be deleted: its ServiceAccounts go with it",
            deleting.join(", ")
        ));
    }
    let named: BTreeSet<&str> = wanted.namespaces.iter().map(String::as_str).collect();
    let kept: BTreeSet<Key> = wanted
        .keep
        .iter()
        .map(|k| key(&k.namespace, &k.name))
        .collect();
    let own = seen.operator.as_ref().map(|o| key(&o.namespace, &o.name));
    let spared = |k: &Key| kept.contains(k) || own.as_ref() == Some(k);

    let mut legacy: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    for token in &seen.legacy_tokens {
        legacy
            .entry(key(&token.namespace, &token.service_account))
            .or_default()
            .insert(token.name.clone());
    }
    let current: BTreeMap<Key, &ServiceAccount> = seen
        .service_accounts
        .iter()
        .filter(|a| named.contains(a.namespace().unwrap_or_default().as_str()))
        .map(|a| (key(&a.namespace().unwrap_or_default(), &a.name_any()), a))
        .filter(|(k, _)| !spared(k))
        .collect();
    let recorded: BTreeMap<Key, &ReissuedServiceAccount> = records
        .iter()
        .filter(|r| named.contains(r.namespace.as_str()))
        .map(|r| (key(&r.namespace, &r.name), r))
        .filter(|(k, _)| !spared(k))
        .collect();

    // First every account found that has no record: recorded before anything is deleted.
    let unrecorded: Vec<ReissuedServiceAccount> = current
        .iter()
        .filter(|(k, _)| !recorded.contains_key(*k))
        .filter_map(|((namespace, name), account)| {
            let uid = account.uid()?;
            let tokens = legacy
                .get(&key(namespace, name))
                .cloned()
                .unwrap_or_default();
            Some(ReissuedServiceAccount {
                namespace: namespace.clone(),
                name: name.clone(),
                replaced_uid: uid,
                uid: None,
                saved: saved(account, &tokens),
                legacy_token_secrets: tokens.into_iter().collect(),
            })
        })
        .collect();
    if !unrecorded.is_empty() {
        let message = format!(
            "recording {} ServiceAccounts before re-creating them",
            unrecorded.len()
        );
        return Outcome::Act(Act::RecordServiceAccounts(unrecorded), message);
    }

    let mut reissue = Vec::new();
    let mut going = Vec::new();
    for (k, record) in &recorded {
        let found = current.get(k);
        let found_uid = found.and_then(|a| a.uid());
        if found_uid.is_some() && found_uid == record.uid {
            continue;
        }
        let still_old = found_uid.as_deref() == Some(record.replaced_uid.as_str());
        if still_old && found.is_some_and(|a| a.metadata.deletion_timestamp.is_some()) {
            going.push(format!("{}/{}", k.0, k.1));
            continue;
        }
        let mut record = (*record).clone();
        let tokens: BTreeSet<String> = record
            .legacy_token_secrets
            .iter()
            .cloned()
            .chain(legacy.get(k).into_iter().flatten().cloned())
            .collect();
        record.legacy_token_secrets = tokens.into_iter().collect();
        reissue.push(Reissue {
            record,
            delete: still_old,
        });
    }
    if !reissue.is_empty() {
        let message = format!(
            "re-creating {} ServiceAccounts so that their tokens are refused",
            reissue.len()
        );
        return Outcome::Act(Act::Reissue(reissue), message);
    }
    if !going.is_empty() {
        return Outcome::Waiting(format!(
            "waiting for serviceaccount {} to be deleted",
            going.join(", ")
        ));
    }
    Outcome::Done(summary(wanted, &recorded, seen))
}

/// What the step did, in counts and names: never a token.
fn summary(
    wanted: &TokenInvalidation,
    recorded: &BTreeMap<Key, &ReissuedServiceAccount>,
    seen: &Seen,
) -> String {
    let legacy: usize = recorded
        .values()
        .map(|r| r.legacy_token_secrets.len())
        .sum();
    let mut message = format!(
        "{} ServiceAccounts re-created with new uids in {} (every token of their old uids is refused); {legacy} legacy token Secrets deleted",
        recorded.len(),
        wanted.namespaces.join(", ")
    );
    let present: BTreeSet<Key> = seen
        .service_accounts
        .iter()
        .map(|a| key(&a.namespace().unwrap_or_default(), &a.name_any()))
        .collect();
    let kept: Vec<String> = wanted
        .keep
        .iter()
        .filter(|k| present.contains(&key(&k.namespace, &k.name)))
        .map(|k| format!("{}/{}", k.namespace, k.name))
        .collect();
    if !kept.is_empty() {
        message.push_str(&format!("; kept, tokens still valid: {}", kept.join(", ")));
    }
    if let Some(own) = &seen.operator
        && wanted.namespaces.contains(&own.namespace)
    {
        message.push_str(&format!(
            "; the operator's own {}/{} left alone",
            own.namespace, own.name
        ));
    }
    let missing: Vec<&str> = wanted
        .namespaces
        .iter()
        .filter(|n| !seen.namespaces.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        message.push_str(&format!(
            "; namespace {} does not exist, so has no tokens",
            missing.join(", ")
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(keep: &[(&str, &str)]) -> TokenInvalidation {
        TokenInvalidation {
            namespaces: vec!["emergency".into()],
            keep: keep
                .iter()
                .map(|(namespace, name)| NamespacedRef {
                    namespace: (*namespace).into(),
                    name: (*name).into(),
                })
                .collect(),
        }
    }

    fn account(name: &str, uid: &str) -> ServiceAccount {
        let mut account: ServiceAccount = crate::yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: emergency, uid: {uid}, resourceVersion: '7', labels: {{app: {name}}}, annotations: {{team: ops}}, ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: o1}}]}}\nsecrets: [{{name: {name}-token}}, {{name: {name}-certs}}]\nimagePullSecrets: [{{name: registry}}]\nautomountServiceAccountToken: false\n"
        ))
        .unwrap();
        account.metadata.namespace = Some("emergency".into());
        account
    }

    fn seen(accounts: Vec<ServiceAccount>) -> Seen {
        Seen {
            namespaces: [("emergency".to_owned(), false)].into(),
            legacy_tokens: vec![LegacyToken {
                namespace: "emergency".into(),
                name: "backdoor-token".into(),
                service_account: "backdoor".into(),
            }],
            service_accounts: accounts,
            ..Default::default()
        }
    }

    /// Runs the step as the controller would, with `world` standing for the cluster: every
    /// action is applied to it, until the step is done. Returns the records and the message.
    fn run_to_done(
        wanted: &TokenInvalidation,
        mut records: Vec<ReissuedServiceAccount>,
        world: &mut Seen,
    ) -> (Vec<ReissuedServiceAccount>, String) {
        let mut next_uid = 100;
        for _ in 0..10 {
            match invalidate(wanted, &records, world) {
                Outcome::Done(message) => return (records, message),
                Outcome::Act(Act::RecordServiceAccounts(new), _) => {
                    for record in new {
                        remember(&mut records, record);
                    }
                }
                Outcome::Act(Act::Reissue(reissue), _) => {
                    for Reissue { mut record, .. } in reissue {
                        world
                            .legacy_tokens
                            .retain(|t| !record.legacy_token_secrets.contains(&t.name));
                        world
                            .service_accounts
                            .retain(|a| a.name_any() != record.name);
                        let mut created = service_account(&record);
                        next_uid += 1;
                        created.metadata.uid = Some(format!("u{next_uid}"));
                        record.uid = created.metadata.uid.clone();
                        world.service_accounts.push(created);
                        remember(&mut records, record);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the step never finished");
    }

    #[test]
    fn every_account_is_recorded_before_any_is_deleted_and_kept_ones_are_left_alone() {
        let wanted = wanted(&[("emergency", "dispatch")]);
        let world = seen(vec![account("backdoor", "u1"), account("dispatch", "u2")]);
        let Outcome::Act(Act::RecordServiceAccounts(records), message) =
            invalidate(&wanted, &[], &world)
        else {
            panic!("the first action must be a record");
        };
        assert_eq!(
            message,
            "recording 1 ServiceAccounts before re-creating them"
        );
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            (
                record.name.as_str(),
                record.replaced_uid.as_str(),
                record.uid.as_ref()
            ),
            ("backdoor", "u1", None)
        );
        assert_eq!(record.legacy_token_secrets, ["backdoor-token"]);
        assert_eq!(
            record.saved,
            SavedServiceAccount {
                labels: [("app".to_owned(), "backdoor".to_owned())].into(),
                annotations: [("team".to_owned(), "ops".to_owned())].into(),
                // The legacy token leaves; the other Secret it lists stays.
                secrets: vec!["backdoor-certs".into()],
                image_pull_secrets: vec!["registry".into()],
                automount_service_account_token: Some(false),
            }
        );

        let Outcome::Act(Act::Reissue(reissue), _) = invalidate(&wanted, &records, &world) else {
            panic!("once recorded, the account is re-created");
        };
        assert_eq!(reissue.len(), 1);
        assert!(reissue[0].delete);
    }

    #[test]
    fn the_account_is_created_again_with_its_fields_and_nothing_the_server_set() {
        let tokens = ["backdoor-token".to_owned()].into();
        let record = ReissuedServiceAccount {
            namespace: "emergency".into(),
            name: "backdoor".into(),
            replaced_uid: "u1".into(),
            uid: None,
            legacy_token_secrets: vec!["backdoor-token".into()],
            saved: saved(&account("backdoor", "u1"), &tokens),
        };
        let created = service_account(&record);
        let mut expected = account("backdoor", "u1");
        expected.metadata.uid = None;
        expected.metadata.resource_version = None;
        expected.metadata.owner_references = None;
        expected.secrets = Some(vec![ObjectReference {
            name: Some("backdoor-certs".into()),
            ..Default::default()
        }]);
        assert_eq!(created, expected);
    }

    #[test]
    fn a_stop_between_delete_and_create_converges_from_the_record() {
        let wanted = wanted(&[]);
        let mut world = seen(vec![account("backdoor", "u1")]);
        let Outcome::Act(Act::RecordServiceAccounts(records), _) = invalidate(&wanted, &[], &world)
        else {
            panic!("a record first");
        };
        // Deleted, then the operator stopped: the account is gone, the record remains.
        world.service_accounts.clear();
        world.legacy_tokens.clear();
        let Outcome::Act(Act::Reissue(reissue), _) = invalidate(&wanted, &records, &world) else {
            panic!("the missing account is created from its record");
        };
        assert!(!reissue[0].delete, "nothing left to delete");
        assert_eq!(reissue[0].record.saved.image_pull_secrets, ["registry"]);
        // Its legacy Secrets are still listed, so the deletion (idempotent) is not lost.
        assert_eq!(reissue[0].record.legacy_token_secrets, ["backdoor-token"]);
        let (records, message) = run_to_done(&wanted, records, &mut world);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].uid.as_deref(), Some("u101"));
        assert_eq!(
            message,
            "1 ServiceAccounts re-created with new uids in emergency (every token of their old uids is refused); 1 legacy token Secrets deleted"
        );
    }

    #[test]
    fn an_account_created_again_by_someone_else_is_taken_over_not_deleted() {
        let wanted = wanted(&[]);
        let mut world = seen(vec![account("default", "u1")]);
        world.legacy_tokens.clear();
        let Outcome::Act(Act::RecordServiceAccounts(records), _) = invalidate(&wanted, &[], &world)
        else {
            panic!("a record first");
        };
        // The ServiceAccount controller made `default` again before the operator could.
        world.service_accounts = vec![account("default", "k8s")];
        let Outcome::Act(Act::Reissue(reissue), _) = invalidate(&wanted, &records, &world) else {
            panic!("its fields are given back");
        };
        assert!(
            !reissue[0].delete,
            "its uid is new already: its tokens are void"
        );
    }

    #[test]
    fn an_account_is_done_only_while_its_uid_is_the_recorded_one() {
        let wanted = wanted(&[]);
        let mut world = seen(vec![account("backdoor", "u1")]);
        let (records, _) = run_to_done(&wanted, Vec::new(), &mut world);
        // Labels and annotations copied from elsewhere count for nothing: an account with
        // another uid is not the one the operator created.
        let mut impostor = account("backdoor", "u1");
        impostor.metadata.uid = Some("u999".into());
        world.service_accounts = vec![impostor];
        assert!(matches!(
            invalidate(&wanted, &records, &world),
            Outcome::Act(Act::Reissue(_), _)
        ));
        // The operator's own account is never touched.
        let mut world = seen(vec![account("resurgo", "u5")]);
        world.operator = service_account_of("system:serviceaccount:emergency:resurgo");
        let Outcome::Done(message) = invalidate(&wanted, &[], &world) else {
            panic!("nothing to do");
        };
        assert_eq!(
            message,
            "0 ServiceAccounts re-created with new uids in emergency (every token of their old uids is refused); 0 legacy token Secrets deleted; the operator's own emergency/resurgo left alone"
        );
    }

    #[test]
    fn a_namespace_outside_the_chart_value_fails_before_anything_is_touched() {
        let wanted = wanted(&[]);
        let mut world = seen(vec![account("backdoor", "u1")]);
        world
            .refused
            .insert("emergency".into(), "delete serviceaccounts".into());
        assert_eq!(
            invalidate(&wanted, &[], &world),
            Outcome::Failed("spec.invalidateServiceAccountTokens.namespaces: the operator may not delete serviceaccounts in emergency: list emergency in the chart's incident.tokenInvalidationNamespaces and create a new Incident".into())
        );
    }

    #[test]
    fn a_missing_namespace_is_named_and_a_deleted_one_is_waited_for() {
        let mut wanted = wanted(&[("emergency", "dispatch")]);
        wanted.namespaces.push("typo".into());
        let mut world = seen(vec![account("dispatch", "u2")]);
        assert_eq!(
            invalidate(&wanted, &[], &world),
            Outcome::Done("0 ServiceAccounts re-created with new uids in emergency, typo (every token of their old uids is refused); 0 legacy token Secrets deleted; kept, tokens still valid: emergency/dispatch; namespace typo does not exist, so has no tokens".into())
        );
        world.namespaces.insert("typo".into(), true);
        assert!(matches!(
            invalidate(&wanted, &[], &world),
            Outcome::Waiting(m) if m == "waiting for namespace typo to be deleted: its ServiceAccounts go with it"
        ));
    }

    #[test]
    fn operator_accounts_are_read_from_user_names() {
        assert_eq!(
            service_account_of("system:serviceaccount:resurgo-system:resurgo"),
            Some(NamespacedRef {
                namespace: "resurgo-system".into(),
                name: "resurgo".into()
            })
        );
        assert_eq!(service_account_of("admin"), None);
        assert_eq!(service_account_of("system:serviceaccount:broken"), None);
    }
}
