//! The `config` file: repository version, id and chunker polynomial.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::format::chunker::ChunkerParams;
use crate::format::chunker::Polynomial;

/// The decrypted `config` file. It is never compressed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Repository format version, 1 or 2.
    pub version: u32,
    /// Random repository id (64 hex digits).
    pub id: String,
    /// restic's Rabin chunker polynomial, in hex without `0x`. restic
    /// refuses a repository whose polynomial is not irreducible of degree 53.
    pub chunker_polynomial: String,
    /// Stash's chunker parameters; restic ignores extra fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stash_chunker: Option<ChunkerParams>,
}

impl Config {
    /// A new config for a repository of `version` with a random id and a
    /// random irreducible polynomial.
    pub fn new(version: u32) -> Result<Config> {
        if !(1..=2).contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        Ok(Config {
            version,
            id: crate::format::id::Id::random().to_hex(),
            chunker_polynomial: format!("{:x}", Polynomial::random().0),
            stash_chunker: Some(ChunkerParams::default()),
        })
    }

    /// Parses and validates the decrypted JSON.
    pub fn from_json(data: &[u8]) -> Result<Config> {
        let c: Config = serde_json::from_slice(data).map_err(|source| Error::Json {
            what: "config".into(),
            source,
        })?;
        if !(1..=2).contains(&c.version) {
            return Err(Error::UnsupportedVersion { version: c.version });
        }
        let pol = u64::from_str_radix(&c.chunker_polynomial, 16)
            .map_err(|_| Error::format("config", "chunker_polynomial is not hex"))?;
        if !Polynomial(pol).is_irreducible() || Polynomial(pol).degree() != 53 {
            return Err(Error::format(
                "config",
                "chunker_polynomial is not an irreducible polynomial of degree 53",
            ));
        }
        if let Some(p) = &c.stash_chunker {
            if p.algorithm != "fastcdc-v2020" {
                return Err(Error::format(
                    "config",
                    format!("unknown chunker algorithm {:?}", p.algorithm),
                ));
            }
            if !(p.min_size <= p.avg_size && p.avg_size <= p.max_size && p.min_size >= 64) {
                return Err(Error::format(
                    "config",
                    "stash_chunker sizes are inconsistent",
                ));
            }
        }
        Ok(c)
    }

    /// JSON bytes to encrypt.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("config serializes")
    }

    /// The chunker parameters in force (defaults for repositories made by restic).
    pub fn chunker(&self) -> ChunkerParams {
        self.stash_chunker.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_config_validates_and_round_trips() {
        let c = Config::new(2).unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
        assert!(Config::new(3).is_err());
    }

    #[test]
    fn reads_a_restic_config() {
        // restic's test polynomial 0x3DA3358B4DC173.
        let j = br#"{"version":2,"id":"5ee5ba6b6e4e3e3da3d8f7f1b0d6f0b4ad3fba2b6e7c0e5f8c69e6bdb6ffcb51","chunker_polynomial":"3da3358b4dc173"}"#;
        let c = Config::from_json(j).unwrap();
        assert_eq!(c.version, 2);
        assert_eq!(c.chunker(), ChunkerParams::default());
        let bad = br#"{"version":2,"id":"x","chunker_polynomial":"3da3358b4dc172"}"#;
        assert!(Config::from_json(bad).is_err());
    }
}
