//! The schedule clock: fires the ticks of every BackupConfiguration on time.
//!
//! Ticks do not go through the BackupConfiguration reconciler's queue. That
//! queue is shared by every reason to look at a configuration (a session
//! changed, the object changed, a finalizer to add), and at start-up it
//! holds every configuration at once: with 1 000 new configurations each
//! needing a finalizer and a status write, a tick due meanwhile waited
//! seconds behind them. Here each configuration has one timer (a heap entry
//! at its next tick plus jitter); a due tick creates its session directly,
//! at most [`FIRE_CONCURRENCY`] at a time, and only then writes the
//! Event and the status, at most [`RECORD_CONCURRENCY`] at a time, so
//! bookkeeping never delays the next session.
//!
//! The clock reads configurations from the shared watch cache and hears of
//! every change through a subscription to it. Which tick is due is decided
//! here only, once per tick ([`Ticks`] remembers the last one handled, and
//! `status.lastScheduleTime` across restarts); the session name derived from
//! the tick keeps a tick from ever yielding two sessions anyway.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use stash_api::schedule::Schedule;
use stash_api::BackupConfiguration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::scheduler::{self, jitter_offset};
use crate::time::from_time;
use crate::Context;

/// Sessions being created at once.
pub const FIRE_CONCURRENCY: usize = 32;
/// Events and status writes after a session was created, at once.
pub const RECORD_CONCURRENCY: usize = 8;
/// How long a tick whose session could not be created waits to try again.
const RETRY: Duration = Duration::from_secs(5);
/// The longest other work waits for the ticker ([`Firing::yield_to_ticks`]).
const YIELD_LIMIT: Duration = Duration::from_secs(5);

type Key = ObjectRef<BackupConfiguration>;

/// A heap entry: the moment a configuration's next tick falls due.
struct Due {
    /// Tick plus jitter.
    at: DateTime<Utc>,
    /// The configuration.
    key: Key,
}

// Ordered by time only: the heap needs no more.
impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

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

    fn record(&self, key: Key, tick: DateTime<Utc>) {
        let mut map = self.lock();
        let last = map.entry(key).or_insert(tick);
        *last = (*last).max(tick);
    }

    /// Forgets `tick` (its session could not be created) so it is due again.
    fn forget(&self, key: &Key, tick: DateTime<Utc>) {
        let mut map = self.lock();
        if map.get(key) == Some(&tick) {
            map.remove(key);
        }
    }

    fn remove(&self, key: &Key) {
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
    fn pending(&self) -> Pending {
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
struct Pending(Firing);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The schedule of `cfg` and its jitter, or `None` when it does not tick
/// (being deleted, paused, or an unparsable schedule; the reconciler says
/// why in its `Ready` condition).
pub fn clock_of(cfg: &BackupConfiguration) -> Option<(Schedule, chrono::Duration)> {
    if cfg.metadata.deletion_timestamp.is_some() || cfg.spec.paused {
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

/// Runs the clock until `shutdown`. `updates` yields every configuration
/// of `ctx.configs` once its cache is filled, then each one that changes.
pub async fn run(
    ctx: Arc<Context>,
    updates: impl Stream<Item = Arc<BackupConfiguration>> + Send,
    shutdown: CancellationToken,
) {
    let mut clock = Clock {
        heap: BinaryHeap::new(),
        planned: HashMap::new(),
        fire: Arc::new(Semaphore::new(FIRE_CONCURRENCY)),
        record: Arc::new(Semaphore::new(RECORD_CONCURRENCY)),
    };
    // Ticks to look at again after a failed attempt; at most one message
    // per failed tick, so bounded by the number of configurations.
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Key>();
    let mut updates = std::pin::pin!(updates);
    loop {
        let wake = clock.heap.peek().map(|Reverse(due)| due.at);
        let sleep = async move {
            match wake {
                Some(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            update = updates.next() => match update {
                Some(cfg) => clock.consider(&ctx, ObjectRef::from_obj(cfg.as_ref()), &retry_tx),
                None => return,
            },
            Some(key) = retry_rx.recv() => clock.consider(&ctx, key, &retry_tx),
            () = sleep => {
                let now = Utc::now();
                while clock.heap.peek().is_some_and(|Reverse(due)| due.at <= now) {
                    let Some(Reverse(Due { at, key })) = clock.heap.pop() else { break };
                    // Entries superseded by a later plan are left in the heap
                    // and dropped here.
                    if clock.planned.get(&key) == Some(&at) {
                        clock.planned.remove(&key);
                        clock.consider(&ctx, key, &retry_tx);
                    }
                }
            }
        }
    }
}

/// The clock's state.
struct Clock {
    /// Configurations by the moment their next tick falls due (earliest
    /// first); may hold superseded entries.
    heap: BinaryHeap<Reverse<Due>>,
    /// The current heap entry of each configuration.
    planned: HashMap<Key, DateTime<Utc>>,
    /// Bounds the sessions being created.
    fire: Arc<Semaphore>,
    /// Bounds the Events and status writes that follow.
    record: Arc<Semaphore>,
}

impl Clock {
    /// Fires the tick of `key` that is due, if any, and plans its next one.
    fn consider(&mut self, ctx: &Arc<Context>, key: Key, retry: &mpsc::UnboundedSender<Key>) {
        let Some(cfg) = ctx.configs.get(&key) else {
            self.planned.remove(&key);
            ctx.ticks.remove(&key);
            return;
        };
        let Some((schedule, jitter)) = clock_of(&cfg) else {
            self.planned.remove(&key);
            return;
        };
        let now = Utc::now();
        let (due, next) = plan(&schedule, jitter, last_handled(&cfg, &ctx.ticks, now), now);
        if let Some(tick) = due {
            ctx.ticks.record(key.clone(), tick);
            let (ctx, fire, record, retry, key) = (
                ctx.clone(),
                self.fire.clone(),
                self.record.clone(),
                retry.clone(),
                key.clone(),
            );
            let pending = ctx.firing.pending();
            tokio::spawn(async move {
                let result = {
                    let _pending = pending;
                    let Ok(_permit) = fire.acquire_owned().await else {
                        return;
                    };
                    scheduler::fire_tick(&ctx, &cfg, tick).await
                };
                match result {
                    Ok(Some(fired)) => {
                        let Ok(_permit) = record.acquire_owned().await else {
                            return;
                        };
                        ctx.firing.yield_to_ticks().await;
                        fired.record(&ctx, &cfg).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(config = %key, %tick, error = %e, "cannot fire a tick; trying again");
                        ctx.metrics
                            .reconcile_errors
                            .with_label_values(&["Tick", e.metric_label()])
                            .inc();
                        ctx.ticks.forget(&key, tick);
                        tokio::time::sleep(RETRY).await;
                        let _ = retry.send(key);
                    }
                }
            });
        }
        match next {
            Some(at) if self.planned.get(&key) != Some(&at) => {
                self.planned.insert(key.clone(), at);
                self.heap.push(Reverse(Due { at, key }));
            }
            Some(_) => {}
            None => {
                self.planned.remove(&key);
            }
        }
    }
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
