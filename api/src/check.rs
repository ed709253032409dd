//! Scheduled repository checks: `Repository.spec.check`, the run the
//! controller asks for in `status.check`, and what it decides at each
//! reconcile ([`decide`]).
//!
//! The controller starts a run at each tick of the schedule (or when the
//! [`CHECK_NOW`] annotation gets a new value) by writing a Pending
//! [`CheckRun`] and the label [`CHECK_LABEL`]; the agents watch only
//! Repositories with that label, and one of them claims the run with the
//! same JSON-patch protocol as session items (the identity tested is the
//! run's `scheduledTime`). The agent runs `check` under the repository's
//! maintenance Lease, so a check never overlaps a forget/prune of the same
//! repository, and reports the result; the controller then copies it to
//! `lastCheckTime`/`lastCheckResult`, publishes an Event, sets the metrics
//! and removes the label.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Claim, ItemPhase};
use crate::schedule::Schedule;
use crate::time::from_time;

/// Annotation on a Repository: a new value (any, e.g. a timestamp) asks for
/// a check now, whatever the schedule.
pub const CHECK_NOW: &str = "stash.rs/check-now";
/// Label the controller keeps on a Repository while its check run is
/// unfinished; the agents watch only Repositories with it.
pub const CHECK_LABEL: &str = "stash.rs/check";
/// The value of [`CHECK_LABEL`].
pub const CHECK_LABEL_VALUE: &str = "unfinished";
/// How long a check run may take (from when it was asked for) when
/// `spec.check.timeout` is unset.
pub const DEFAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// When and how thoroughly a Repository is checked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckPolicy {
    /// Cron schedule of the checks (as a BackupConfiguration's); unset, a
    /// check runs only when asked for with the `stash.rs/check-now`
    /// annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::schedule::cron_rule()).message("schedule must be a cron expression: 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly"))]
    #[schemars(length(min = 1, max = 200))]
    pub schedule: Option<String>,
    /// Time zone the schedule is read in (tz database name); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')").message("timeZone must be a tz database name such as \"UTC\" or \"Europe/Berlin\""))]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Also read and verify this part of the pack data, as restic's
    /// `--read-data-subset`: `n/t` (group n of t: `1/30` … `30/30` on 30
    /// nights read everything once), `x%` (a random x percent) or a size
    /// (`500M`). Unset: the structure only (index, snapshots, trees, pack
    /// headers). `100%` reads all data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+/[0-9]+|[0-9]+([.][0-9]+)?%|[0-9]+[bBkKmMgGtT]?)$')").message("readDataSubset must be n/t (e.g. \"1/30\"), a percentage (e.g. \"5%\") or a size (e.g. \"500M\")"))]
    #[schemars(length(min = 1, max = 32))]
    pub read_data_subset: Option<String>,
    /// A run not finished this long after it was asked for fails, e.g.
    /// `2h` (default `6h`); a run no agent took fails the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("timeout must be a duration such as \"30m\" or \"6h\""))]
    #[schemars(length(min = 2, max = 32))]
    pub timeout: Option<String>,
}

/// How a check run was asked for.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckTrigger {
    /// A tick of `spec.check.schedule`.
    Schedule,
    /// The `stash.rs/check-now` annotation.
    Request,
}

/// One check of a Repository: asked for by the controller, claimed and run
/// by an agent (see the module docs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckRun {
    /// Where the run is.
    #[serde(default)]
    pub phase: ItemPhase,
    /// When it was asked for: the schedule's tick, or the request's time.
    /// It identifies the run in the agents' claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
    /// How it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<CheckTrigger>,
    /// The `stash.rs/check-now` value it answers (a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The node of the agent that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The claim of the agent running it.
    #[serde(flatten)]
    pub claim: Claim,
    /// What part of the data was read (`readDataSubset`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
    /// Snapshots checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<i64>,
    /// Trees checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<i64>,
    /// Packs whose data was read and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs_read: Option<i64>,
    /// Damage found (0 when healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<i64>,
    /// Findings that lose no data (e.g. unreferenced packs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_count: Option<i64>,
    /// Why it failed: the first errors found, or why it could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When an agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

impl CheckRun {
    /// Whether it has ended (either way).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, ItemPhase::Succeeded | ItemPhase::Failed)
    }
}

/// `lastCheckResult` of a check that found no damage.
pub const RESULT_PASSED: &str = "Passed";
/// `lastCheckResult` of a check that found damage or could not run.
pub const RESULT_FAILED: &str = "Failed";

