//! Retrying what may pass: server errors (5xx), throttling (429/503),
//! timeouts and broken connections are retried with capped exponential
//! backoff and jitter; everything else (403, a missing bucket, wrong
//! credentials, a file that is not there) fails at once, so that a
//! configuration mistake costs seconds, not minutes.
//!
//! Every backend call is safe to repeat: reads, lists and stats change
//! nothing, files are written whole under content-addressed names (a repeat
//! stores the same bytes), and removing is only repeated after a failure
//! that may or may not have removed the file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{RequestError, RequestErrorKind};
use super::{Backend, FileInfo, FileType};
use crate::error::{Error, Result};

/// When and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff; each following one doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest single backoff.
    pub max_backoff: Duration,
    /// No new attempt starts after this long since the first.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Ten attempts over at most about a minute and a half of backing off
    /// (0.25 s doubling to 16 s, jittered), and no new attempt after five
    /// minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(16),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (`attempt` counts from 1):
    /// "equal jitter", half of the exponential step plus a random part of
    /// the other half, so that clients that failed together do not return
    /// together, and no pause is near zero.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
        let step = exp.min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Wraps a backend with retries of transient failures.
#[derive(Debug)]
pub struct RetryBackend {
    /// The backend that does the work.
    inner: Arc<dyn Backend>,
    /// When to retry.
    policy: RetryPolicy,
    /// Whether the server has answered at least once. Until it has, a
    /// connection that cannot be made means a wrong endpoint (fail fast);
    /// afterwards it means a server that went away for a moment (retry).
    reached: AtomicBool,
}

impl RetryBackend {
    /// `inner` with retries as `policy` says.
    pub fn new(inner: Arc<dyn Backend>, policy: RetryPolicy) -> RetryBackend {
        RetryBackend {
            inner,
            policy,
            reached: AtomicBool::new(false),
        }
    }

    fn run<T>(&self, op: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let err = match f() {
                Ok(v) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let kind = RequestError::of(&err).map(|r| r.kind);
            if kind.is_some_and(|k| k != RequestErrorKind::Connect) {
                self.reached.store(true, Ordering::Relaxed);
            }
            let retry = match kind {
                Some(RequestErrorKind::Transient) => true,
                Some(RequestErrorKind::Connect) => self.reached.load(Ordering::Relaxed),
                Some(RequestErrorKind::Permanent) | None => false,
            };
            if !retry {
                return Err(err);
            }
            if attempt >= self.policy.max_attempts || start.elapsed() >= self.policy.max_elapsed {
                return Err(gave_up(err, attempt, start.elapsed()));
            }
            let pause = self.policy.backoff(attempt);
            tracing::warn!(
                "{op} failed (attempt {attempt} of {}), retrying in {:.1} s: {err}",
                self.policy.max_attempts,
                pause.as_secs_f64()
            );
            std::thread::sleep(pause);
            attempt += 1;
        }
    }
}

/// The last error, saying that it was the last of several.
fn gave_up(err: Error, attempts: u32, elapsed: Duration) -> Error {
    match err {
        Error::Backend {
            op,
            location,
            source,
        } => {
            let kind = source.kind();
            Error::Backend {
                op,
                location,
                source: std::io::Error::new(
                    kind,
                    format!(
                        "{source} (gave up after {attempts} attempts in {:.0} s)",
                        elapsed.as_secs_f64()
                    ),
                ),
            }
        }
        e => e,
    }
}

impl Backend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.run("create", || self.inner.create())
    }
    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>> {
        self.run("list", || self.inner.list(tpe))
    }
    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        self.run("read", || self.inner.read(tpe, name))
    }
    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        self.run("read", || self.inner.read_range(tpe, name, offset, length))
    }
    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()> {
        self.run("write", || self.inner.write(tpe, name, data))
    }
    fn remove(&self, tpe: FileType, name: &str) -> Result<()> {
        let mut first = true;
        self.run("remove", || {
            let r = self.inner.remove(tpe, name);
            // A retried remove that finds nothing: the failed attempt did it.
            let r = match r {
                Err(Error::NotFound { .. }) if !first => Ok(()),
                r => r,
            };
            first = false;
            r
        })
    }
    fn exists(&self, tpe: FileType, name: &str) -> Result<bool> {
        self.run("stat", || self.inner.exists(tpe, name))
    }
    fn connections(&self) -> usize {
        self.inner.connections()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use super::*;

    /// Fails `read` with the queued errors, then succeeds.
    #[derive(Debug, Default)]
    struct Flaky {
        errors: Mutex<Vec<RequestErrorKind>>,
        calls: AtomicU32,
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn create(&self) -> Result<()> {
            Ok(())
        }
        fn list(&self, _: FileType) -> Result<Vec<FileInfo>> {
            Ok(Vec::new())
        }
        fn read(&self, _: FileType, name: &str) -> Result<Vec<u8>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.errors.lock().unwrap().pop() {
                Some(kind) => Err(RequestError::new(kind, "boom").into_error("read", name)),
                None => Ok(b"ok".to_vec()),
            }
        }
        fn read_range(&self, t: FileType, n: &str, _: u64, _: u32) -> Result<Vec<u8>> {
            self.read(t, n)
        }
        fn write(&self, _: FileType, _: &str, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn remove(&self, _: FileType, _: &str) -> Result<()> {
            Ok(())
        }
        fn exists(&self, _: FileType, _: &str) -> Result<bool> {
            Ok(true)
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        max_elapsed: Duration::from_secs(10),
    };

    fn flaky(errors: &[RequestErrorKind]) -> (Arc<Flaky>, RetryBackend) {
        let f = Arc::new(Flaky::default());
        // Popped from the end: reverse so that they come in the given order.
        *f.errors.lock().unwrap() = errors.iter().rev().copied().collect();
        let r = RetryBackend::new(f.clone(), FAST);
        (f, r)
    }

    use RequestErrorKind::*;

    #[test]
    fn transient_failures_are_retried() {
        let (f, r) = flaky(&[Transient, Transient, Transient]);
        assert_eq!(r.read(FileType::Pack, "p").unwrap(), b"ok");
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn retries_end_and_say_so() {
        let (f, r) = flaky(&[Transient; 6]);
        let e = r.read(FileType::Pack, "p").unwrap_err().to_string();
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
        assert!(e.contains("boom (gave up after 4 attempts"), "{e}");
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let (f, r) = flaky(&[Permanent]);
        let e = r.read(FileType::Pack, "p").unwrap_err();
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        assert_eq!(e.to_string(), "read p: boom");
    }

    #[test]
    fn connection_failures_are_retried_only_once_the_server_answered() {
        let (f, r) = flaky(&[Connect]);
        assert!(r.read(FileType::Pack, "p").is_err());
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        // The server answers; from now on it may only be restarting.
        assert!(r.read(FileType::Pack, "p").is_ok());
        f.errors.lock().unwrap().extend([Connect, Connect]);
        assert_eq!(r.read(FileType::Pack, "p").unwrap(), b"ok");
        assert_eq!(f.calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 1..30 {
            let step = p
                .initial_backoff
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(p.max_backoff);
            let b = p.backoff(attempt);
            assert!(b >= step / 2 && b <= step, "attempt {attempt}: {b:?}");
        }
        let many: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(8)).collect();
        assert!(many.len() > 1, "no jitter");
    }
}
