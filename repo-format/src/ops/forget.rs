//! Retention policies: which snapshots `forget` keeps, decided exactly as
//! restic decides (`internal/restic/snapshot_policy.go` and
//! `snapshot_group.go`), as of restic 0.19. Restic before 0.16 differs in
//! one rule only: it did not keep a group's oldest snapshot for a rule
//! whose count was not used up (reasons starting with "oldest"); 0.14 also
//! has no `-1` (unlimited) counts.
//!
//! Pure: snapshots and a clock reading in, decisions out. The only outside
//! input is the local time zone (`TZ`), which restic consults too: a
//! snapshot whose recorded offset is the local zone's at that instant does
//! its "within" date arithmetic in the local zone (so across a DST change
//! the wall clock is kept, as Go's `time.AddDate` does), any other snapshot
//! in its recorded fixed offset. Buckets (hour, day, ISO week, month, year)
//! are always taken from the wall clock in the snapshot's recorded offset,
//! which is what Go's time parsing gives restic.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
use serde::Serialize;

use crate::format::id::Id;
use crate::format::repofile::Snapshot;

/// How many snapshots of a kind to keep: `--keep-daily 7`, or `unlimited`
/// (restic 0.19; restic 0.15 to 0.17 spelled it `-1`, also accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// At most this many (0 keeps none by this rule).
    N(u32),
    /// Every one (restic's `-1`).
    Unlimited,
}

impl Count {
    /// restic's integer: -1 for unlimited.
    fn as_restic(self) -> i64 {
        match self {
            Count::N(n) => i64::from(n),
            Count::Unlimited => -1,
        }
    }
}

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Count, String> {
        if s.trim() == "unlimited" {
            return Ok(Count::Unlimited);
        }
        match s.trim().parse::<i64>() {
            Ok(-1) => Ok(Count::Unlimited),
            Ok(n) if n >= 0 => u32::try_from(n)
                .map(Count::N)
                .map_err(|_| format!("{s:?} is too large")),
            Ok(_) => Err(format!(
                "{s:?}: negative values are not allowed, use 'unlimited' to keep all"
            )),
            Err(_) => Err(format!("{s:?} is not a number")),
        }
    }
}

/// A calendar span in restic's syntax, such as `1y2m3d4h`: years, months,
/// days and hours, subtracted from the newest snapshot's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    /// Years (`y`).
    pub years: i32,
    /// Months (`m`).
    pub months: i32,
    /// Days (`d`).
    pub days: i32,
    /// Hours (`h`).
    pub hours: i32,
}

impl KeepDuration {
    /// All parts zero: restic treats the option as not given.
    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }

    /// `t` minus this span, as Go's `t.AddDate(-y, -m, -d).Add(-h hours)`.
    /// `None` when the result is outside chrono's range; the caller treats
    /// that as infinitely far in the past.
    fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<Utc>> {
        let wall = t.naive_local();
        // Go normalises the month first, then lets the day overflow.
        let month0 = i64::from(wall.month0()) - i64::from(self.months);
        let year = i64::from(wall.year()) - i64::from(self.years) + month0.div_euclid(12);
        let first = NaiveDate::from_ymd_opt(
            i32::try_from(year).ok()?,
            u32::try_from(month0.rem_euclid(12)).ok()? + 1,
            1,
        )?;
        let date = first.checked_add_signed(chrono::TimeDelta::try_days(
            i64::from(wall.day()) - 1 - i64::from(self.days),
        )?)?;
        let new_wall = date.and_time(wall.time());
        let local_offset = chrono::Local.offset_from_utc_datetime(&t.naive_utc()).fix();
        let utc = if local_offset == *t.offset() {
            go_local_date(new_wall)?
        } else {
            new_wall.checked_sub_signed(chrono::TimeDelta::seconds(i64::from(
                t.offset().local_minus_utc(),
            )))?
        };
        let utc = utc.checked_sub_signed(chrono::TimeDelta::try_hours(i64::from(self.hours))?)?;
        Some(Utc.from_utc_datetime(&utc))
    }
}

