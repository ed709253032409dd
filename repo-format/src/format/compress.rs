//! zstd with one compression and one decompression context per thread.
//!
//! A fresh context per blob costs more than it seems: zstd clears its match
//! tables (about a megabyte at level 3) for every new context, which showed
//! as a fifth of a backup's CPU time. Worker threads live as long as the
//! pool, so a context per thread is allocated once.

use std::cell::RefCell;
use std::io;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` into a zstd frame at `level`.
pub fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    compress_into(data, level, &mut out)?;
    Ok(out)
}

/// Compresses `data` into `out` (replacing its content, reusing its memory).
pub fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let cctx = match &mut *c {
            Some((l, cctx)) if *l == level => cctx,
            slot => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        cctx.compress_to_buffer(data, out).map(|_| ())
    })
}

/// Decompresses one zstd frame of at most `capacity` bytes.
pub fn decompress(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(data, capacity, &mut out)?;
    Ok(out)
}

/// Decompresses into `out` (replacing its content, reusing its memory).
pub fn decompress_into(data: &[u8], capacity: usize, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.reserve(capacity);
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let dctx = match &mut *d {
            Some(dctx) => dctx,
            slot => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        dctx.decompress_to_buffer(data, out).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_with_reused_contexts() {
        for level in [1, 3, 3, 19, 3] {
            let data = format!("level {level} ").repeat(10_000).into_bytes();
            let c = super::compress(&data, level).unwrap();
            assert!(c.len() < data.len() / 10);
            assert_eq!(super::decompress(&c, data.len()).unwrap(), data);
        }
        assert!(super::decompress(b"not zstd", 100).is_err());
    }
}