/// What the controller does about a Repository's checks now.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckStep {
    /// Nothing to do.
    Nothing,
    /// Start this run (write it to `status.check`, with the label).
    Start(Box<CheckRun>),
    /// Copy the finished run to `lastCheckTime`/`lastCheckResult` (and
    /// remove the label, publish the Event).
    Record {
        /// `lastCheckTime`: when the run ended.
        time: Time,
        /// `lastCheckResult`.
        result: &'static str,
        /// What to say about it.
        message: String,
    },
    /// End the unfinished run: it passed its timeout (the reason).
    Expire(String),
}

/// The step, and when to look again (`None`: only on a change).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckDecision {
    /// What to do now.
    pub step: CheckStep,
    /// When the next tick or the run's deadline comes.
    pub requeue_at: Option<DateTime<Utc>>,
}

/// What is recorded of a Repository's checks in its status.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckState<'a> {
    /// `status.check`: the current or last run.
    pub run: Option<&'a CheckRun>,
    /// `status.lastCheckTime`.
    pub last_check_time: Option<&'a Time>,
    /// `status.lastCheckScheduleTime`: the last tick that started a run.
    pub last_schedule_time: Option<&'a Time>,
}

/// Decides at `now` for a Repository created at `created`, with `policy`
/// (`spec.check`), the [`CHECK_NOW`] annotation's value `request`, and its
/// recorded `state`. A schedule, time zone or timeout that cannot be used
/// is an error (the schema refuses most).
pub fn decide(
    policy: Option<&CheckPolicy>,
    request: Option<&str>,
    state: CheckState<'_>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<CheckDecision, String> {
    let timeout = match policy.and_then(|p| p.timeout.as_deref()) {
        Some(t) => crate::parse_duration(t).map_err(|e| format!("check.timeout: {e}"))?,
        None => DEFAULT_CHECK_TIMEOUT,
    };
    let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    let schedule = match policy.and_then(|p| p.schedule.as_deref()) {
        Some(s) => Some(
            Schedule::parse(s, policy.and_then(|p| p.time_zone.as_deref()))
                .map_err(|e| format!("check.schedule: {e}"))?,
        ),
        None => None,
    };
    let next_tick = schedule.as_ref().and_then(|s| s.next_after(now));
    let run = state.run;
    if let Some(run) = run {
        if !run.is_finished() {
            let asked = run.scheduled_time.as_ref().map(from_time).unwrap_or(now);
            let deadline = asked + timeout;
            if now >= deadline {
                let why = match run.phase {
                    ItemPhase::Pending => format!(
                        "no agent took the check run asked for at {} within its timeout of {}; is the stash agent running?",
                        asked.format("%Y-%m-%dT%H:%M:%SZ"),
                        policy.and_then(|p| p.timeout.as_deref()).unwrap_or("6h"),
                    ),
                    _ => format!(
                        "the check run asked for at {} did not finish within its timeout of {}",
                        asked.format("%Y-%m-%dT%H:%M:%SZ"),
                        policy.and_then(|p| p.timeout.as_deref()).unwrap_or("6h"),
                    ),
                };
                return Ok(CheckDecision {
                    step: CheckStep::Expire(why),
                    requeue_at: None,
                });
            }
            // One run at a time: later ticks and requests wait for it.
            return Ok(CheckDecision {
                step: CheckStep::Nothing,
                requeue_at: Some(deadline),
            });
        }
        let end = run
            .end_time
            .clone()
            .unwrap_or_else(|| crate::time::to_time(now));
        if state.last_check_time.map(|t| t.0) != Some(end.0) {
            let passed = run.phase == ItemPhase::Succeeded;
            let message = if passed {
                format!(
                    "check passed: {} snapshot(s), {} tree(s){}",
                    run.snapshots.unwrap_or(0),
                    run.trees.unwrap_or(0),
                    match &run.read_data_subset {
                        Some(s) => format!(
                            ", {} pack(s) read (data subset {s})",
                            run.packs_read.unwrap_or(0)
                        ),
                        None => String::new(),
                    }
                )
            } else {
                format!(
                    "check failed: {}",
                    run.error.as_deref().unwrap_or("no reason given")
                )
            };
            return Ok(CheckDecision {
                step: CheckStep::Record {
                    time: end,
                    result: if passed { RESULT_PASSED } else { RESULT_FAILED },
                    message,
                },
                requeue_at: next_tick,
            });
        }
    }
    let answered = run.and_then(|r| r.request.as_deref());
    if let Some(req) = request.filter(|r| Some(*r) != answered && !r.is_empty()) {
        return Ok(CheckDecision {
            step: CheckStep::Start(Box::new(new_run(
                policy,
                now,
                CheckTrigger::Request,
                Some(req),
            ))),
            requeue_at: next_tick,
        });
    }
    if let Some(s) = &schedule {
        let base = state
            .last_schedule_time
            .map(from_time)
            .unwrap_or(created)
            .max(created);
        if let Some(tick) = s.last_at_or_before(now).filter(|t| *t > base) {
            let mut r = new_run(policy, tick, CheckTrigger::Schedule, None);
            // A request answered before stays answered.
            r.request = answered.map(str::to_owned);
            return Ok(CheckDecision {
                step: CheckStep::Start(Box::new(r)),
                requeue_at: next_tick,
            });
        }
    }
    Ok(CheckDecision {
        step: CheckStep::Nothing,
        requeue_at: next_tick,
    })
}

