//! Content-defined chunking.
//!
//! Stash cuts files with FastCDC (2020), seeded from the repository key so
//! chunk boundaries do not leak content. The config file still has to carry
//! a Rabin polynomial, because restic refuses to open a repository without a
//! valid one; [`Polynomial`] makes and checks those.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// The content-defined chunker Stash uses for this repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Algorithm; only `fastcdc-v2020` exists.
    pub algorithm: String,
    /// Minimum chunk size.
    pub min_size: u32,
    /// Average (target) chunk size.
    pub avg_size: u32,
    /// Maximum chunk size.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // Close to restic's Rabin chunker: 512 KiB / 1 MiB / 8 MiB.
        ChunkerParams {
            algorithm: "fastcdc-v2020".into(),
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
        }
    }
}

/// A polynomial over GF(2) of degree < 64, bit i = coefficient of x^i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polynomial(pub u64);

impl Polynomial {
    /// Degree, or -1 for the zero polynomial.
    pub fn degree(self) -> i32 {
        63 - self.0.leading_zeros() as i32
    }

    /// A random irreducible polynomial of degree 53, as restic makes them.
    pub fn random() -> Polynomial {
        loop {
            let mut f: u64 = rand::random();
            f &= (1u64 << 54) - 1;
            f |= (1u64 << 53) | 1;
            if Polynomial(f).is_irreducible() {
                return Polynomial(f);
            }
        }
    }

    /// Ben-Or's irreducibility test: f of degree d is irreducible iff
    /// gcd(f, x^(2^i) - x mod f) = 1 for every 1 <= i <= d/2.
    pub fn is_irreducible(self) -> bool {
        let d = self.degree();
        if d < 1 {
            return false;
        }
        let mut q: u64 = 0b10; // x
        for _ in 1..=d / 2 {
            q = mulmod(q, q, self.0);
            if gcd(self.0, q ^ 0b10) != 1 {
                return false;
            }
        }
        true
    }
}

fn clmul(a: u64, b: u64) -> u128 {
    let mut r = 0u128;
    let a = a as u128;
    for i in 0..64 {
        if (b >> i) & 1 == 1 {
            r ^= a << i;
        }
    }
    r
}

fn modp(mut a: u128, m: u64) -> u64 {
    let dm = 63 - m.leading_zeros() as i32;
    while a != 0 {
        let da = 127 - a.leading_zeros() as i32;
        if da < dm {
            break;
        }
        a ^= (m as u128) << (da - dm);
    }
    a as u64
}

fn mulmod(a: u64, b: u64, m: u64) -> u64 {
    modp(clmul(a, b), m)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = modp(a as u128, b);
        a = b;
        b = r;
    }
    a
}

/// Large block buffers kept for the next file: allocating and freeing
/// 16 MiB per large file makes the allocator keep freed memory around.
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Buffers of at least this size are pooled.
const POOLED: usize = 1 << 20;
/// At most this many buffers wait in the pool.
const POOL_MAX: usize = 4;

