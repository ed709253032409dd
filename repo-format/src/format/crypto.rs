//! restic's authenticated encryption: AES-256-CTR and Poly1305-AES.
//!
//! Ciphertext layout: `IV (16) ‖ AES-256-CTR(plaintext) ‖ MAC (16)`. The
//! counter is the whole 16-byte IV taken as one big-endian number (Go's
//! `cipher.NewCTR` does this), so `Ctr128BE` and not a 64-bit counter: the two
//! differ only when the low 64 bits wrap, which a random IV makes rare, and
//! that is exactly why a wrong choice would slip through casual tests.
//!
//! The MAC is Poly1305 over the ciphertext only (no IV, no length block), with
//! the one-time key `r ‖ AES-128_k(IV)`. The MAC is checked before anything
//! is decrypted.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle_eq::ct_eq;

use crate::error::{Error, Result};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Bytes added to a plaintext by encryption (IV + MAC).
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 16;

/// A repository master key: 32 bytes AES-256 key, and the Poly1305-AES key
/// (`k` for AES-128, `r` for Poly1305, stored unclamped).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    encrypt: [u8; 32],
    mac_k: [u8; 16],
    mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The JSON form of a master key inside a key file.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeyJson {
    mac: MacJson,
    #[serde(with = "crate::format::repofile::b64")]
    encrypt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct MacJson {
    #[serde(with = "crate::format::repofile::b64")]
    k: Vec<u8>,
    #[serde(with = "crate::format::repofile::b64")]
    r: Vec<u8>,
}

impl Key {
    /// A fresh random master key.
    pub fn random() -> Key {
        let mut b = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Key::from_slice(&b)
    }

    /// Builds a key from 64 bytes: encryption key, then `k`, then `r` (the
    /// order of restic's scrypt output).
    pub fn from_slice(b: &[u8; 64]) -> Key {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        k.encrypt.copy_from_slice(&b[..32]);
        k.mac_k.copy_from_slice(&b[32..48]);
        k.mac_r.copy_from_slice(&b[48..64]);
        k
    }

    /// Builds a key from its three parts.
    pub fn from_parts(encrypt: [u8; 32], mac_k: [u8; 16], mac_r: [u8; 16]) -> Key {
        Key {
            encrypt,
            mac_k,
            mac_r,
        }
    }

    pub(crate) fn to_json(&self) -> KeyJson {
        KeyJson {
            mac: MacJson {
                k: self.mac_k.to_vec(),
                r: self.mac_r.to_vec(),
            },
            encrypt: self.encrypt.to_vec(),
        }
    }

    pub(crate) fn from_json(j: &KeyJson, what: &str) -> Result<Key> {
        let bad = || Error::format(what, "master key has wrong field lengths");
        Ok(Key {
            encrypt: j.encrypt.as_slice().try_into().map_err(|_| bad())?,
            mac_k: j.mac.k.as_slice().try_into().map_err(|_| bad())?,
            mac_r: j.mac.r.as_slice().try_into().map_err(|_| bad())?,
        })
    }

    /// 64 bits derived from the key for seeding the chunker, so that chunk
    /// boundaries (and thus blob sizes) do not reveal content to someone who
    /// does not hold the key. The derivation is one-way.
    pub fn chunker_seed(&self) -> u64 {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(b"stash chunker gear seed v1\0");
        h.extend_from_slice(&self.mac_k);
        h.extend_from_slice(&self.encrypt);
        let d = crate::format::id::Id::hash(&h);
        u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")) | 1
    }

    fn mac(&self, iv: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        // One-time Poly1305 key: r (clamped inside poly1305) ‖ AES-128_k(IV).
        let aes128 = aes::Aes128::new(&self.mac_k.into());
        let mut s = aes::Block::clone_from_slice(iv);
        aes128.encrypt_block(&mut s);
        let mut pk = [0u8; 32];
        pk[..16].copy_from_slice(&self.mac_r);
        pk[16..].copy_from_slice(&s);
        let mac = poly1305::Poly1305::new(&pk.into());
        // Poly1305 over the message as-is (final partial block with the
        // standard 0x01 terminator, no zero padding), which is what
        // `compute_unpadded` does.
        mac.compute_unpadded(ciphertext).into()
    }

    /// Encrypts `plaintext` with a fresh random IV and appends
    /// `IV ‖ ciphertext ‖ MAC` to `out`.
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut iv = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        self.encrypt_with_iv(&iv, plaintext, out);
    }

    /// Encrypts with a given IV. Only for tests and known-answer checks:
    /// an IV must never repeat under one key.
    pub fn encrypt_with_iv(&self, iv: &[u8; 16], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(iv);
        out.extend_from_slice(plaintext);
        let mut c = Aes256Ctr::new(&self.encrypt.into(), iv.into());
        c.apply_keystream(&mut out[start + IV_LEN..]);
        let tag = self.mac(iv, &out[start + IV_LEN..]);
        out.extend_from_slice(&tag);
    }

    /// Encrypts `plaintext` into a new buffer.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, &mut out);
        out
    }

    /// Checks the MAC of `data` (`IV ‖ ciphertext ‖ MAC`) and decrypts it.
    /// `what` names the object in the error.
    pub fn decrypt(&self, data: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_into(data, what, &mut out)?;
        Ok(out)
    }

    /// Like [`Key::decrypt`], into `out` (replacing its content, reusing its memory).
    pub fn decrypt_into(
        &self,
        data: &[u8],
        what: &dyn Fn() -> String,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if data.len() < OVERHEAD {
            return Err(Error::Ciphertext {
                what: what(),
                reason: "shorter than IV and MAC",
            });
        }
        let iv: [u8; 16] = data[..IV_LEN].try_into().expect("16 bytes");
        let (ct, tag) = data[IV_LEN..].split_at(data.len() - OVERHEAD);
        let expected = self.mac(&iv, ct);
        if !ct_eq(&expected, tag) {
            return Err(Error::Mac { what: what() });
        }
        out.clear();
        out.extend_from_slice(ct);
        let mut c = Aes256Ctr::new(&self.encrypt.into(), (&iv).into());
        c.apply_keystream(out);
        Ok(())
    }
}