/// The UTC time of wall clock `wall` in the local zone, resolved as Go's
/// `time.Date` does: take the offset in force at `wall` read as UTC; if
/// the resulting instant has another offset, use that one instead.
fn go_local_date(wall: NaiveDateTime) -> Option<NaiveDateTime> {
    let offset_at = |utc: &NaiveDateTime| {
        chrono::TimeDelta::seconds(i64::from(
            chrono::Local
                .offset_from_utc_datetime(utc)
                .fix()
                .local_minus_utc(),
        ))
    };
    let first = wall.checked_sub_signed(offset_at(&wall))?;
    wall.checked_sub_signed(offset_at(&first))
}

impl FromStr for KeepDuration {
    type Err = String;

    /// restic's `ParseDuration`: numbers (optionally negative) each followed
    /// by one of `y`, `m`, `d`, `h`; a later part of a unit replaces an
    /// earlier one.
    fn from_str(input: &str) -> Result<KeepDuration, String> {
        let mut d = KeepDuration::default();
        let mut rest = input.trim();
        while !rest.is_empty() {
            let (negative, body) = match rest.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, rest),
            };
            let digits = body.len() - body.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(format!("invalid duration {input:?}: no number found"));
            }
            let n: i32 = body[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
            let n = if negative { -n } else { n };
            let mut after = body[digits..].chars();
            match after.next() {
                Some('y') => d.years = n,
                Some('m') => d.months = n,
                Some('d') => d.days = n,
                Some('h') => d.hours = n,
                Some(c) => {
                    return Err(format!(
                        "invalid duration {input:?}: unit {c:?} after {n} (use y, m, d or h)"
                    ))
                }
                None => return Err(format!("invalid duration {input:?}: no unit after {n}")),
            }
            rest = after.as_str();
        }
        Ok(d)
    }
}

impl fmt::Display for KeepDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// What to keep. Everything not kept by some rule is removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// The newest N.
    pub keep_last: Option<Count>,
    /// The newest snapshot of each of the last N hours that have one.
    pub keep_hourly: Option<Count>,
    /// Likewise per day.
    pub keep_daily: Option<Count>,
    /// Likewise per ISO week.
    pub keep_weekly: Option<Count>,
    /// Likewise per month.
    pub keep_monthly: Option<Count>,
    /// Likewise per year.
    pub keep_yearly: Option<Count>,
    /// Every snapshot newer than the newest minus this.
    pub keep_within: Option<KeepDuration>,
    /// The newest of each hour, within this of the newest.
    pub keep_within_hourly: Option<KeepDuration>,
    /// The newest of each day, within this of the newest.
    pub keep_within_daily: Option<KeepDuration>,
    /// The newest of each ISO week, within this of the newest.
    pub keep_within_weekly: Option<KeepDuration>,
    /// The newest of each month, within this of the newest.
    pub keep_within_monthly: Option<KeepDuration>,
    /// The newest of each year, within this of the newest.
    pub keep_within_yearly: Option<KeepDuration>,
    /// Every snapshot carrying all tags of one of these lists.
    pub keep_tags: Vec<Vec<String>>,
}

impl Policy {
    /// No rule given. restic refuses to forget with an empty policy.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let withins = [
            self.keep_within,
            self.keep_within_hourly,
            self.keep_within_daily,
            self.keep_within_weekly,
            self.keep_within_monthly,
            self.keep_within_yearly,
        ];
        self.keep_tags.is_empty()
            && counts.iter().all(|c| matches!(c, None | Some(Count::N(0))))
            && withins.iter().all(|w| w.is_none_or(|w| w.is_zero()))
    }
}

/// restic's `HasTags`: the snapshot carries every tag of `list`; the empty
/// tag matches a snapshot without tags.
pub fn has_tags(s: &Snapshot, list: &[String]) -> bool {
    list.iter().all(|t| {
        if t.is_empty() && s.tags.is_empty() {
            return true;
        }
        s.tags.contains(t)
    })
}

