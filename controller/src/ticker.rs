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
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use stash_api::BackupConfiguration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::scheduler;
use crate::Context;

/// Sessions being created at once.
pub const FIRE_CONCURRENCY: usize = 32;
/// Events and status writes after a session was created, at once.
pub const RECORD_CONCURRENCY: usize = 8;
/// How long a tick whose session could not be created waits to try again.
const RETRY: Duration = Duration::from_secs(5);

use crate::clock::{clock_of, last_handled, plan, Key};

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