/// Constant-time comparison, so that a MAC check does not leak how many
/// leading bytes matched.
mod subtle_eq {
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut d = 0u8;
        for (x, y) in a.iter().zip(b) {
            d |= x ^ y;
        }
        std::hint::black_box(d) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // Known answers from restic's own crypto tests.
    #[test]
    fn decrypts_restic_test_vector() {
        let key = Key::from_parts(
            h("303e8687b1d7db18421bdc6bb8588ccadac4d59ee87b8ff70c44e635790cafef")
                .try_into()
                .unwrap(),
            h("ef4d8824cb80b2bcc5fbff8a9b12a42c").try_into().unwrap(),
            h("cc8d4b948ee0ebfe1d415de921d10353").try_into().unwrap(),
        );
        let ct = h("69fb41c62d12def4593bd71757138606338f621aeaeb39da0fe4f99233f8037a54ea63338a813bcf3f75d8c3cc75dddf8750");
        let pt = key.decrypt(&ct, &|| "vector".into()).unwrap();
        assert_eq!(pt, b"Dies ist ein Test!");
        // Re-encrypting with the same IV gives the same bytes.
        let mut out = Vec::new();
        key.encrypt_with_iv(ct[..16].try_into().unwrap(), &pt, &mut out);
        assert_eq!(out, ct);
    }

    #[test]
    fn poly1305_aes_vectors_from_the_paper() {
        // (msg, r, k, nonce, mac) from http://cr.yp.to/mac/poly1305-20050329.pdf, as in restic.
        let cases = [
            ("f3f6", "851fc40c3467ac0be05cc20404f3f700", "ec074c835580741701425b623235add6", "fb447350c4e868c52ac3275cf9d4327e", "f4c633c3044fc145f84f335cb81953de"),
            ("", "a0f3080000f46400d0c7e9076c834403", "75deaa25c09f208e1dc4ce6b5cad3fbf", "61ee09218d29b0aaed7e154a2c5509cc", "dd3fab2251f11ac759f0887129cc2ee7"),
            ("663cea190ffb83d89593f3f476b6bc24d7e679107ea26adb8caf6652d0656136", "48443d0bb0d21109c89a100b5ce2c208", "6acb5f61a7176dd320c5c1eb2edcdc74", "ae212a55399729595dea458bc621ff0e", "0ee1c16bb73f0f4fd19881753c01cdbe"),
            ("ab0812724a7f1e342742cbed374d94d136c6b8795d45b3819830f2c04491faf0990c62e48b8018b2c3e4a0fa3134cb67fa83e158c994d961c4cb21095c1bf9", "12976a08c4426d0ce8a82407c4f48207", "e1a5668a4d5b66a5f68cc5424ed5982d", "9ae831e743978d3a23527c7128149e3a", "5154ad0d2cb26e01274fc51148491f1b"),
        ];
        for (msg, r, k, nonce, mac) in cases {
            let key = Key::from_parts([0; 32], h(k).try_into().unwrap(), h(r).try_into().unwrap());
            let got = key.mac(&h(nonce).try_into().unwrap(), &h(msg));
            assert_eq!(hex::encode(got), mac);
        }
    }

    #[test]
    fn counter_carries_across_the_low_64_bits() {
        // IV whose low 64 bits are all ones: the second block's counter must
        // carry into the high half (Go's CTR does; a 64-bit counter would wrap).
        let key = Key::random();
        let mut iv = [0u8; 16];
        iv[8..].fill(0xff);
        iv[7] = 0x41;
        let mut out = Vec::new();
        key.encrypt_with_iv(&iv, &[0u8; 32], &mut out);
        let aes = aes::Aes256::new(&key.encrypt.into());
        let mut next = [0u8; 16];
        next[7] = 0x42;
        let mut b1 = aes::Block::clone_from_slice(&iv);
        aes.encrypt_block(&mut b1);
        let mut b2 = aes::Block::clone_from_slice(&next);
        aes.encrypt_block(&mut b2);
        assert_eq!(&out[16..32], b1.as_slice());
        assert_eq!(&out[32..48], b2.as_slice());
    }

    #[test]
    fn tampering_is_detected_before_decryption() {
        let key = Key::random();
        let mut ct = key.encrypt(b"hello world, this is a test of tampering");
        for i in [0, 5, 16, 20, ct.len() - 1] {
            ct[i] ^= 0x10;
            assert!(
                matches!(key.decrypt(&ct, &|| "x".into()), Err(Error::Mac { .. })),
                "byte {i}"
            );
            ct[i] ^= 0x10;
        }
        assert!(key.decrypt(&ct, &|| "x".into()).is_ok());
        assert!(matches!(
            key.decrypt(&ct[..20], &|| "x".into()),
            Err(Error::Ciphertext { .. })
        ));
        let other = Key::random();
        assert!(other.decrypt(&ct, &|| "x".into()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let key = Key::random();
            let ct = key.encrypt(&data);
            proptest::prop_assert_eq!(ct.len(), data.len() + OVERHEAD);
            proptest::prop_assert_eq!(key.decrypt(&ct, &|| "x".into()).unwrap(), data);
        }
    }
}
