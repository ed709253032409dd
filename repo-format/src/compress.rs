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
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        match &mut *c {
            Some((l, cctx)) if *l == level => cctx.compress(data),
            slot => {
                let mut cctx = zstd::bulk::Compressor::new(level)?;
                let out = cctx.compress(data);
                *slot = Some((level, cctx));
                out
            }
        }
    })
}

/// Decompresses one zstd frame of at most `capacity` bytes.
pub fn decompress(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set above").decompress(data, capacity)
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