fn take_buffer(cap: usize) -> Vec<u8> {
    if cap >= POOLED {
        let mut pool = BUFFERS.lock().expect("buffer pool");
        if let Some(i) = pool.iter().position(|b| b.capacity() >= cap) {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity(cap)
}

fn return_buffer(mut buf: Vec<u8>) {
    if buf.capacity() >= POOLED {
        buf.clear();
        let mut pool = BUFFERS.lock().expect("buffer pool");
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}

/// A block of a stream and its chunks as `(offset, length)` in it.
pub type Block<'a> = (&'a [u8], Vec<(usize, usize)>);

/// Reads a stream in large blocks and cuts each block into chunks.
///
/// The chunks of a block are borrowed from one buffer, so they can be hashed,
/// compressed and encrypted in parallel without copying. The last chunk of a
/// block may be cut short by the block's end, so it is carried over and
/// re-cut with the next block: chunk boundaries depend only on the data, and
/// are the same as cutting the whole stream at once.
pub struct BlockChunker<R: Read> {
    reader: R,
    params: ChunkerParams,
    seed: u64,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` handed out by the last block.
    consumed: usize,
    block: usize,
    eof: bool,
}

impl<R: Read> BlockChunker<R> {
    /// A chunker over `reader`; `size_hint` (the file size) keeps the
    /// buffer small for small files.
    pub fn new(reader: R, params: &ChunkerParams, seed: u64, size_hint: u64) -> Self {
        let block = (8usize << 20).max(params.max_size as usize);
        let cap = (size_hint as usize)
            .saturating_add(1)
            .min(block + params.max_size as usize);
        BlockChunker {
            reader,
            params: params.clone(),
            seed,
            buf: take_buffer(cap),
            consumed: 0,
            block,
            eof: false,
        }
    }

    /// Overrides the block size (at least the maximum chunk size).
    #[must_use]
    pub fn with_block_size(mut self, block: usize) -> Self {
        self.block = block.max(self.params.max_size as usize);
        self
    }

    /// The next block and its chunks as `(offset, length)` in it; `None`
    /// at the end of the stream.
    pub fn next_block(&mut self) -> std::io::Result<Option<Block<'_>>> {
        // Carry the unconsumed tail to the front: at most one chunk.
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        if !self.eof {
            // A whole block after the carried tail: unless the stream ends,
            // the buffer then holds at least one maximum-size chunk, so
            // every block makes progress.
            let want = self.block as u64;
            let n = (&mut self.reader).take(want).read_to_end(&mut self.buf)?;
            self.eof = (n as u64) < want;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut cuts = cut_slice(&self.buf, &self.params, self.seed);
        if !self.eof && cuts.len() > 1 {
            cuts.pop(); // may end at the block's end, not at a real boundary
        }
        self.consumed = cuts.last().map(|(o, l)| o + l).unwrap_or(0);
        Ok(Some((&self.buf[..self.consumed], cuts)))
    }
}

impl<R: Read> Drop for BlockChunker<R> {
    fn drop(&mut self) {
        return_buffer(std::mem::take(&mut self.buf));
    }
}

/// Cuts an in-memory buffer; yields `(offset, length)` pairs.
pub fn cut_slice(data: &[u8], params: &ChunkerParams, seed: u64) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::with_level_and_seed(
        data,
        params.min_size,
        params.avg_size,
        params.max_size,
        fastcdc::v2020::Normalization::Level1,
        seed,
    )
    .map(|c| (c.offset, c.length))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_test_polynomial_is_irreducible() {
        assert!(Polynomial(0x3DA3358B4DC173).is_irreducible());
        assert_eq!(Polynomial(0x3DA3358B4DC173).degree(), 53);
        // x^2 + 1 = (x+1)^2 is reducible, x^2 + x + 1 is not.
        assert!(!Polynomial(0b101).is_irreducible());
        assert!(Polynomial(0b111).is_irreducible());
        // A product of two irreducibles is reducible.
        let p = modp(clmul(0b111, 0b1011), u64::MAX);
        assert!(!Polynomial(p).is_irreducible());
    }

    #[test]
    fn random_polynomials_have_degree_53() {
        for _ in 0..3 {
            let p = Polynomial::random();
            assert_eq!(p.degree(), 53);
            assert!(p.is_irreducible());
        }
    }

    #[test]
    fn stream_and_slice_cut_alike_and_the_seed_matters() {
        let mut data = vec![0u8; 6 << 20];
        let mut x = 0x1234_5678_9abc_def0u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let p = ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
            ..ChunkerParams::default()
        };
        let a = cut_slice(&data, &p, 7);
        // Small reads make blocks end anywhere: the cuts must not change.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7919).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut s = Vec::new();
        let mut bc = BlockChunker::new(Trickle(&data), &p, 7, 0).with_block_size(600 << 10);
        while let Some((block, cuts)) = bc.next_block().unwrap() {
            assert_eq!(cuts.last().map(|(o, l)| o + l), Some(block.len()));
            s.extend(cuts.iter().map(|c| c.1));
        }
        assert_eq!(a.iter().map(|c| c.1).collect::<Vec<_>>(), s);
        assert_eq!(s.iter().sum::<usize>(), data.len());
        assert_ne!(cut_slice(&data, &p, 8), a);
    }
}
