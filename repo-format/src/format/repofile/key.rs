//! Key files (`keys/<id>`): plain JSON holding the scrypt parameters and the
//! master key encrypted with the key derived from the password.

use chrono::{DateTime, FixedOffset};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::crypto::{Key, KeyJson};

/// scrypt work parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// CPU/memory cost, a power of two.
    pub n: u64,
    /// Block size.
    pub r: u32,
    /// Parallelism.
    pub p: u32,
}

impl KdfParams {
    /// Cheap parameters for tests (never for real repositories).
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        n: 1024,
        r: 8,
        p: 1,
    };

    /// Chooses parameters taking about `target` on this machine, the way
    /// restic calibrates: N grows while memory stays under 64 MiB, then p.
    pub fn calibrate(target: std::time::Duration) -> KdfParams {
        let mut params = KdfParams {
            n: 1 << 14,
            r: 8,
            p: 1,
        };
        let start = std::time::Instant::now();
        let _ = derive(b"calibration", &[0u8; 64], params);
        let took = start.elapsed().max(std::time::Duration::from_micros(100));
        let mut factor = target.as_secs_f64() / took.as_secs_f64();
        while factor >= 2.0 && params.n < (1 << 15) {
            params.n *= 2;
            factor /= 2.0;
        }
        if factor > 1.5 {
            params.p = (factor.round() as u32).clamp(1, 16);
        }
        params
    }

    /// The most memory one derivation may take (scrypt needs 128·r·N
    /// bytes). restic calibrates to at most 60 MiB; the parameters come
    /// from a key file in the repository, and without a bound a crafted
    /// N = 2^40 would make scrypt allocate a PiB and abort the process.
    pub const MAX_MEMORY: u64 = 1 << 30;

    /// The most work one derivation may take, as memory times p (about a
    /// quarter of a minute of scrypt on today's machines).
    pub const MAX_WORK: u64 = 16 << 30;

    /// Refuses parameters scrypt cannot use (N not a power of two above 1,
    /// r or p zero) and those above [`Self::MAX_MEMORY`] or
    /// [`Self::MAX_WORK`].
    pub fn check(self) -> Result<()> {
        let memory = 128u64
            .checked_mul(u64::from(self.r))
            .and_then(|m| m.checked_mul(self.n));
        let within = memory.is_some_and(|m| {
            m <= Self::MAX_MEMORY && m.saturating_mul(u64::from(self.p)) <= Self::MAX_WORK
        });
        if self.n < 2 || !self.n.is_power_of_two() || self.r == 0 || self.p == 0 || !within {
            return Err(Error::Kdf {
                n: self.n,
                r: self.r,
                p: self.p,
            });
        }
        Ok(())
    }

    fn log_n(self) -> Result<u8> {
        self.check()?;
        Ok(self.n.trailing_zeros() as u8)
    }
}

/// Derives the 64-byte user key (encryption key, MAC k, MAC r) from a password.
pub fn derive(password: &[u8], salt: &[u8], params: KdfParams) -> Result<Key> {
    let bad = || Error::Kdf {
        n: params.n,
        r: params.r,
        p: params.p,
    };
    let p = scrypt::Params::new(params.log_n()?, params.r, params.p, 64).map_err(|_| bad())?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &p, &mut out).map_err(|_| bad())?;
    Ok(Key::from_slice(&out))
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The JSON content of a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// When the key was added. restic always writes it; rustic leaves it
    /// out (with `username` and `hostname`), and restic accepts that, so a
    /// missing time reads as Go's zero time.
    #[serde(
        with = "crate::format::repofile::gotime",
        default = "crate::format::repofile::gotime::zero"
    )]
    pub created: DateTime<FixedOffset>,
    /// User who added it (optional, and `null` reads as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub username: String,
    /// Host it was added on (optional, and `null` reads as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub hostname: String,
    /// Always `scrypt`.
    pub kdf: String,
    /// scrypt N.
    #[serde(rename = "N")]
    pub n: u64,
    /// scrypt r.
    pub r: u32,
    /// scrypt p.
    pub p: u32,
    /// 64 random bytes.
    #[serde(with = "crate::format::repofile::b64")]
    pub salt: Vec<u8>,
    /// The encrypted master key JSON.
    #[serde(with = "crate::format::repofile::b64")]
    pub data: Vec<u8>,
}

impl KeyFile {
    /// Wraps `master` in a new key file protected by `password`.
    pub fn create(
        master: &Key,
        password: &[u8],
        params: KdfParams,
        username: &str,
        hostname: &str,
    ) -> Result<KeyFile> {
        let mut salt = vec![0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let user_key = derive(password, &salt, params)?;
        let plain = serde_json::to_vec(&master.to_json()).expect("key json");
        Ok(KeyFile {
            created: chrono::Local::now().fixed_offset(),
            username: username.into(),
            hostname: hostname.into(),
            kdf: "scrypt".into(),
            n: params.n,
            r: params.r,
            p: params.p,
            salt,
            data: user_key.encrypt(&plain),
        })
    }

    /// Parses a key file.
    pub fn from_json(data: &[u8], name: &str) -> Result<KeyFile> {
        let k: KeyFile = serde_json::from_slice(data).map_err(|source| Error::Json {
            what: format!("key file {name}"),
            source,
        })?;
        if k.kdf != "scrypt" {
            return Err(Error::format(
                format!("key file {name}"),
                format!("unknown kdf {:?}", k.kdf),
            ));
        }
        Ok(k)
    }

    /// The bytes stored in the backend (their SHA-256 is the file name).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key file json")
    }