fn new_run(
    policy: Option<&CheckPolicy>,
    at: DateTime<Utc>,
    trigger: CheckTrigger,
    request: Option<&str>,
) -> CheckRun {
    CheckRun {
        phase: ItemPhase::Pending,
        scheduled_time: Some(crate::time::to_time(at)),
        trigger: Some(trigger),
        request: request.map(str::to_owned),
        read_data_subset: policy.and_then(|p| p.read_data_subset.clone()),
        ..CheckRun::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::to_time;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn nightly() -> CheckPolicy {
        CheckPolicy {
            schedule: Some("0 3 * * *".into()),
            read_data_subset: Some("1/30".into()),
            ..CheckPolicy::default()
        }
    }

    #[test]
    fn a_tick_after_creation_starts_one_run_and_later_ticks_wait_for_it() {
        let p = nightly();
        let created = at("2026-12-01T12:00:00Z");
        // Before the first tick after creation: nothing, look again at it.
        let d = decide(
            Some(&p),
            None,
            CheckState::default(),
            created,
            at("2026-12-02T02:00:00Z"),
        )
        .unwrap();
        assert_eq!(d.step, CheckStep::Nothing);
        assert_eq!(d.requeue_at, Some(at("2026-12-02T03:00:00Z")));
        // Hours after two missed ticks: one run, for the last tick.
        let d = decide(
            Some(&p),
            None,
            CheckState::default(),
            created,
            at("2026-12-03T04:00:00Z"),
        )
        .unwrap();
        let CheckStep::Start(run) = d.step else {
            panic!("{d:?}")
        };
        assert_eq!(run.phase, ItemPhase::Pending);
        assert_eq!(
            run.scheduled_time,
            Some(to_time(at("2026-12-03T03:00:00Z")))
        );
        assert_eq!(run.trigger, Some(CheckTrigger::Schedule));
        assert_eq!(run.read_data_subset.as_deref(), Some("1/30"));
        // While it runs, the next tick and a request wait.
        let p = CheckPolicy {
            timeout: Some("48h".into()),
            ..p
        };
        let mut running = run.clone();
        running.phase = ItemPhase::Running;
        let tick = to_time(at("2026-12-03T03:00:00Z"));
        let state = CheckState {
            run: Some(&running),
            last_schedule_time: Some(&tick),
            ..CheckState::default()
        };
        let d = decide(
            Some(&p),
            Some("now"),
            state,
            created,
            at("2026-12-04T03:30:00Z"),
        )
        .unwrap();
        assert_eq!(d.step, CheckStep::Nothing);
        assert_eq!(d.requeue_at, Some(at("2026-12-05T03:00:00Z")));
    }

    #[test]
    fn a_finished_run_is_recorded_once_then_the_next_tick_starts() {
        let p = nightly();
        let created = at("2026-12-01T12:00:00Z");
        let tick = to_time(at("2026-12-02T03:00:00Z"));
        let end = to_time(at("2026-12-02T03:10:00Z"));
        let failed = CheckRun {
            phase: ItemPhase::Failed,
            scheduled_time: Some(tick.clone()),
            error: Some(
                "2 error(s); the first: pack 1234abcd: ciphertext verification failed".into(),
            ),
            end_time: Some(end.clone()),
            ..CheckRun::default()
        };
        let state = CheckState {
            run: Some(&failed),
            last_check_time: None,
            last_schedule_time: Some(&tick),
        };
        let now = at("2026-12-02T03:11:00Z");
        let d = decide(Some(&p), None, state, created, now).unwrap();
        let CheckStep::Record {
            time,
            result,
            message,
        } = d.step
        else {
            panic!("{d:?}")
        };
        assert_eq!((time, result), (end.clone(), RESULT_FAILED));
        assert!(message.contains("pack 1234abcd"), "{message}");
        let recorded = CheckState {
            last_check_time: Some(&end),
            ..state
        };
        assert_eq!(
            decide(Some(&p), None, recorded, created, now).unwrap().step,
            CheckStep::Nothing
        );
        let d = decide(
            Some(&p),
            None,
            recorded,
            created,
            at("2026-12-03T03:00:00Z"),
        )
        .unwrap();
        assert!(matches!(d.step, CheckStep::Start(_)), "{d:?}");
    }

    #[test]
    fn a_new_request_value_starts_a_run_once() {
        let created = at("2026-12-01T12:00:00Z");
        let now = at("2026-12-01T12:05:00Z");
        // Without a schedule, only requests start runs.
        let d = decide(None, Some("a"), CheckState::default(), created, now).unwrap();
        let CheckStep::Start(run) = d.step else {
            panic!("{d:?}")
        };
        assert_eq!(run.request.as_deref(), Some("a"));
        assert_eq!(run.trigger, Some(CheckTrigger::Request));
        assert_eq!(d.requeue_at, None);
        let mut done = run.clone();
        done.phase = ItemPhase::Succeeded;
        done.snapshots = Some(3);
        done.end_time = Some(to_time(now));
        let end = to_time(now);
        let state = CheckState {
            run: Some(&done),
            last_check_time: Some(&end),
            last_schedule_time: None,
        };
        assert_eq!(
            decide(None, Some("a"), state, created, now).unwrap().step,
            CheckStep::Nothing
        );
        assert!(matches!(
            decide(None, Some("b"), state, created, now).unwrap().step,
            CheckStep::Start(_)
        ));
        // The schedule's next run keeps the answered request.
        let p = nightly();
        let d = decide(
            Some(&p),
            Some("a"),
            state,
            created,
            at("2026-12-02T03:00:00Z"),
        )
        .unwrap();
        let CheckStep::Start(next) = d.step else {
            panic!("{d:?}")
        };
        assert_eq!(next.request.as_deref(), Some("a"));
    }

    #[test]
    fn a_run_past_its_timeout_expires_whether_claimed_or_not() {
        let p = CheckPolicy {
            timeout: Some("1h".into()),
            ..nightly()
        };
        let created = at("2026-12-01T12:00:00Z");
        let tick = to_time(at("2026-12-02T03:00:00Z"));
        let pending = CheckRun {
            phase: ItemPhase::Pending,
            scheduled_time: Some(tick.clone()),
            ..CheckRun::default()
        };
        let state = CheckState {
            run: Some(&pending),
            last_schedule_time: Some(&tick),
            ..CheckState::default()
        };
        let d = decide(Some(&p), None, state, created, at("2026-12-02T03:59:59Z")).unwrap();
        assert_eq!(d.step, CheckStep::Nothing);
        assert_eq!(d.requeue_at, Some(at("2026-12-02T04:00:00Z")));
        let d = decide(Some(&p), None, state, created, at("2026-12-02T04:00:00Z")).unwrap();
        let CheckStep::Expire(why) = d.step else {
            panic!("{d:?}")
        };
        assert!(why.contains("no agent took"), "{why}");
        let running = CheckRun {
            phase: ItemPhase::Running,
            ..pending.clone()
        };
        let state = CheckState {
            run: Some(&running),
            ..state
        };
        let CheckStep::Expire(why) =
            decide(Some(&p), None, state, created, at("2026-12-02T05:00:00Z"))
                .unwrap()
                .step
        else {
            panic!()
        };
        assert!(why.contains("did not finish"), "{why}");
    }

    #[test]
    fn unusable_settings_are_errors() {
        let now = at("2026-12-02T03:00:00Z");
        for bad in [
            CheckPolicy {
                schedule: Some("0 0 30 2 *".into()),
                ..CheckPolicy::default()
            },
            CheckPolicy {
                schedule: Some("@daily".into()),
                time_zone: Some("Mars/Olympus".into()),
                ..CheckPolicy::default()
            },
            CheckPolicy {
                timeout: Some("soon".into()),
                ..CheckPolicy::default()
            },
        ] {
            assert!(
                decide(Some(&bad), None, CheckState::default(), now, now).is_err(),
                "{bad:?}"
            );
        }
    }
}
