//! When ticks fall due: each configuration's clock (schedule and jitter),
//! the last tick handled per configuration, and how many ticks wait for a
//! session. Plain state and arithmetic; [`crate::ticker`] runs the timers
//! and [`crate::scheduler`] creates the sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use stash_api::schedule::Schedule;
use stash_api::BackupConfiguration;
use tokio::sync::watch;

use stash_api::time::from_time;

/// The longest other work waits for the ticker ([`Firing::yield_to_ticks`]).
const YIELD_LIMIT: Duration = Duration::from_secs(5);

/// A configuration, as the clock knows it.
pub type Key = ObjectRef<BackupConfiguration>;

/// The latest tick handled (fired, skipped or refused) per configuration,
/// in memory; `status.lastScheduleTime` is its persisted form, written
/// after the session.
#[derive(Default, Clone)]
pub struct Ticks(Arc<Mutex<HashMap<Key, DateTime<Utc>>>>);

impl Ticks {
    /// The last tick handled for `key` by this process.
    pub fn last(&self, key: &Key) -> Option<DateTime<Utc>> {
        self.lock().get(key).copied()
    }

    pub(crate) fn record(&self, key: Key, tick: DateTime<Utc>) {
        let mut map = self.lock();
        let last = map.entry(key).or_insert(tick);
        *last = (*last).max(tick);
    }

    /// Forgets `tick` (its session could not be created) so it is due again.
    pub(crate) fn forget(&self, key: &Key, tick: DateTime<Utc>) {
        let mut map = self.lock();
        if map.get(key) == Some(&tick) {
            map.remove(key);
        }
    }

    pub(crate) fn remove(&self, key: &Key) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, DateTime<Utc>>> {
        // A panic elsewhere cannot leave the map inconsistent: every
        // operation is a single insert or remove.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many due ticks have no session yet (waiting for a permit or being
/// created). The apiserver is what every writer here shares: when 1 000
/// configurations fire in the same second, the sessions must not queue
/// behind the resolution of the first ones, their Events and status
/// writes. So other writers wait until no tick is pending, at most
/// [`YIELD_LIMIT`].
#[derive(Clone)]
pub struct Firing(Arc<watch::Sender<usize>>);

impl Default for Firing {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Firing {
    /// Counts one pending tick until the guard is dropped.
    pub(crate) fn pending(&self) -> Pending {
        self.0.send_modify(|n| *n += 1);
        Pending(self.clone())
    }

    /// Waits until no tick is pending, or [`YIELD_LIMIT`].
    pub async fn yield_to_ticks(&self) {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(YIELD_LIMIT, rx.wait_for(|n| *n == 0)).await;
    }
}

/// One pending tick of [`Firing`].
pub(crate) struct Pending(Firing);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The schedule of `cfg` and its jitter, or `None` when it does not tick
/// (being deleted, paused, a mode nothing implements, or an unparsable
/// schedule; the reconciler says
/// why in its `Ready` condition).
pub fn clock_of(cfg: &BackupConfiguration) -> Option<(Schedule, chrono::Duration)> {
    if cfg.metadata.deletion_timestamp.is_some()
        || cfg.spec.paused
        || cfg.spec.unsupported_mode().is_some()
    {
        return None;
    }
    let schedule = Schedule::parse(&cfg.spec.schedule, cfg.spec.time_zone.as_deref()).ok()?;
    let jitter = jitter_offset(
        &cfg.namespace().unwrap_or_default(),
        &cfg.name_any(),
        cfg.spec.jitter_seconds.unwrap_or(0),
    );
    Some((
        schedule,
        chrono::Duration::from_std(jitter).unwrap_or_default(),
    ))
}

/// The last tick handled for `cfg`: the later of this process's memory and
/// `status.lastScheduleTime`; the creation time for a new configuration.
pub fn last_handled(cfg: &BackupConfiguration, ticks: &Ticks, now: DateTime<Utc>) -> DateTime<Utc> {
    let persisted = cfg
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cfg.metadata.creation_timestamp.as_ref())
        .map(from_time)
        .unwrap_or(now);
    ticks
        .last(&ObjectRef::from_obj(cfg))
        .map_or(persisted, |t| t.max(persisted))
}

/// What the clock does at `now`: the tick due (the latest one with `tick +
/// jitter <= now` after `last`; missed ticks collapse into it, like a
/// CronJob's), and the moment the next one falls due (its tick plus jitter).
pub fn plan(
    schedule: &Schedule,
    jitter: chrono::Duration,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let due = schedule
        .last_at_or_before(now - jitter)
        .filter(|t| *t > last);
    let next = schedule
        .next_after(due.unwrap_or(last).max(now - jitter))
        .map(|t| t + jitter);
    (due, next)
}

/// This configuration's fixed share of its jitter: a hash of its name, so
/// it does not move from tick to tick or from leader to leader.
pub fn jitter_offset(ns: &str, name: &str, jitter_seconds: u32) -> Duration {
    if jitter_seconds == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across processes and Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    Duration::from_millis(h % (u64::from(jitter_seconds) * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn plan_fires_the_latest_missed_tick_once_and_waits_for_the_next() {
        // Every 10 s; 1_700_000_000 is a multiple of 10.
        let s = Schedule::parse("*/10 * * * * *", None).unwrap();
        let none = chrono::Duration::zero();
        // Down from 0 to 35: the ticks at 10, 20 and 30 collapse into 30.
        assert_eq!(plan(&s, none, at(0), at(35)), (Some(at(30)), Some(at(40))));
        // Handled: nothing due until 40.
        assert_eq!(plan(&s, none, at(30), at(35)), (None, Some(at(40))));
        assert_eq!(plan(&s, none, at(30), at(40)), (Some(at(40)), Some(at(50))));
        // Jitter of 3 s: the tick at 40 falls due at 43.
        let j = chrono::Duration::seconds(3);
        assert_eq!(plan(&s, j, at(30), at(42)), (None, Some(at(43))));
        assert_eq!(plan(&s, j, at(30), at(43)), (Some(at(40)), Some(at(53))));
    }

    #[test]
    fn a_mode_nothing_implements_never_ticks() {
        // Stored before the CRD refused `sidecar`: it must not fire sessions
        // that the node agent would then run.
        let cfg = |mode: &str| -> BackupConfiguration {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "stash.rs/v1alpha1",
                "kind": "BackupConfiguration",
                "metadata": {"name": "db", "namespace": "team"},
                "spec": {
                    "schedule": "*/5 * * * *",
                    "target": {"pod": "db-0"},
                    "repository": {"name": "main"},
                    "mode": mode,
                },
            }))
            .unwrap()
        };
        assert!(clock_of(&cfg("node-agent")).is_some());
        assert!(clock_of(&cfg("sidecar")).is_none());
    }

    #[test]
    fn ticks_remember_the_latest_and_forget_only_a_failed_one() {
        let ticks = Ticks::default();
        let key = ObjectRef::new("db").within("team");
        ticks.record(key.clone(), at(20));
        ticks.record(key.clone(), at(10));
        assert_eq!(ticks.last(&key), Some(at(20)));
        ticks.forget(&key, at(10));
        assert_eq!(ticks.last(&key), Some(at(20)));
        ticks.forget(&key, at(20));
        assert_eq!(ticks.last(&key), None);
    }
}
