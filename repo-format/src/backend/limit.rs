//! A bound on concurrent requests (`--connections N`): object stores and
//! REST servers throttle clients that open too many connections, and a
//! small server is faster with a few requests in flight than with many.

use std::sync::{Arc, Condvar, Mutex};

use super::{Backend, FileInfo, FileType};
use crate::error::Result;

/// Wraps a backend so that at most `n` of its calls run at once; the others
/// wait their turn.
#[derive(Debug)]
pub struct LimitedBackend {
    /// The backend that does the work.
    inner: Arc<dyn Backend>,
    /// The bound.
    limit: usize,
    /// Calls running now.
    running: Mutex<usize>,
    /// Signalled when a call ends.
    freed: Condvar,
}

/// A running call's permit; dropping it lets the next one in.
struct Permit<'a>(&'a LimitedBackend);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.0.freed.notify_one();
    }
}

impl LimitedBackend {
    /// `inner` with at most `limit` (at least 1) calls at once.
    pub fn new(inner: Arc<dyn Backend>, limit: usize) -> LimitedBackend {
        LimitedBackend {
            inner,
            limit: limit.max(1),
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn permit(&self) -> Permit<'_> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.limit {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Permit(self)
    }
}

impl Backend for LimitedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        let _p = self.permit();
        self.inner.create()
    }
    fn list(&self, tpe: FileType) -> Result<Vec<FileInfo>> {
        let _p = self.permit();
        self.inner.list(tpe)
    }
    fn read(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        let _p = self.permit();
        self.inner.read(tpe, name)
    }
    fn read_range(&self, tpe: FileType, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        let _p = self.permit();
        self.inner.read_range(tpe, name, offset, length)
    }
    fn write(&self, tpe: FileType, name: &str, data: &[u8]) -> Result<()> {
        let _p = self.permit();
        self.inner.write(tpe, name, data)
    }
    fn remove(&self, tpe: FileType, name: &str) -> Result<()> {
        let _p = self.permit();
        self.inner.remove(tpe, name)
    }
    fn exists(&self, tpe: FileType, name: &str) -> Result<bool> {
        let _p = self.permit();
        self.inner.exists(tpe, name)
    }
    fn connections(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts the calls inside `read` at once and remembers the most.
    #[derive(Debug, Default)]
    struct Slow {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Backend for Slow {
        fn location(&self) -> String {
            "slow".into()
        }
        fn create(&self) -> Result<()> {
            Ok(())
        }
        fn list(&self, _: FileType) -> Result<Vec<FileInfo>> {
            Ok(Vec::new())
        }
        fn read(&self, _: FileType, _: &str) -> Result<Vec<u8>> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(Vec::new())
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

    #[test]
    fn no_more_than_the_limit_run_at_once() {
        let slow = Arc::new(Slow::default());
        let limited = Arc::new(LimitedBackend::new(slow.clone(), 3));
        assert_eq!(limited.connections(), 3);
        std::thread::scope(|s| {
            for _ in 0..12 {
                let l = limited.clone();
                s.spawn(move || {
                    for _ in 0..3 {
                        l.read(FileType::Pack, "x").unwrap();
                    }
                });
            }
        });
        assert_eq!(slow.most.load(Ordering::SeqCst), 3);
        assert_eq!(*limited.running.lock().unwrap(), 0);
    }
}