/// What snapshots are grouped by before the policy is applied to each group
/// separately (`--group-by host,paths,tags`; restic's default is
/// `host,paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the (sorted) list of backed-up paths.
    pub paths: bool,
    /// By the (sorted) tag list.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> GroupBy {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    /// A comma-separated list of `host`, `paths`, `tags` (or the singulars);
    /// the empty string groups nothing.
    fn from_str(s: &str) -> Result<GroupBy, String> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',') {
            match part {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                "" => {}
                other => {
                    return Err(format!(
                        "unknown grouping option {other:?}: use host, paths and/or tags"
                    ))
                }
            }
        }
        Ok(g)
    }
}

/// What a group's snapshots share. Fields not grouped by are empty (`None`
/// for paths and tags, printed as JSON `null`, as restic does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host name, or "" when not grouped by host.
    pub hostname: String,
    /// Sorted paths.
    pub paths: Option<Vec<String>>,
    /// Sorted tags.
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    fn of(s: &Snapshot, by: GroupBy) -> GroupKey {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            hostname: if by.host {
                s.hostname.clone()
            } else {
                String::new()
            },
            paths: by.paths.then(|| sorted(&s.paths)),
            // A snapshot without tags has nil tags in restic: null.
            tags: (by.tags && !s.tags.is_empty()).then(|| sorted(&s.tags)),
        }
    }
}

/// Remaining counts after a snapshot was kept (restic's `counters`; -1 is
/// unlimited, 0 means the rule is off or used up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// keep-last.
    #[serde(skip_serializing_if = "is_zero")]
    pub last: i64,
    /// keep-hourly.
    #[serde(skip_serializing_if = "is_zero")]
    pub hourly: i64,
    /// keep-daily.
    #[serde(skip_serializing_if = "is_zero")]
    pub daily: i64,
    /// keep-weekly.
    #[serde(skip_serializing_if = "is_zero")]
    pub weekly: i64,
    /// keep-monthly.
    #[serde(skip_serializing_if = "is_zero")]
    pub monthly: i64,
    /// keep-yearly.
    #[serde(skip_serializing_if = "is_zero")]
    pub yearly: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A kept snapshot and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The snapshot.
    pub id: Id,
    /// restic's reason texts ("daily snapshot", "within 1y", …).
    pub reasons: Vec<String>,
    /// The counts left after this snapshot.
    pub counters: Counters,
}

/// The decision for one group: both lists newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// What the group's snapshots share.
    pub key: GroupKey,
    /// Kept snapshots.
    pub keep: Vec<Kept>,
    /// Snapshots to forget.
    pub remove: Vec<Id>,
}

/// Groups `snapshots` by `by` and applies `policy` to each group; groups are
/// returned in key order. `now` matters only for snapshots dated in the
/// future: like restic, "within" rules measure from the newest snapshot
/// that is not newer than `now`.
pub fn apply(
    snapshots: &[(Id, Snapshot)],
    by: GroupBy,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<Group> {
    let mut groups: BTreeMap<GroupKey, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(GroupKey::of(&s.1, by)).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(key, list)| {
            let (keep, remove) = apply_policy(&list, policy, now);
            Group { key, keep, remove }
        })
        .collect()
}

/// A bucket function: the value that identifies a snapshot's hour, day, …
type Bucker = fn(&NaiveDateTime, usize) -> i64;

fn hour_of(t: &NaiveDateTime, _: usize) -> i64 {
    i64::from(t.year()) * 1_000_000
        + i64::from(t.month()) * 10_000
        + i64::from(t.day()) * 100
        + i64::from(t.hour())
}

fn day_of(t: &NaiveDateTime, _: usize) -> i64 {
    i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
}

fn week_of(t: &NaiveDateTime, _: usize) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}

fn month_of(t: &NaiveDateTime, _: usize) -> i64 {
    i64::from(t.year()) * 100 + i64::from(t.month())
}

fn year_of(t: &NaiveDateTime, _: usize) -> i64 {
    i64::from(t.year())
}

