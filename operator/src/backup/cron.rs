//! When a schedule runs next: its cron expression read in its IANA time zone. Pure.

use std::str::FromStr;

use chrono::{TimeZone as _, Utc};
use k8s_openapi::jiff::Timestamp;

/// The first run strictly after `after`, or why the schedule cannot be read; `field` is
/// where the expression comes from (`spec.schedule`), for the message.
pub fn next_run(
    field: &str,
    expression: &str,
    time_zone: &str,
    after: Timestamp,
) -> Result<Timestamp, String> {
    let zone = chrono_tz::Tz::from_str(time_zone)
        .map_err(|_| {
            format!("spec.timeZone: unknown time zone {time_zone:?}; use an IANA name such as Europe/Rome or UTC")
        })?;
    let cron = croner::Cron::from_str(expression)
        .map_err(|error| format!("{field}: cron expression {expression:?}: {error}"))?;
    let start = Utc
        .timestamp_opt(after.as_second(), after.subsec_nanosecond().max(0) as u32)
        .single()
        .ok_or_else(|| "time out of range".to_owned())?
        .with_timezone(&zone);
    let next = cron
        .find_next_occurrence(&start, false)
        .map_err(|error| {
            format!(
                "{field}: cron expression {expression:?} never fires (no such date, such as 30 February?): {error}"
            )
        })?;
    Timestamp::from_second(next.timestamp()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_daily_schedule_runs_at_local_time() {
        // 02:30 in Rome is 01:30 UTC in winter and 00:30 UTC in summer.
        assert_eq!(
            next_run(
                "spec.schedule",
                "30 2 * * *",
                "Europe/Rome",
                ts("2026-01-10T12:00:00Z")
            ),
            Ok(ts("2026-01-11T01:30:00Z"))
        );
        assert_eq!(
            next_run(
                "spec.schedule",
                "30 2 * * *",
                "Europe/Rome",
                ts("2026-07-10T12:00:00Z")
            ),
            Ok(ts("2026-07-11T00:30:00Z"))
        );
        assert_eq!(
            next_run(
                "spec.schedule",
                "@hourly",
                "UTC",
                ts("2026-07-10T12:00:00Z")
            ),
            Ok(ts("2026-07-10T13:00:00Z"))
        );
    }

    #[test]
    fn the_next_run_is_strictly_after() {
        assert_eq!(
            next_run(
                "spec.schedule",
                "0 * * * *",
                "UTC",
                ts("2026-07-10T12:00:00Z")
            ),
            Ok(ts("2026-07-10T13:00:00Z"))
        );
    }

    #[test]
    fn a_cron_that_never_fires_names_its_field() {
        let error = next_run(
            "spec.verification.schedule",
            "0 0 30 2 *",
            "UTC",
            ts("2026-07-10T12:00:00Z"),
        )
        .unwrap_err();
        assert!(
            error.starts_with(
                "spec.verification.schedule: cron expression \"0 0 30 2 *\" never fires"
            ),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(
            next_run(
                "spec.schedule",
                "75 * * * *",
                "UTC",
                ts("2026-07-10T12:00:00Z")
            )
            .unwrap_err()
            .contains("75 * * * *")
        );
        assert!(
            next_run(
                "spec.schedule",
                "0 * * * *",
                "Mars/Olympus",
                ts("2026-07-10T12:00:00Z")
            )
            .unwrap_err()
            .contains("Mars/Olympus")
        );
    }
}
