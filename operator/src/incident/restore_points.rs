//! Choosing the backup a service is restored from: the newest one that completed before the
//! compromise, was verified by a restore test (or, if the incident allows it, is at least
//! intact), and whose stored content still matches its manifest. Newer backups that fail a
//! test are named with the reason, so the data-loss window is explained, not just stated.

use std::{collections::BTreeMap, time::Duration as StdDuration};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{
    backup::{Backup, BackupPhase, VerificationState},
    common::Duration,
    incident::ChosenRestorePoint,
};

/// The backups that could hold `namespace` as it was before `before`: completed, finished
/// before it, and covering the namespace; newest first.
pub fn candidates<'a>(
    backups: &'a [Backup],
    namespace: &str,
    before: Timestamp,
) -> Vec<&'a Backup> {
    let mut found: Vec<(&Backup, Timestamp)> = backups
        .iter()
        .filter(|b| {
            let namespaces = &b.spec.include.namespaces;
            namespaces.is_empty() || namespaces.iter().any(|n| n == namespace)
        })
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let completed = status.completed.as_ref()?.0;
            (status.phase == Some(BackupPhase::Completed) && completed < before)
                .then_some((b, completed))
        })
        .collect();
    // Newest first; the name breaks ties so the choice never depends on list order.
    found.sort_by(|(a, at), (b, bt)| bt.cmp(at).then_with(|| a.name_any().cmp(&b.name_any())));
    found.into_iter().map(|(b, _)| b).collect()
}

/// Whether a candidate may be used without reading it: a failed or missing restore test
/// rules it out before its content is even checked.
pub fn usable_status(backup: &Backup, allow_unverified: bool) -> Result<(), String> {
    let state = backup
        .status
        .as_ref()
        .and_then(|s| s.verification.as_ref())
        .map(|v| v.state);
    match state {
        Some(VerificationState::Verified) => Ok(()),
        Some(VerificationState::Failed) => Err("its verification restore failed".into()),
        _ if allow_unverified => Ok(()),
        _ => Err("it was never verified by a restore test (set restorePoint.allowUnverified to accept intact unverified backups)".into()),
    }
}

/// The restore point of one service, from its candidates (newest first) and the result of
/// checking the content of those that were checked (`Err` says what is wrong with it).
pub fn choose(
    plan: &str,
    service: &str,
    candidates: &[&Backup],
    content: &BTreeMap<String, Result<(), String>>,
    allow_unverified: bool,
    compromised_since: Timestamp,
) -> ChosenRestorePoint {
    let mut refused = Vec::new();
    for backup in candidates {
        let name = backup.name_any();
        let verdict = usable_status(backup, allow_unverified).and_then(|()| {
            content
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Err("its content was not checked".into()))
        });
        match verdict {
            Ok(()) => {
                let completed = backup
                    .status
                    .as_ref()
                    .and_then(|s| s.completed.clone())
                    .expect("candidates have completed");
                let window = StdDuration::try_from(compromised_since.duration_since(completed.0))
                    .unwrap_or_default();
                let mut message =
                    format!("newest clean backup completed before the compromise: {name}");
                if !refused.is_empty() {
                    message.push_str(&format!("; newer ones refused: {}", refused.join("; ")));
                }
                return ChosenRestorePoint {
                    plan: plan.to_owned(),
                    service: service.to_owned(),
                    backup: Some(name),
                    backup_completed: Some(completed),
                    data_loss_window: Some(Duration::from(window).to_string()),
                    message: Some(message),
                };
            }
            Err(reason) => refused.push(format!("{name}: {reason}")),
        }
    }
    let message = if refused.is_empty() {
        "no completed backup of its namespace finished before compromisedSince".to_owned()
    } else {
        format!(
            "no clean backup before the compromise: {}",
            refused.join("; ")
        )
    };
    ChosenRestorePoint {
        plan: plan.to_owned(),
        service: service.to_owned(),
        backup: None,
        backup_completed: None,
        data_loss_window: None,
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::{BackupStatus, VerificationResult};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_second(1_627_689_600 + hours * 3600).unwrap()
    }

    fn backup(name: &str, completed_hour: i64, state: VerificationState) -> Backup {
        let mut backup: Backup = crate::yaml::from_str(&format!(
            r#"
apiVersion: resurgo.dev/v1alpha1
kind: Backup
metadata: {{name: {name}}}
spec:
  store: local
  include: {{namespaces: [records]}}
  encryption: {{recipients: [age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq]}}
"#
        ))
        .expect("a backup");
        backup.status = Some(BackupStatus {
            phase: Some(BackupPhase::Completed),
            completed: Some(Time(at(completed_hour))),
            verification: Some(VerificationResult {
                state,
                time: None,
                message: None,
            }),
            ..Default::default()
        });
        backup
    }

    #[test]
    fn the_newest_clean_backup_before_the_compromise_wins_and_refusals_are_named() {
        let backups = vec![
            backup("after", 30, VerificationState::Verified),
            backup("tampered", 20, VerificationState::Verified),
            backup("unverified", 19, VerificationState::Unverified),
            backup("good", 10, VerificationState::Verified),
            backup("older", 1, VerificationState::Verified),
        ];
        let found = candidates(&backups, "records", at(24));
        let names: Vec<String> = found.iter().map(|b| b.name_any()).collect();
        assert_eq!(names, ["tampered", "unverified", "good", "older"]);
        let content = BTreeMap::from([
            (
                "tampered".to_owned(),
                Err("its content does not match its manifest".to_owned()),
            ),
            ("good".to_owned(), Ok(())),
        ]);
        let point = choose("lazio", "records", &found, &content, false, at(24));
        assert_eq!(point.backup.as_deref(), Some("good"));
        assert_eq!(point.data_loss_window.as_deref(), Some("14h"));
        let message = point.message.unwrap();
        assert!(
            message.contains("tampered: its content does not match its manifest"),
            "{message}"
        );
        assert!(
            message.contains("unverified: it was never verified"),
            "{message}"
        );
    }

    #[test]
    fn without_a_clean_backup_nothing_is_chosen_and_the_reason_is_given() {
        let backups = vec![backup("tampered", 20, VerificationState::Failed)];
        let found = candidates(&backups, "records", at(24));
        let point = choose("lazio", "records", &found, &BTreeMap::new(), true, at(24));
        assert_eq!(point.backup, None);
        assert_eq!(
            point.message.as_deref(),
            Some(
                "no clean backup before the compromise: tampered: its verification restore failed"
            )
        );
        assert!(candidates(&backups, "other-namespace", at(24)).is_empty());
    }
}