fn position(_: &NaiveDateTime, nr: usize) -> i64 {
    i64::try_from(nr).unwrap_or(i64::MAX)
}

/// restic's `ApplyPolicy` for one group.
fn apply_policy(list: &[&(Id, Snapshot)], p: &Policy, now: DateTime<Utc>) -> (Vec<Kept>, Vec<Id>) {
    // Newest first; a stable sort keeps equal times in the given order.
    let mut list = list.to_vec();
    list.sort_by_key(|s| std::cmp::Reverse(s.1.time));

    struct Bucket {
        count: i64,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let count = |c: Option<Count>| c.map_or(0, Count::as_restic);
    let mut buckets = [
        (p.keep_last, position as Bucker, "last snapshot"),
        (p.keep_hourly, hour_of, "hourly snapshot"),
        (p.keep_daily, day_of, "daily snapshot"),
        (p.keep_weekly, week_of, "weekly snapshot"),
        (p.keep_monthly, month_of, "monthly snapshot"),
        (p.keep_yearly, year_of, "yearly snapshot"),
    ]
    .map(|(c, bucker, reason)| Bucket {
        count: count(c),
        bucker,
        last: None,
        reason,
    });
    struct WithinBucket {
        within: KeepDuration,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let mut within_buckets: Vec<WithinBucket> = [
        (p.keep_within_hourly, hour_of as Bucker, "hourly within"),
        (p.keep_within_daily, day_of, "daily within"),
        (p.keep_within_weekly, week_of, "weekly within"),
        (p.keep_within_monthly, month_of, "monthly within"),
        (p.keep_within_yearly, year_of, "yearly within"),
    ]
    .into_iter()
    .filter_map(|(w, bucker, reason)| {
        w.filter(|w| !w.is_zero()).map(|within| WithinBucket {
            within,
            bucker,
            last: None,
            reason,
        })
    })
    .collect();

    // The newest snapshot that is not in the future.
    let latest = list
        .iter()
        .map(|s| s.1.time)
        .filter(|t| *t < now)
        .max_by_key(|t| t.with_timezone(&Utc));
    // Whether `t` is after the newest snapshot minus `d`. Without such a
    // snapshot restic measures from the year 1, which every snapshot is after.
    let is_within = |t: &DateTime<FixedOffset>, d: &KeepDuration| match latest {
        None => true,
        Some(latest) => d.before(latest).is_none_or(|limit| *t > limit),
    };

    let mut keep = Vec::new();
    let mut remove = Vec::new();
    let oldest = list.len().saturating_sub(1);
    for (nr, (id, s)) in list.iter().map(|e| (&e.0, &e.1)).enumerate() {
        let wall = s.time.naive_local();
        let mut reasons = Vec::new();
        for tags in &p.keep_tags {
            if has_tags(s, tags) {
                reasons.push(format!("has tags [{}]", tags.join(", ")));
            }
        }
        if let Some(w) = p.keep_within.filter(|w| !w.is_zero()) {
            if is_within(&s.time, &w) {
                reasons.push(format!("within {w}"));
            }
        }
        for b in &mut buckets {
            if b.count > 0 || b.count == -1 {
                let val = (b.bucker)(&wall, nr);
                // The oldest snapshot is kept while counts are left, which
                // keeps the longest history.
                if Some(val) != b.last || nr == oldest {
                    let reason = if Some(val) == b.last {
                        format!("oldest {}", b.reason)
                    } else {
                        b.reason.to_string()
                    };
                    b.last = Some(val);
                    if b.count > 0 {
                        b.count -= 1;
                    }
                    reasons.push(reason);
                }
            }
        }
        for b in &mut within_buckets {
            if is_within(&s.time, &b.within) {
                let val = (b.bucker)(&wall, nr);
                // Current restic keeps the oldest snapshot for these rules too.
                if Some(val) != b.last || nr == oldest {
                    let prefix = if Some(val) == b.last { "oldest " } else { "" };
                    b.last = Some(val);
                    reasons.push(format!("{prefix}{} {}", b.reason, b.within));
                }
            }
        }
        if reasons.is_empty() {
            remove.push(*id);
        } else {
            keep.push(Kept {
                id: *id,
                reasons,
                counters: Counters {
                    last: buckets[0].count,
                    hourly: buckets[1].count,
                    daily: buckets[2].count,
                    weekly: buckets[3].count,
                    monthly: buckets[4].count,
                    yearly: buckets[5].count,
                },
            });
        }
    }
    (keep, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            time: DateTime::parse_from_rfc3339(time).unwrap(),
            parent: None,
            tree: Id::hash(b"tree"),
            paths: vec!["/data".into()],
            hostname: host.into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            original: None,
            program_version: String::new(),
            summary: None,
        }
    }

    /// Snapshots at the given times (host "h"), ids from their position.
    fn list(times: &[&str]) -> Vec<(Id, Snapshot)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (Id::hash(&[i as u8]), snap(t, "h", &[])))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    /// The indexes (into `snaps`) kept by `policy` in the single group.
    fn kept(snaps: &[(Id, Snapshot)], policy: &Policy) -> Vec<usize> {
        let groups = apply(snaps, GroupBy::default(), policy, now());
        assert_eq!(groups.len(), 1);
        let mut v: Vec<usize> = groups[0]
            .keep
            .iter()
            .map(|k| snaps.iter().position(|s| s.0 == k.id).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parses_durations_like_restic() {
        let d: KeepDuration = "1y2m3d4h".parse().unwrap();
        assert_eq!(
            d,
            KeepDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!(d.to_string(), "1y2m3d4h");
        assert_eq!("5d".parse::<KeepDuration>().unwrap().days, 5);
        assert!("".parse::<KeepDuration>().unwrap().is_zero());
        assert!("5".parse::<KeepDuration>().is_err());
        assert!("5w".parse::<KeepDuration>().is_err());
        assert!("d".parse::<KeepDuration>().is_err());
    }

    #[test]
    fn parses_counts_and_groupings() {
        assert_eq!("-1".parse::<Count>(), Ok(Count::Unlimited));
        assert_eq!("unlimited".parse::<Count>(), Ok(Count::Unlimited));
        assert_eq!("7".parse::<Count>(), Ok(Count::N(7)));
        assert!("-2".parse::<Count>().is_err());
        assert_eq!(
            "host,tags".parse::<GroupBy>(),
            Ok(GroupBy {
                host: true,
                paths: false,
                tags: true
            })
        );
        assert!("".parse::<GroupBy>().is_ok());
        assert!("hostname".parse::<GroupBy>().is_err());
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_the_oldest_while_counts_last() {
        let s = list(&[
            "2024-01-01T08:00:00Z",
            "2024-01-01T20:00:00Z",
            "2024-01-02T08:00:00Z",
            "2024-01-02T09:00:00Z",
        ]);
        let p = Policy {
            keep_daily: Some(Count::N(2)),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![1, 3]);
        // A third daily count is left for the oldest snapshot.
        let p = Policy {
            keep_daily: Some(Count::N(3)),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![0, 1, 3]);
        let p = Policy {
            keep_daily: Some(Count::Unlimited),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![0, 1, 3]);
    }

    #[test]
    fn weeks_are_iso_weeks_in_the_recorded_offset() {
        // Sunday 2024-01-07 23:30 at +02:00 is in ISO week 1; Monday
        // 2024-01-08 00:30 at +02:00 (Sunday 22:30 UTC) is in week 2.
        let s = list(&[
            "2024-01-07T23:30:00+02:00",
            "2024-01-08T00:30:00+02:00",
            "2024-01-09T00:30:00+02:00",
        ]);
        let p = Policy {
            keep_weekly: Some(Count::N(2)),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![0, 2]);
    }

    #[test]
    fn within_is_measured_from_the_newest_snapshot_not_now() {
        let s = list(&[
            "2020-01-01T00:00:00Z",
            "2020-03-01T00:00:00Z",
            "2020-03-30T12:00:00Z",
            "2020-03-31T00:00:00Z",
            // In the future: ignored as the reference, but kept.
            "2031-01-01T00:00:00Z",
        ]);
        let p = Policy {
            keep_within: Some("1m".parse().unwrap()),
            ..Policy::default()
        };
        // 2020-03-31 minus one month is 2020-02-31, i.e. 2020-03-02.
        assert_eq!(kept(&s, &p), vec![2, 3, 4]);
        let p = Policy {
            keep_within: Some("1m1d".parse().unwrap()),
            ..Policy::default()
        };
        // 2020-02-30 is 2020-03-01 00:00, and "within" is strictly after.
        assert_eq!(kept(&s, &p), vec![2, 3, 4]);
        let p = Policy {
            keep_within: Some("1m2d".parse().unwrap()),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![1, 2, 3, 4]);
    }

    #[test]
    fn within_daily_keeps_one_per_day_inside_the_span() {
        let s = list(&[
            "2024-01-01T10:00:00Z",
            "2024-01-05T10:00:00Z",
            "2024-01-05T11:00:00Z",
            "2024-01-06T10:00:00Z",
        ]);
        let p = Policy {
            keep_within_daily: Some("2d".parse().unwrap()),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![2, 3]);
        // Current restic also keeps the oldest snapshot inside the span.
        let p = Policy {
            keep_within_daily: Some("10d".parse().unwrap()),
            ..Policy::default()
        };
        assert_eq!(kept(&s, &p), vec![0, 2, 3]);
        let p = Policy {
            keep_within_weekly: Some("10d".parse().unwrap()),
            ..Policy::default()
        };
        let groups = apply(&s, GroupBy::default(), &p, now());
        let reasons: Vec<_> = groups[0].keep.iter().map(|k| k.reasons.clone()).collect();
        assert_eq!(
            reasons,
            vec![vec!["weekly within 10d"], vec!["oldest weekly within 10d"]]
        );
    }

    #[test]
    fn keep_tag_and_grouping() {
        let snaps = vec![
            (
                Id::hash(b"a"),
                snap("2024-01-01T00:00:00Z", "a", &["x", "y"]),
            ),
            (Id::hash(b"b"), snap("2024-01-02T00:00:00Z", "a", &["y"])),
            (Id::hash(b"c"), snap("2024-01-03T00:00:00Z", "b", &[])),
            (Id::hash(b"d"), snap("2024-01-04T00:00:00Z", "b", &[])),
        ];
        let p = Policy {
            keep_tags: vec![vec!["x".into(), "y".into()], vec!["".into()]],
            ..Policy::default()
        };
        let groups = apply(&snaps, GroupBy::default(), &p, now());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key.hostname, "a");
        assert_eq!(groups[0].keep.len(), 1);
        assert_eq!(groups[0].keep[0].reasons, vec!["has tags [x, y]"]);
        assert_eq!(groups[0].remove, vec![Id::hash(b"b")]);
        assert_eq!(groups[1].keep.len(), 2);

        let by_tags: GroupBy = "tags".parse().unwrap();
        let p = Policy {
            keep_last: Some(Count::N(1)),
            ..Policy::default()
        };
        let groups = apply(&snaps, by_tags, &p, now());
        let keys: Vec<_> = groups.iter().map(|g| g.key.tags.clone()).collect();
        assert_eq!(
            keys,
            vec![
                None,
                Some(vec!["x".to_string(), "y".to_string()]),
                Some(vec!["y".to_string()])
            ]
        );
        assert_eq!(groups[0].keep[0].id, Id::hash(b"d"));
        assert_eq!(groups[0].remove, vec![Id::hash(b"c")]);
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(Policy::default().is_empty());
        assert!(Policy {
            keep_daily: Some(Count::N(0)),
            keep_within: Some(KeepDuration::default()),
            ..Policy::default()
        }
        .is_empty());
        assert!(!Policy {
            keep_daily: Some(Count::Unlimited),
            ..Policy::default()
        }
        .is_empty());
    }
}
