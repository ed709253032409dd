//! An HTTP proxy that answers a share of requests with `503 Service
//! Unavailable` instead of passing them on: the server errors toxiproxy
//! (which works on TCP, below HTTP) cannot make. Used with toxiproxy's
//! latency and connection resets in the fault-injection tests.
//!
//! One request per connection: each request is read whole, then either
//! refused (503, nothing reaches the server) or sent to the upstream with
//! `Connection: close`, and the answer copied back until the upstream
//! closes. Which requests fail is decided by a seeded counter, so a run is
//! repeatable in how many it refuses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests read.
    pub requests: AtomicU64,
    /// Requests answered with 503.
    pub refused: AtomicU64,
}

impl Stats {
    /// Requests read and requests refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
        )
    }
}

/// The running proxy; stops when dropped.
pub struct FaultyHttp {
    /// The loopback port it listens on.
    pub port: u16,
    /// Counts.
    pub stats: Arc<Stats>,
    /// Set to stop the accept loop.
    stop: Arc<AtomicBool>,
    /// The accept loop.
    thread: Option<JoinHandle<()>>,
}

impl FaultyHttp {
    /// A proxy to `127.0.0.1:upstream` refusing about `percent` % of the
    /// requests.
    pub fn start(upstream: u16, percent: u64, seed: u64) -> FaultyHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || {
                let counter = Arc::new(AtomicU64::new(seed));
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (stats, counter) = (stats.clone(), counter.clone());
                    std::thread::spawn(move || {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let refuse = splitmix64(n) % 100 < percent;
                        // Errors here are the faults of the test's own
                        // making (resets downstream of toxiproxy); the
                        // client sees a broken connection, which is the point.
                        let _ = handle(conn, upstream, refuse, &stats);
                    });
                }
            })
        };
        FaultyHttp {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FaultyHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Serves one request on `conn`.
fn handle(conn: TcpStream, upstream: u16, refuse: bool, stats: &Stats) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    // The request head, with our Connection header instead of the client's.
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // The client closed without a request.
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if !first && lower.starts_with("connection:") {
            continue;
        }
        first = false;
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut b = vec![0u8; content_length];
        reader.read_exact(&mut b)?;
        b
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let mut client = conn;
    if refuse {
        stats.refused.fetch_add(1, Ordering::SeqCst);
        client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
              Content-Length: 26\r\nConnection: close\r\n\r\ninjected by the test proxy",
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(Shutdown::Both)
}

/// A chunked body, raw (chunk sizes and all), through the final chunk.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        out.extend_from_slice(size_line.as_bytes());
        let size =
            usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0").trim(), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut l = String::new();
                reader.read_line(&mut l)?;
                out.extend_from_slice(l.as_bytes());
                if l == "\r\n" || l.is_empty() {
                    return Ok(out);
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk)?;
        out.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot upstream that answers every request with "hello".
    fn upstream() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            }
        });
        port
    }

    fn get(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn refuses_about_the_share_asked_and_passes_the_rest() {
        let proxy = FaultyHttp::start(upstream(), 30, 7);
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..100 {
            let r = get(proxy.port);
            if r.starts_with("HTTP/1.1 200") && r.ends_with("hello") {
                ok += 1;
            } else if r.starts_with("HTTP/1.1 503") {
                refused += 1;
            } else {
                panic!("unexpected answer {r:?}");
            }
        }
        assert_eq!(ok + refused, 100);
        assert!((15..=45).contains(&refused), "refused {refused} of 100");
        assert_eq!(proxy.stats.refused.load(Ordering::SeqCst), refused);
        assert_eq!(proxy.stats.requests.load(Ordering::SeqCst), 100);
    }
}
