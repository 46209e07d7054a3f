//! Which backups retention deletes. Pure.
//!
//! A completed backup is kept when any rule keeps it:
//! - `keepLast`: the newest N;
//! - `keepDaily`/`keepWeekly`/`keepMonthly`: the newest backup of each of the newest N
//!   calendar days / ISO weeks / months that have a backup, in UTC;
//! - always: the newest verified backup, and every backup still under object lock.
//!
//! Nothing is deleted while pruning is frozen (an open Incident, or the annotation
//! `resurgo.dev/pruning-frozen: "true"` on the schedule). Backups that are not completed
//! (running, failed) are not retention's business.

use std::collections::BTreeSet;

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};

use crate::api::backup_schedule::Retention;

/// What retention needs to know of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// When it completed; `None` for a backup that has not completed.
    pub completed: Option<Timestamp>,
    pub verified: bool,
    /// Until when object lock protects it.
    pub immutable_until: Option<Timestamp>,
}

/// The names of the backups to delete, oldest first.
pub fn to_delete(
    candidates: &[Candidate],
    retention: &Retention,
    frozen: bool,
    now: Timestamp,
) -> Vec<String> {
    if frozen {
        return Vec::new();
    }
    let mut completed: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.completed.is_some())
        .collect();
    // Newest first; the name breaks ties so the result does not depend on input order.
    completed.sort_by(|a, b| b.completed.cmp(&a.completed).then(b.name.cmp(&a.name)));

    let mut keep: BTreeSet<&str> = BTreeSet::new();
    keep.extend(
        completed
            .iter()
            .take(retention.keep_last as usize)
            .map(|c| c.name.as_str()),
    );
    type PeriodOf = fn(Timestamp) -> String;
    let periods: [(u32, PeriodOf); 3] = [
        (retention.keep_daily, |t| {
            let d = t.to_zoned(TimeZone::UTC).date();
            format!("{}", d)
        }),
        (retention.keep_weekly, |t| {
            let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
            format!("{}-W{}", w.year(), w.week())
        }),
        (retention.keep_monthly, |t| {
            let d = t.to_zoned(TimeZone::UTC).date();
            format!("{}-{}", d.year(), d.month())
        }),
    ];
    for (count, period_of) in periods {
        let mut seen = BTreeSet::new();
        for candidate in &completed {
            if seen.len() >= count as usize {
                break;
            }
            let period = period_of(candidate.completed.expect("filtered"));
            if seen.insert(period) {
                keep.insert(candidate.name.as_str());
            }
        }
    }
    if let Some(newest_verified) = completed.iter().find(|c| c.verified) {
        keep.insert(newest_verified.name.as_str());
    }
    completed
        .iter()
        .rev()
        .filter(|c| !keep.contains(c.name.as_str()))
        .filter(|c| c.immutable_until.is_none_or(|until| until <= now))
        .map(|c| c.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at_hours(hours: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + hours * 3600).unwrap()
    }

    fn backup(name: &str, hours: i64, verified: bool) -> Candidate {
        Candidate {
            name: name.into(),
            completed: Some(at_hours(hours)),
            verified,
            immutable_until: None,
        }
    }

    fn retention(last: u32, daily: u32, weekly: u32, monthly: u32) -> Retention {
        Retention {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    #[test]
    fn keep_last_deletes_the_oldest_but_never_the_newest_verified() {
        let backups = [
            backup("a", 0, true),
            backup("b", 1, false),
            backup("c", 2, false),
            backup("d", 3, false),
        ];
        assert_eq!(
            to_delete(&backups, &retention(2, 0, 0, 0), false, at_hours(10)),
            vec!["b"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // Three backups a day for three days.
        let backups: Vec<_> = (0..9)
            .map(|i| backup(&format!("b{i}"), i64::from(i) * 8, false))
            .collect();
        let deleted = to_delete(&backups, &retention(0, 2, 0, 0), false, at_hours(100));
        let kept: Vec<_> = backups
            .iter()
            .map(|b| b.name.clone())
            .filter(|n| !deleted.contains(n))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.contains(&"b8".to_owned()));
    }

    #[test]
    fn nothing_is_deleted_while_frozen_or_locked() {
        let backups = [backup("a", 0, false), backup("b", 1, false)];
        assert!(to_delete(&backups, &retention(1, 0, 0, 0), true, at_hours(5)).is_empty());
        let mut locked = backups.clone();
        locked[0].immutable_until = Some(at_hours(6));
        assert!(to_delete(&locked, &retention(1, 0, 0, 0), false, at_hours(5)).is_empty());
        assert_eq!(
            to_delete(&locked, &retention(1, 0, 0, 0), false, at_hours(7)),
            vec!["a"]
        );
    }

    #[test]
    fn unfinished_backups_are_left_alone() {
        let mut running = backup("r", 0, false);
        running.completed = None;
        let backups = [running, backup("a", 1, false)];
        assert!(to_delete(&backups, &retention(1, 0, 0, 0), false, at_hours(5)).is_empty());
    }

    proptest! {
        #[test]
        fn retention_keeps_what_it_promises(
            hours in proptest::collection::vec((0i64..2000, any::<bool>()), 0..40),
            last in 0u32..5, daily in 0u32..5, weekly in 0u32..3, monthly in 0u32..3,
            frozen in any::<bool>(),
        ) {
            prop_assume!(last + daily + weekly + monthly > 0);
            let backups: Vec<_> = hours
                .iter()
                .enumerate()
                .map(|(i, (h, verified))| backup(&format!("b{i}"), *h, *verified))
                .collect();
            let deleted = to_delete(&backups, &retention(last, daily, weekly, monthly), frozen, at_hours(3000));
            if frozen {
                prop_assert!(deleted.is_empty());
            }
            let newest = |filter: &dyn Fn(&Candidate) -> bool| {
                backups.iter().filter(|c| filter(c)).max_by(|a, b| a.completed.cmp(&b.completed).then(a.name.cmp(&b.name))).map(|c| c.name.clone())
            };
            if let Some(name) = newest(&|c: &Candidate| c.verified) {
                prop_assert!(!deleted.contains(&name), "deleted the newest verified backup {}", name);
            }
            if let Some(name) = newest(&|_: &Candidate| true) {
                prop_assert!(!deleted.contains(&name), "deleted the newest backup {}", name);
            }
            // Something is always left when there was something.
            prop_assert!(backups.is_empty() || deleted.len() < backups.len());
            for name in &deleted {
                prop_assert!(backups.iter().any(|b| &b.name == name));
            }
        }
    }
}