    /// The KDF parameters of this key.
    pub fn params(&self) -> KdfParams {
        KdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        }
    }

    /// Opens the master key with `password`. A wrong password shows as
    /// [`Error::Mac`].
    pub fn open(&self, password: &[u8], name: &str) -> Result<Key> {
        let user_key = derive(password, &self.salt, self.params())?;
        let plain = user_key.decrypt(&self.data, &|| format!("key file {name}"))?;
        let j: KeyJson = serde_json::from_slice(&plain).map_err(|source| Error::Json {
            what: format!("master key in key file {name}"),
            source,
        })?;
        Key::from_json(&j, &format!("key file {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_opens_with_its_password_only() {
        let master = Key::random();
        let kf =
            KeyFile::create(&master, b"geheim", KdfParams::INSECURE_FOR_TESTS, "u", "h").unwrap();
        let parsed = KeyFile::from_json(&kf.to_json(), "k").unwrap();
        assert_eq!(parsed.salt.len(), 64);
        assert_eq!(parsed.open(b"geheim", "k").unwrap(), master);
        assert!(matches!(parsed.open(b"wrong", "k"), Err(Error::Mac { .. })));
    }

    /// A key file is repository bytes: its scrypt parameters must not make
    /// opening allocate without bound (N = 2^40 asked scrypt for a PiB,
    /// which aborts the process) or run for hours (a huge p). Restic's own
    /// parameters and our calibrated ones stay accepted.
    #[test]
    fn key_file_with_unbounded_scrypt_parameters_is_refused() {
        let master = Key::random();
        let kf =
            KeyFile::create(&master, b"geheim", KdfParams::INSECURE_FOR_TESTS, "u", "h").unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&kf.to_json()).unwrap();
        for (n, r, p) in [
            (1u64 << 40, 8u32, 1u32),
            (1 << 62, 1 << 20, 1),
            (1 << 20, 8, 1 << 20),
            (1 << 23, 8, 2),
            (3, 8, 1),
        ] {
            v["N"] = n.into();
            v["r"] = r.into();
            v["p"] = p.into();
            let parsed = KeyFile::from_json(&serde_json::to_vec(&v).unwrap(), "k").unwrap();
            let start = std::time::Instant::now();
            assert!(
                matches!(parsed.open(b"geheim", "k"), Err(Error::Kdf { .. })),
                "N={n} r={r} p={p}"
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(1));
        }
        for ok in [
            KdfParams {
                n: 1 << 15,
                r: 8,
                p: 1,
            },
            KdfParams {
                n: 1 << 15,
                r: 8,
                p: 16,
            },
            KdfParams {
                n: 1 << 20,
                r: 8,
                p: 1,
            },
            KdfParams::INSECURE_FOR_TESTS,
        ] {
            ok.check().unwrap();
        }
    }

    /// rustic writes key files without `created`, `username` and
    /// `hostname` (restic accepts them); they must open.
    #[test]
    fn key_file_without_optional_fields_opens() {
        let master = Key::random();
        let kf =
            KeyFile::create(&master, b"geheim", KdfParams::INSECURE_FOR_TESTS, "u", "h").unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&kf.to_json()).unwrap();
        for field in ["created", "username", "hostname"] {
            v.as_object_mut().unwrap().remove(field).unwrap();
        }
        let parsed = KeyFile::from_json(&serde_json::to_vec(&v).unwrap(), "k").unwrap();
        assert_eq!(parsed.created, crate::format::repofile::gotime::zero());
        assert_eq!(parsed.open(b"geheim", "k").unwrap(), master);
        v["username"] = serde_json::Value::Null;
        v["hostname"] = serde_json::Value::Null;
        let parsed = KeyFile::from_json(&serde_json::to_vec(&v).unwrap(), "k").unwrap();
        assert_eq!(parsed.username, "");
    }

    #[test]
    fn scrypt_matches_rfc7914_vector() {
        // RFC 7914 test vector 2: P="password", S="NaCl", N=1024, r=8, p=16.
        let k = derive(
            b"password",
            b"NaCl",
            KdfParams {
                n: 1024,
                r: 8,
                p: 16,
            },
        )
        .unwrap();
        let expect = "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640";
        let mut all = Vec::new();
        // Re-derive the 64 bytes through encryption-independent parts.
        let j = k.to_json();
        all.extend_from_slice(&j_bytes(&j));
        assert_eq!(hex::encode(all), expect);
    }

    fn j_bytes(j: &KeyJson) -> Vec<u8> {
        let v = serde_json::to_value(j).unwrap();
        use base64::Engine;
        let d = |s: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap())
                .unwrap()
        };
        let mut out = d(&v["encrypt"]);
        out.extend(d(&v["mac"]["k"]));
        out.extend(d(&v["mac"]["r"]));
        out
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(derive(
            b"x",
            b"y",
            KdfParams {
                n: 1000,
                r: 8,
                p: 1
            }
        )
        .is_err());
    }
}
