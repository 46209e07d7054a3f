//! The clean restore point: for one namespace and a compromise time, the newest backup that
//! completed before the compromise, is intact and (unless allowed otherwise) verified. Pure:
//! [`candidates`] orders what may be tried, the caller checks each one's integrity in that
//! order (reading and decrypting is I/O), and [`choose`] reports the outcome.

use k8s_openapi::jiff::Timestamp;

/// What the choice needs to know of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub namespaces: Vec<String>,
    pub completed: Option<Timestamp>,
    pub verified: bool,
    /// A failed restore test.
    pub verification_failed: bool,
}

/// What to choose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub namespace: String,
    /// Backups completed at or after this are suspect. `None`: any time.
    pub compromised_since: Option<Timestamp>,
    pub allow_unverified: bool,
}

/// A backup that was not chosen, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub backup: String,
    pub reason: String,
}

/// The backups to try, newest first, and the ones refused without looking at their content.
pub fn candidates(all: &[Candidate], rule: &Rule) -> (Vec<Candidate>, Vec<Refused>) {
    let mut ordered: Vec<&Candidate> = all
        .iter()
        .filter(|c| c.namespaces.contains(&rule.namespace))
        .collect();
    ordered.sort_by(|a, b| b.completed.cmp(&a.completed).then(b.name.cmp(&a.name)));
    let mut tries = Vec::new();
    let mut refused = Vec::new();
    for candidate in ordered {
        let reason = match candidate.completed {
            None => Some("it has not completed".to_owned()),
            Some(completed)
                if rule
                    .compromised_since
                    .is_some_and(|since| completed >= since) =>
            {
                Some(format!(
                    "it completed at {completed}, after the compromise began"
                ))
            }
            Some(_) if candidate.verification_failed => Some("its restore test failed".to_owned()),
            Some(_) if !candidate.verified && !rule.allow_unverified => {
                Some("it is not verified (allowUnverified is false)".to_owned())
            }
            Some(_) => None,
        };
        match reason {
            Some(reason) => refused.push(Refused {
                backup: candidate.name.clone(),
                reason,
            }),
            None => tries.push(candidate.clone()),
        }
    }
    (tries, refused)
}

/// The outcome of a choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub backup: Option<String>,
    pub completed: Option<Timestamp>,
    /// From the chosen backup's completion to the compromise (or to now).
    pub data_loss_window: Option<String>,
    /// Every newer backup passed over, with the reason.
    pub refused: Vec<Refused>,
}

impl Choice {
    /// One line for a status message or an Event.
    pub fn describe(&self, namespace: &str) -> String {
        let refused = self
            .refused
            .iter()
            .map(|r| format!("{}: {}", r.backup, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        match &self.backup {
            Some(backup) => {
                let mut text = format!(
                    "restore point for {namespace}: backup {backup}, data-loss window {}",
                    self.data_loss_window.as_deref().unwrap_or("unknown")
                );
                if !refused.is_empty() {
                    text.push_str(&format!(" (refused: {refused})"));
                }
                text
            }
            None if refused.is_empty() => format!("no backup of namespace {namespace}"),
            None => format!("no clean backup of namespace {namespace}: {refused}"),
        }
    }
}

/// Puts together the choice from the integrity checks the caller made, in the order
/// [`candidates`] gave: the first intact one wins; the newer ones are reported as refused.
pub fn choose(
    refused_up_front: Vec<Refused>,
    checked: Vec<(Candidate, Result<(), String>)>,
    rule: &Rule,
    now: Timestamp,
) -> Choice {
    let mut refused = refused_up_front;
    for (candidate, check) in checked {
        match check {
            Ok(()) => {
                let completed = candidate
                    .completed
                    .expect("only completed backups are tried");
                let until = rule.compromised_since.unwrap_or(now);
                let span = until.duration_since(completed);
                return Choice {
                    backup: Some(candidate.name),
                    completed: Some(completed),
                    data_loss_window: Some(humanise(span.as_secs().max(0))),
                    refused,
                };
            }
            Err(reason) => refused.push(Refused {
                backup: candidate.name,
                reason,
            }),
        }
    }
    Choice {
        backup: None,
        completed: None,
        data_loss_window: None,
        refused,
    }
}

fn humanise(seconds: i64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + hours * 3600).unwrap()
    }

    fn backup(name: &str, hours: i64, verified: bool) -> Candidate {
        Candidate {
            name: name.into(),
            namespaces: vec!["clinical".into()],
            completed: Some(at(hours)),
            verified,
            verification_failed: false,
        }
    }

    fn rule(since: i64, allow_unverified: bool) -> Rule {
        Rule {
            namespace: "clinical".into(),
            compromised_since: Some(at(since)),
            allow_unverified,
        }
    }

    #[test]
    fn the_newest_verified_backup_before_the_compromise_is_tried_first() {
        let all = [
            backup("old", 1, true),
            backup("newer", 5, true),
            backup("unverified", 6, false),
            backup("after", 11, true),
        ];
        let (tries, refused) = candidates(&all, &rule(10, false));
        let names: Vec<_> = tries.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["newer", "old"]);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].reason.contains("after the compromise"));
        assert!(refused[1].reason.contains("not verified"));
    }

    #[test]
    fn an_intact_older_backup_is_chosen_when_the_newest_is_tampered() {
        let all = [backup("old", 1, true), backup("newer", 5, true)];
        let rule = rule(10, false);
        let (tries, refused) = candidates(&all, &rule);
        let checked = tries
            .into_iter()
            .map(|c| {
                let check = if c.name == "newer" {
                    Err("its manifest does not match".to_owned())
                } else {
                    Ok(())
                };
                (c, check)
            })
            .collect();
        let choice = choose(refused, checked, &rule, at(20));
        assert_eq!(choice.backup.as_deref(), Some("old"));
        assert_eq!(choice.data_loss_window.as_deref(), Some("9h"));
        assert_eq!(choice.refused.len(), 1);
        assert!(choice.describe("clinical").contains("newer: its manifest"));
    }

    #[test]
    fn other_namespaces_backups_are_not_candidates_and_nothing_clean_is_said() {
        let mut other = backup("other", 1, true);
        other.namespaces = vec!["booking".into()];
        let rule = rule(10, true);
        let (tries, refused) = candidates(&[other], &rule);
        assert!(tries.is_empty() && refused.is_empty());
        let choice = choose(refused, vec![], &rule, at(20));
        assert_eq!(choice.backup, None);
        assert_eq!(
            choice.describe("clinical"),
            "no backup of namespace clinical"
        );
    }

    #[test]
    fn a_failed_restore_test_is_refused_even_when_unverified_is_allowed() {
        let mut failed = backup("failed", 1, false);
        failed.verification_failed = true;
        let (tries, refused) = candidates(&[failed], &rule(10, true));
        assert!(tries.is_empty());
        assert_eq!(refused[0].reason, "its restore test failed");
    }
}
