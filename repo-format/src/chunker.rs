//! Content-defined chunking.
//!
//! Stash cuts files with FastCDC (2020), seeded from the repository key so
//! chunk boundaries do not leak content. The config file still has to carry
//! a Rabin polynomial, because restic refuses to open a repository without a
//! valid one; [`Polynomial`] makes and checks those.

use std::io::Read;

use crate::repofile::config::ChunkerParams;

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

/// Cuts a stream into chunks with FastCDC. Each chunk comes with its bytes.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader` with the repository's parameters and seed.
    pub fn new(reader: R, params: &ChunkerParams, seed: u64) -> Self {
        Chunker {
            inner: fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                params.min_size,
                params.avg_size,
                params.max_size,
                fastcdc::v2020::Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
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
        let s: Vec<usize> = Chunker::new(&data[..], &p, 7)
            .map(|c| c.unwrap().len())
            .collect();
        assert_eq!(a.iter().map(|c| c.1).collect::<Vec<_>>(), s);
        assert_eq!(s.iter().sum::<usize>(), data.len());
        assert_ne!(cut_slice(&data, &p, 8), a);
    }
}
