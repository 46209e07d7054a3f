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
//! (running, failed) are not retention's business. [`expires`] tells each backup the
//! earliest time these rules let it go.

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

/// When retention may first delete each completed backup, by name: the latest of the end
/// of the windows of the keepDaily/keepWeekly/keepMonthly rules that keep it (it is the
/// newest backup of its UTC day, ISO week or month, and such a rule keeps N of them: it
/// keeps it until N newer periods have begun) and the end of its object lock. A backup no
/// time rule keeps expires when it completed (it may be deleted as soon as it is not the
/// newest). `None` when the retention has no time rule and the backup no object lock: how
/// long keepLast keeps a backup depends on how many follow it, not on a time.
///
/// keepLast and the "newest verified" rule can keep a backup past this time; never the
/// other way round. Periods without a backup lengthen the windows, so the time is the
/// earliest, not a promise of deletion.
pub fn expires(
    candidates: &[Candidate],
    retention: &Retention,
) -> std::collections::BTreeMap<String, Option<Timestamp>> {
    use k8s_openapi::jiff::{Span, civil::Date};
    let completed: Vec<(&Candidate, Timestamp)> = candidates
        .iter()
        .filter_map(|c| Some((c, c.completed?)))
        .collect();
    let day = |t: Timestamp| t.to_zoned(TimeZone::UTC).date();
    // Per rule: how many periods it keeps, the first day of a day's period, and the first
    // day N periods after.
    type StartOf = fn(Date) -> Date;
    type Window = fn(Date, i64) -> Option<Date>;
    let rules: [(u32, StartOf, Window); 3] = [
        (
            retention.keep_daily,
            |d| d,
            |d, n| d.checked_add(Span::new().days(n)).ok(),
        ),
        (
            retention.keep_weekly,
            |d| {
                let back = i64::from(d.weekday().to_monday_zero_offset());
                d.checked_sub(Span::new().days(back)).unwrap_or(d)
            },
            |d, n| d.checked_add(Span::new().weeks(n)).ok(),
        ),
        (
            retention.keep_monthly,
            |d| d.first_of_month(),
            |d, n| d.checked_add(Span::new().months(n)).ok(),
        ),
    ];
    let timed = rules.iter().any(|(count, _, _)| *count > 0);
    // Per rule, the newest backup of each period (the name breaks ties as in `to_delete`).
    let newest: Vec<std::collections::BTreeMap<Date, (Timestamp, &str)>> = rules
        .iter()
        .map(|(_, start_of, _)| {
            let mut newest = std::collections::BTreeMap::new();
            for (candidate, at) in &completed {
                let entry = newest
                    .entry(start_of(day(*at)))
                    .or_insert((*at, candidate.name.as_str()));
                *entry = (*entry).max((*at, candidate.name.as_str()));
            }
            newest
        })
        .collect();
    completed
        .iter()
        .map(|(candidate, at)| {
            let mut until = candidate.immutable_until;
            if timed {
                until = until.max(Some(*at));
            }
            for ((count, start_of, add), newest) in rules.iter().zip(&newest) {
                let period = start_of(day(*at));
                if *count == 0 || newest[&period].1 != candidate.name {
                    continue;
                }
                let end = add(period, i64::from(*count))
                    .and_then(|d| d.to_zoned(TimeZone::UTC).ok())
                    .map(|z| z.timestamp());
                until = until.max(end);
            }
            (candidate.name.clone(), until)
        })
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

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn completed_at(name: &str, text: &str) -> Candidate {
        Candidate {
            name: name.into(),
            completed: Some(at(text)),
            verified: false,
            immutable_until: None,
        }
    }

    #[test]
    fn a_backup_expires_when_its_daily_weekly_or_monthly_window_ends_whichever_is_later() {
        // Wednesday 2026-06-10.
        let backups = [completed_at("wed", "2026-06-10T02:30:00Z")];
        let expiry = |r: Retention| expires(&backups, &r)["wed"];
        assert_eq!(
            expiry(retention(0, 7, 0, 0)),
            Some(at("2026-06-17T00:00:00Z"))
        );
        // Weeks start on Monday (ISO), 2026-06-08.
        assert_eq!(
            expiry(retention(0, 0, 4, 0)),
            Some(at("2026-07-06T00:00:00Z"))
        );
        assert_eq!(
            expiry(retention(0, 0, 0, 12)),
            Some(at("2027-06-01T00:00:00Z"))
        );
        assert_eq!(
            expiry(retention(3, 7, 4, 1)),
            Some(at("2026-07-06T00:00:00Z"))
        );
    }

    #[test]
    fn only_the_newest_backup_of_a_period_is_kept_by_that_period() {
        let backups = [
            completed_at("morning", "2026-06-10T02:30:00Z"),
            completed_at("evening", "2026-06-10T20:30:00Z"),
        ];
        let expiry = expires(&backups, &retention(0, 7, 0, 0));
        assert_eq!(expiry["evening"], Some(at("2026-06-17T00:00:00Z")));
        // The daily rule keeps the evening backup of that day: the morning one may go once
        // it is not kept otherwise.
        assert_eq!(expiry["morning"], Some(at("2026-06-10T02:30:00Z")));
    }

    #[test]
    fn keep_last_alone_gives_no_time_and_object_lock_is_a_floor() {
        let mut locked = completed_at("locked", "2026-06-10T02:30:00Z");
        locked.immutable_until = Some(at("2026-09-01T00:00:00Z"));
        let backups = [completed_at("plain", "2026-06-09T02:30:00Z"), locked];
        let keep_last = expires(&backups, &retention(5, 0, 0, 0));
        assert_eq!(keep_last["plain"], None);
        assert_eq!(keep_last["locked"], Some(at("2026-09-01T00:00:00Z")));
        let daily = expires(&backups, &retention(0, 7, 0, 0));
        assert_eq!(daily["locked"], Some(at("2026-09-01T00:00:00Z")));
        assert_eq!(daily["plain"], Some(at("2026-06-16T00:00:00Z")));
        let mut running = completed_at("running", "2026-06-10T02:30:00Z");
        running.completed = None;
        assert!(!expires(&[running], &retention(0, 7, 0, 0)).contains_key("running"));
    }

    proptest! {
        #[test]
        fn retention_never_deletes_a_backup_before_it_expires(
            hours in proptest::collection::vec(0i64..3000, 1..30),
            daily in 0u32..5, weekly in 0u32..3, monthly in 0u32..3,
            later in 0i64..3000,
        ) {
            prop_assume!(daily + weekly + monthly > 0);
            let backups: Vec<_> = hours
                .iter()
                .enumerate()
                .map(|(i, h)| backup(&format!("b{i}"), *h, false))
                .collect();
            let rules = retention(0, daily, weekly, monthly);
            // Backups keep coming every hour after the last one, up to `now`.
            let last = hours.iter().max().copied().unwrap_or(0);
            let mut all = backups.clone();
            all.extend((1..=later).map(|i| backup(&format!("n{i}"), last + i, false)));
            let now = at_hours(last + later);
            let expiry = expires(&all, &rules);
            for name in to_delete(&all, &rules, false, now) {
                if let Some(Some(until)) = expiry.get(&name) {
                    prop_assert!(*until <= now, "{} deleted at {} before it expires at {}", name, now, until);
                }
            }
        }
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
