//! Cron schedules: the same grammar the schema admits (`CRON_RULE`) and the
//! controller runs.
//!
//! Five fields (`minute hour day-of-month month day-of-week`), or six with
//! seconds first (`*/5 * * * * *`, for tests and demos), or one of
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`;
//! evaluated in a time zone from the tz database (UTC by default).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The parsed cron pattern.
    cron: Cron,
    /// The zone its fields are read in.
    tz: Tz,
}

/// A schedule or time zone that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron pattern does not parse.
    #[error("invalid cron schedule {schedule:?}: {reason}")]
    Cron {
        /// The pattern as written.
        schedule: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The time zone is not in the tz database.
    #[error(
        "unknown time zone {0:?}: use a tz database name such as \"Europe/Berlin\" or \"UTC\""
    )]
    TimeZone(String),
}

impl Schedule {
    /// Parses `schedule` in `time_zone` (UTC when `None`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_owned()))?,
        };
        // The schema's rule first: croner also takes forms it refuses (a
        // lone `+`, an empty list item) that match no minute or second, and
        // looking for their ticks took seconds (found by the fuzz target
        // `cron`); a schedule from elsewhere (an annotation) must not get
        // through either.
        static SCHEMA: std::sync::OnceLock<regex_lite::Regex> = std::sync::OnceLock::new();
        let schema = SCHEMA
            .get_or_init(|| regex_lite::Regex::new(&cron_regex()).expect("cron_regex compiles"));
        if !schema.is_match(schedule.trim()) {
            return Err(ScheduleError::Cron {
                schedule: schedule.to_owned(),
                reason: "it is not 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly".into(),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(schedule.trim())
            .map_err(|e| ScheduleError::Cron {
                schedule: schedule.to_owned(),
                reason: e.to_string(),
            })?;
        // A pattern no date satisfies (the 30th of February) would never
        // tick, silently, and croner looks for its next tick up to the year
        // 5000: about a second per evaluation, on every reconcile (found by
        // the fuzz target `cron`). The calendar of a year is fixed by its
        // weekday of 1 January and whether it is a leap year, and the 28
        // years 4972-4999 (no century year among them) hold all 14 kinds,
        // so a pattern that ever fires fires in them: looking there costs
        // a hundredth of the full search.
        let window = tz
            .with_ymd_and_hms(4972, 1, 1, 0, 0, 0)
            .earliest()
            .expect("midnight of 1 January 4972 exists in every zone");
        if cron.find_next_occurrence(&window, true).is_err() {
            return Err(ScheduleError::Cron {
                schedule: schedule.to_owned(),
                reason: "it never fires: no date matches its day-of-month, month and day-of-week fields together".into(),
            });
        }
        Ok(Self { cron, tz })
    }

    /// The first time strictly after `after` that the schedule fires, if any.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last time at or before `at` that the schedule fired, if any.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Regular expression (RE2 syntax, no backslashes so it can sit in a CEL
/// string) for the cron patterns [`Schedule::parse`] accepts. The schema
/// checks it, so the API server refuses a malformed schedule; a pattern it
/// lets through that croner still refuses (e.g. a step of 0) or that never
/// fires (the 30th of February) becomes an `InvalidSchedule` condition.
pub fn cron_regex() -> String {
    fn item(n: &str) -> String {
        format!("(?:[*]|{n}(?:-{n})?)(?:/[1-9][0-9]*)?")
    }
    fn list(alternatives: &str) -> String {
        format!("(?:[?]|(?:{alternatives})(?:,(?:{alternatives}))*)")
    }
    let sec = "[0-5]?[0-9]";
    let hour = "(?:2[0-3]|[01]?[0-9])";
    let dom = "(?:3[01]|[12][0-9]|0?[1-9])";
    let mon = "(?:1[0-2]|0?[1-9]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)";
    let dow = "(?:[0-7]|SUN|MON|TUE|WED|THU|FRI|SAT)";
    let seconds = list(&item(sec));
    let minutes = list(&item(sec));
    let hours = list(&item(hour));
    let days = list(&format!("{}|L|LW|{dom}W", item(dom)));
    let months = list(&item(mon));
    let weekdays = list(&format!("{}|{dow}#[1-5]|{dow}L", item(dow)));
    format!(
        "^(?i)(?:@(?:yearly|annually|monthly|weekly|daily|hourly)|(?:{seconds} +)?{minutes} +{hours} +{days} +{months} +{weekdays})$"
    )
}

/// The CEL rule the schema puts on `spec.schedule`.
pub fn cron_rule() -> String {
    format!("self.trim().matches('{}')", cron_regex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::parse("30 2 * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 3, 0, 0)),
            Some(utc(2024, 1, 2, 2, 30, 0))
        );
        let s = Schedule::parse("*/5 * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 0, 0, 0)),
            Some(utc(2024, 1, 1, 0, 0, 5))
        );
        assert_eq!(
            s.last_at_or_before(utc(2024, 1, 1, 0, 0, 7)),
            Some(utc(2024, 1, 1, 0, 0, 5))
        );
    }

    #[test]
    fn time_zone_moves_the_tick() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 12, 0, 0)),
            Some(utc(2024, 1, 2, 1, 0, 0))
        );
        let err = Schedule::parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err
            .to_string()
            .contains("unknown time zone \"Mars/Olympus\""));
    }

    /// A schedule no date satisfies is refused, and quickly: it used to
    /// parse, never tick, and cost about a second per evaluation.
    #[test]
    fn schedules_that_never_fire_are_refused() {
        for never in [
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 31 2 *",
            "*/5 * 30 FEB *",
        ] {
            let start = std::time::Instant::now();
            let err = Schedule::parse(never, Some("Europe/Berlin")).unwrap_err();
            assert!(err.to_string().contains("never fires"), "{never}: {err}");
            assert!(start.elapsed() < std::time::Duration::from_millis(500));
        }
        // Forms croner takes but the schema refuses: refused as quickly.
        for odd in [", * * * *", "*/5 * * * * +", ", 0 3 * *", "0 3 * * l"] {
            let start = std::time::Instant::now();
            assert!(Schedule::parse(odd, None).is_err(), "{odd:?}");
            assert!(start.elapsed() < std::time::Duration::from_millis(500));
        }
        // Rare is not never: leap days, the 31st, a weekday of a date.
        for rare in [
            "0 0 29 2 *",
            "0 0 31 * *",
            "0 0 29 2 1",
            "0 0 L 2 *",
            "0 0 ? 2 1#5",
        ] {
            let s = Schedule::parse(rare, None).unwrap_or_else(|e| panic!("{rare}: {e}"));
            assert!(s.next_after(utc(2026, 3, 1, 0, 0, 0)).is_some(), "{rare}");
        }
    }

    #[test]
    fn regex_and_parser_agree() {
        // RE2 and Rust's regex agree on this subset; the apiserver test
        // checks the real CEL engine.
        let re = regex_lite::Regex::new(&cron_regex()).unwrap();
        for good in [
            "* * * * *",
            "*/5 * * * * *",
            "0 2 * * *",
            "0,30 8-18/2 1-15 JAN-jun MON-FRI",
            "0 0 L * *",
            "0 0 ? * 5#2",
            "0 0 15W * 5L",
            "@daily",
            "@hourly",
            "@annually",
            " 0 2 * * * ",
        ] {
            assert!(re.is_match(good.trim()), "regex refuses {good:?}");
            Schedule::parse(good, None).unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in [
            "",
            "every day",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "* * * * * * *",
            "@often",
        ] {
            assert!(!re.is_match(bad), "regex admits {bad:?}");
            assert!(Schedule::parse(bad, None).is_err(), "croner admits {bad:?}");
        }
    }
}
