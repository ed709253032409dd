//! A repository opened with a key: reading and writing its files and blobs.

pub mod index;
pub mod lock;
pub mod packer;
pub mod writer;

use std::sync::{Arc, RwLock};

use rayon::prelude::*;

use crate::backend::{Backend, FileType};
use crate::error::{Error, Result};
use crate::format::crypto::Key;
use crate::format::id::Id;
use crate::format::repofile::key::KdfParams;
use crate::format::repofile::{BlobType, Config, IndexFile, KeyFile, Snapshot, Tree};
use crate::repository::index::{BlobLocation, Index};
use crate::repository::writer::{seal_unpacked, BlobWriter, WriteOptions, WriteStats};

/// A snapshot with its id.
pub type LoadedSnapshot = (Id, Snapshot);

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Key,
    config: Config,
    key_name: String,
    index: Arc<RwLock<Index>>,
    writer: BlobWriter,
}

/// The user name and host name of this process, for key, lock and snapshot files.
pub fn whoami() -> (String, String) {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    (user, host)
}

impl Repository {
    /// Creates a new repository of `version` in an empty backend location.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        version: u32,
        kdf: KdfParams,
    ) -> Result<Repository> {
        if backend.exists(FileType::Config, "config")? {
            return Err(Error::AlreadyInitialized {
                location: backend.location(),
            });
        }
        let config = Config::new(version)?;
        let key = Key::random();
        backend.create()?;
        let (user, host) = whoami();
        let kf = KeyFile::create(&key, password, kdf, &user, &host)?;
        let kbytes = kf.to_json();
        let key_name = Id::hash(&kbytes).to_hex();
        backend.write(FileType::Key, &key_name, &kbytes)?;
        // The config is encrypted but never compressed.
        backend.write(FileType::Config, "config", &key.encrypt(&config.to_json()))?;
        tracing::info!(location = %backend.location(), version, "initialized repository");
        Ok(Self::new(backend, key, config, key_name))
    }

    fn new(backend: Arc<dyn Backend>, key: Key, config: Config, key_name: String) -> Repository {
        let index = Arc::new(RwLock::new(Index::new()));
        let writer = BlobWriter::new(
            backend.clone(),
            key.clone(),
            config.version,
            index.clone(),
            WriteOptions::default(),
        );
        Repository {
            backend,
            key,
            config,
            key_name,
            index,
            writer,
        }
    }

    /// Opens a repository: finds a key file the password opens, then reads the config.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let config_ct = match backend.read(FileType::Config, "config") {
            Ok(c) => c,
            Err(Error::NotFound { .. }) => {
                return Err(Error::NoRepository {
                    location: backend.location(),
                })
            }
            Err(e) => return Err(e),
        };
        let keys = backend.list(FileType::Key)?;
        if keys.is_empty() {
            return Err(Error::NoKeys {
                location: backend.location(),
            });
        }
        let mut tried = 0;
        for k in &keys {
            let bytes = backend.read(FileType::Key, &k.name)?;
            let kf = match KeyFile::from_json(&bytes, &k.name) {
                Ok(kf) => kf,
                Err(e) => {
                    tracing::warn!(key = %k.name, error = %e, "skipping unreadable key file");
                    continue;
                }
            };
            tried += 1;
            match kf.open(password, &k.name) {
                Ok(key) => {
                    let plain = key.decrypt(&config_ct, &|| "config".into())?;
                    let config = Config::from_json(&plain)?;
                    tracing::debug!(key = %k.name, version = config.version, "opened repository");
                    return Ok(Self::new(backend, key, config, k.name.clone()));
                }
                Err(Error::Mac { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::WrongPassword { tried })
    }

    /// Overrides the write settings (compression is forced off for
    /// version 1). Call before writing anything.
    pub fn set_write_options(&mut self, opts: WriteOptions) {
        self.writer = BlobWriter::new(
            self.backend.clone(),
            self.key.clone(),
            self.config.version,
            self.index.clone(),
            opts,
        );
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The name of the key file that opened the repository.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// Adds a key file for another password.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        let (user, host) = whoami();
        let kf = KeyFile::create(&self.key, password, kdf, &user, &host)?;
        let b = kf.to_json();
        let name = Id::hash(&b).to_hex();
        self.backend.write(FileType::Key, &name, &b)?;
        Ok(name)
    }

    /// Reads, verifies and decrypts an unpacked file (snapshot, index,
    /// lock), decompressing version-2 content.
    pub fn load_unpacked(&self, tpe: FileType, name: &str) -> Result<Vec<u8>> {
        let data = self.backend.read(tpe, name)?;
        let actual = Id::hash(&data);
        if actual.to_hex() != name {
            return Err(Error::HashMismatch {
                file_type: tpe,
                name: name.into(),
                actual,
            });
        }
        let plain = self.key.decrypt(&data, &|| format!("{tpe} file {name}"))?;
        decode_unpacked(plain, &format!("{tpe} file {name}"))
    }

    /// Compresses (v2), encrypts and stores an unpacked file; returns its id.
    pub fn save_unpacked(&self, tpe: FileType, json: &[u8]) -> Result<Id> {
        let ct = seal_unpacked(
            &self.key,
            self.writer.unpacked_level(),
            json,
            &format!("{tpe} file"),
        )?;
        let id = Id::hash(&ct);
        self.backend.write(tpe, &id.to_hex(), &ct)?;
        Ok(id)
    }

    /// Lists the ids of files of a kind (names that are not ids are skipped).
    pub fn list_ids(&self, tpe: FileType) -> Result<Vec<Id>> {
        Ok(self
            .backend
            .list(tpe)?
            .into_iter()
            .filter_map(|f| Id::from_hex(&f.name))
            .collect())
    }

    /// Resolves a unique hex prefix among the files of a kind.
    pub fn find_id(&self, tpe: FileType, prefix: &str) -> Result<Id> {
        if let Some(id) = Id::from_hex(prefix) {
            return Ok(id);
        }
        let prefix = prefix.to_ascii_lowercase();
        let matches: Vec<Id> = self
            .list_ids(tpe)?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&prefix))
            .collect();
        match matches.len() {
            1 => Ok(matches[0]),
            0 => Err(Error::Ambiguous {
                what: format!("no {tpe} file matches {prefix:?}"),
            }),
            n => Err(Error::Ambiguous {
                what: format!("{n} {tpe} files match the prefix {prefix:?}; give more digits"),
            }),
        }
    }

    /// Reads every index file into memory. Damaged index files are errors.
    /// Call it once, before writing.
    pub fn load_index(&self) -> Result<()> {
        self.load_index_files().map(drop)
    }

    /// Like [`Repository::load_index`], and returns the index files read,
    /// with their ids, for callers that need every location of every blob
    /// (the in-memory index keeps one).
    pub fn load_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let ids = self.list_ids(FileType::Index)?;
        let files: Vec<(Id, IndexFile)> = ids
            .par_iter()
            .map(|id| {
                let name = id.to_hex();
                let plain = self.load_unpacked(FileType::Index, &name)?;
                Ok((*id, IndexFile::from_json(&plain, &name)?))
            })
            .collect::<Result<_>>()?;
        let loaded = Index::from_files(files.iter().map(|(_, f)| f));
        let mut idx = self.index.write().expect("index lock");
        if !idx.is_empty() {
            // Replacing would forget blobs this process wrote.
            return Err(Error::InvalidArgument(
                "the index must be loaded before anything is written".into(),
            ));
        }
        *idx = loaded;
        tracing::debug!(
            blobs = idx.len(),
            memory = idx.memory_bytes(),
            "loaded index"
        );
        Ok(files)
    }

    /// Replaces the in-memory index by an empty one (after a rewrite of the
    /// index files, or to free its memory).
    pub fn clear_index(&self) {
        *self.index.write().expect("index lock") = Index::new();
    }

    /// Read access to the in-memory index.
    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    /// Adds the blobs of an index file just written to the in-memory index.
    pub(crate) fn add_index_file(&self, f: &IndexFile) {
        self.index.write().expect("index lock").add_file(f);
    }

    /// Where a blob is stored.
    pub fn blob_location(&self, tpe: BlobType, id: &Id) -> Option<BlobLocation> {
        self.index().get(tpe, id)
    }

    /// Loads, verifies and decompresses one blob.
    pub fn load_blob(&self, tpe: BlobType, id: &Id) -> Result<Vec<u8>> {
        let loc = self
            .blob_location(tpe, id)
            .ok_or(Error::BlobNotFound { tpe, id: *id })?;
        let ct = self.backend.read_range(
            FileType::Pack,
            &loc.pack.to_hex(),
            u64::from(loc.offset),
            loc.length,
        )?;
        self.decode_blob(tpe, id, &loc, &ct)
    }

    /// Decrypts, decompresses and verifies a blob read from `loc`.
    pub fn decode_blob(
        &self,
        tpe: BlobType,
        id: &Id,
        loc: &BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        open_blob(&self.key, tpe, id, loc, ct)
    }

    /// Loads and parses a tree.
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let b = self.load_blob(BlobType::Tree, id)?;
        Tree::from_json(&b, id)
    }

    /// Loads one snapshot.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let name = id.to_hex();
        Snapshot::from_json(&self.load_unpacked(FileType::Snapshot, &name)?, &name)
    }

    /// Loads every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let ids = self.list_ids(FileType::Snapshot)?;
        let mut v: Vec<(Id, Snapshot)> = ids
            .par_iter()
            .map(|id| Ok((*id, self.load_snapshot(id)?)))
            .collect::<Result<_>>()?;
        v.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(v)
    }

    /// Loads every snapshot that can be read, oldest first, and names the
    /// damaged ones with why, the way restic's listings do: a snapshot
    /// file that does not decrypt, hash or parse costs only itself. Storage
    /// errors (the backend failing to read) still fail the whole listing,
    /// so that a flaky connection is never mistaken for missing snapshots.
    /// For listings and restores only: what deletes data (prune, forget)
    /// must see every snapshot and uses [`Repository::snapshots`].
    pub fn snapshots_readable(&self) -> Result<ReadableSnapshots> {
        let ids = self.list_ids(FileType::Snapshot)?;
        let loaded: Vec<(Id, Result<Snapshot>)> = ids
            .par_iter()
            .map(|id| (*id, self.load_snapshot(id)))
            .collect();
        let mut out = ReadableSnapshots::default();
        for (id, r) in loaded {
            match r {
                Ok(s) => out.snapshots.push((id, s)),
                // Removed meanwhile (a concurrent forget): not damage.
                Err(Error::NotFound { .. }) => {}
                Err(e @ (Error::Backend { .. } | Error::Cancelled)) => return Err(e),
                Err(e) => out.unreadable.push((id, e)),
            }
        }
        out.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        out.unreadable.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Finds a snapshot by full id, unique prefix or `latest` (the latest
    /// readable one: damaged snapshot files are skipped with a warning; see
    /// [`Repository::find_snapshot_readable`] to learn which).
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let (found, skipped) = self.find_snapshot_readable(spec)?;
        for (id, e) in &skipped {
            tracing::warn!(snapshot = %id, error = %e, "could not load snapshot");
        }
        Ok(found)
    }

    /// Like [`Repository::find_snapshot`], and returns the damaged
    /// snapshot files `latest` skipped.
    pub fn find_snapshot_readable(&self, spec: &str) -> Result<(LoadedSnapshot, Vec<(Id, Error)>)> {
        if spec == "latest" {
            let mut all = self.snapshots_readable()?;
            return match all.snapshots.pop() {
                Some(s) => Ok((s, all.unreadable)),
                None if all.unreadable.is_empty() => Err(Error::Ambiguous {
                    what: "the repository has no snapshots".into(),
                }),
                None => Err(Error::Ambiguous {
                    what: format!(
                        "the repository has no readable snapshots ({} damaged: {})",
                        all.unreadable.len(),
                        all.unreadable
                            .iter()
                            .map(|(id, e)| format!("{id}: {e}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                }),
            };
        }
        self.find_snapshot_by_id(spec).map(|f| (f, Vec::new()))
    }

    fn find_snapshot_by_id(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let id = self.find_id(FileType::Snapshot, spec)?;
        match self.load_snapshot(&id) {
            Err(Error::NotFound { .. }) => Err(Error::Ambiguous {
                what: format!("no snapshot {spec}"),
            }),
            r => Ok((id, r?)),
        }
    }

    /// Stores a blob unless the repository already has it. Returns the id
    /// and whether it was new. Safe to call from many threads.
    pub fn save_blob(&self, tpe: BlobType, data: &[u8]) -> Result<(Id, bool)> {
        let id = Id::hash(data);
        self.writer.save(tpe, id, data).map(|new| (id, new))
    }

    /// Uploads open packs, waits for all uploads and writes the index for
    /// them. Call before writing a snapshot that refers to the blobs.
    pub fn flush(&self) -> Result<()> {
        self.writer.flush()
    }

    /// What this process has added so far.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Stores a blob already compressed (if `uncompressed_length` is set)
    /// and encrypted with this repository's key, unless the repository has
    /// it. The caller vouches that `sealed` decrypts to the blob `id`.
    pub fn save_sealed_blob(
        &self,
        tpe: BlobType,
        id: Id,
        sealed: &[u8],
        uncompressed_length: Option<u32>,
    ) -> Result<bool> {
        self.writer
            .save_sealed(tpe, id, sealed, uncompressed_length)
    }

    /// A writer of its own with an empty index: it writes every blob it is
    /// given, even those the repository has (prune moves blobs this way).
    pub(crate) fn separate_writer(&self, opts: WriteOptions) -> BlobWriter {
        BlobWriter::new(
            self.backend.clone(),
            self.key.clone(),
            self.config.version,
            Arc::new(RwLock::new(Index::new())),
            opts,
        )
    }

    /// What the repository holds, from two listings (no file is read):
    /// cheap enough for a status report after every backup.
    pub fn stats(&self) -> Result<RepositoryStats> {
        let snapshots = self.backend.list(FileType::Snapshot)?.len() as u64;
        let packs = self.backend.list(FileType::Pack)?;
        Ok(RepositoryStats {
            snapshots,
            packs: packs.len() as u64,
            pack_bytes: packs.iter().map(|p| p.size).sum(),
        })
    }
}

/// The snapshots that load and those that do not, see
/// [`Repository::snapshots_readable`].
#[derive(Debug, Default)]
pub struct ReadableSnapshots {
    /// The readable snapshots, oldest first.
    pub snapshots: Vec<(Id, Snapshot)>,
    /// The damaged snapshot files and why they do not load, by id.
    pub unreadable: Vec<(Id, Error)>,
}

/// Size of a repository, see [`Repository::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepositoryStats {
    /// Number of snapshot files.
    pub snapshots: u64,
    /// Number of pack files.
    pub packs: u64,
    /// Total size of the pack files in bytes (the bulk of the repository).
    pub pack_bytes: u64,
}

/// Decrypts, decompresses and verifies a blob read from `loc`.
///
/// Public for the fuzz targets (`fuzz/`) only: callers go through
/// [`Repository::decode_blob`].
#[doc(hidden)]
pub fn open_blob(
    key: &Key,
    tpe: BlobType,
    id: &Id,
    loc: &BlobLocation,
    ct: &[u8],
) -> Result<Vec<u8>> {
    let what = || {
        format!(
            "{tpe} blob {id} in pack {} at offset {}",
            loc.pack, loc.offset
        )
    };
    let mut plain = key.decrypt(ct, &what)?;
    if let Some(u) = loc.uncompressed_length {
        check_blob_size(tpe, u, &what)?;
        plain = crate::format::compress::decompress(&plain, u as usize).map_err(|source| {
            Error::Compression {
                what: what(),
                source,
            }
        })?;
        if plain.len() != u as usize {
            return Err(Error::format(
                what(),
                "decompressed length differs from the index",
            ));
        }
    }
    let actual = Id::hash(&plain);
    if actual != *id {
        return Err(Error::BlobHashMismatch {
            id: *id,
            pack: loc.pack,
            actual,
        });
    }
    Ok(plain)
}

/// The largest a repository file other than a pack may be once
/// decompressed. restic's biggest are index files of at most 50 000 blobs
/// (about 10 MiB of JSON); a crafted file that inflates past this (a zstd
/// bomb) is refused instead of exhausting memory.
pub const MAX_UNPACKED_SIZE: u64 = 256 << 20;

/// The largest a data blob may be decompressed: chunks are at most 8 MiB.
pub const MAX_DATA_BLOB_SIZE: u32 = 64 << 20;

/// The largest a tree blob may be decompressed (a directory of about a
/// million entries).
pub const MAX_TREE_BLOB_SIZE: u32 = 512 << 20;

/// Refuses a blob whose index entry declares more than its type's bound
/// (the memory a decompression may take).
pub(crate) fn check_blob_size(tpe: BlobType, u: u32, what: &dyn Fn() -> String) -> Result<()> {
    let max = match tpe {
        BlobType::Data => MAX_DATA_BLOB_SIZE,
        BlobType::Tree => MAX_TREE_BLOB_SIZE,
    };
    if u > max {
        return Err(Error::format(
            what(),
            format!("the index says it decompresses to {u} bytes, more than the {max} a {tpe} blob may have"),
        ));
    }
    Ok(())
}

/// Interprets a decrypted unpacked file: `0x02 ‖ zstd` (version 2) or
/// plain JSON (`{` / `[`).
///
/// Public for the fuzz targets (`fuzz/`) only: callers go through
/// [`Repository::load_unpacked`].
#[doc(hidden)]
pub fn decode_unpacked(plain: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    match plain.first() {
        Some(b'{') | Some(b'[') => Ok(plain),
        Some(2) => {
            use std::io::Read;
            let compression = |source| Error::Compression {
                what: what.into(),
                source,
            };
            let mut out = Vec::new();
            zstd::stream::Decoder::new(&plain[1..])
                .map_err(compression)?
                .take(MAX_UNPACKED_SIZE + 1)
                .read_to_end(&mut out)
                .map_err(compression)?;
            if out.len() as u64 > MAX_UNPACKED_SIZE {
                return Err(Error::format(
                    what,
                    format!("decompresses to more than {MAX_UNPACKED_SIZE} bytes (the limit for a file other than a pack)"),
                ));
            }
            Ok(out)
        }
        Some(b) => Err(Error::format(
            what,
            format!("unknown content version byte 0x{b:02x}"),
        )),
        None => Err(Error::format(what, "empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    fn repo(version: u32) -> (tempfile::TempDir, Repository) {
        let d = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("r")));
        let r = Repository::init(b, b"pw", version, KdfParams::INSECURE_FOR_TESTS).unwrap();
        (d, r)
    }

    #[test]
    fn init_open_and_wrong_password() {
        let (d, r) = repo(2);
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("r")));
        let r2 = Repository::open(b.clone(), b"pw").unwrap();
        assert_eq!(r2.config(), r.config());
        assert!(matches!(
            Repository::open(b.clone(), b"nope"),
            Err(Error::WrongPassword { tried: 1 })
        ));
        r.add_key(b"second", KdfParams::INSECURE_FOR_TESTS).unwrap();
        assert!(Repository::open(b.clone(), b"second").is_ok());
        assert!(matches!(
            Repository::init(b, b"pw", 2, KdfParams::INSECURE_FOR_TESTS),
            Err(Error::AlreadyInitialized { .. })
        ));
        let missing: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("none")));
        assert!(matches!(
            Repository::open(missing, b"pw"),
            Err(Error::NoRepository { .. })
        ));
    }

    #[test]
    fn blobs_round_trip_through_packs_and_index() {
        for version in [1, 2] {
            let (d, mut r) = repo(version);
            r.set_write_options(WriteOptions {
                pack_size: 4096,
                ..WriteOptions::default()
            });
            let mut ids = Vec::new();
            for i in 0..50u32 {
                let mut data = format!("blob {i} ").repeat(i as usize * 20).into_bytes();
                if i % 2 == 1 {
                    // Incompressible: stored without compression.
                    data = (0..i * 100)
                        .flat_map(|j| Id::hash(&j.to_le_bytes()).0)
                        .collect();
                }
                let (id, new) = r.save_blob(BlobType::Data, &data).unwrap();
                assert!(new);
                assert!(!r.save_blob(BlobType::Data, &data).unwrap().1);
                ids.push((id, data));
            }
            r.flush().unwrap();
            let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("r")));
            let r2 = Repository::open(b.clone(), b"pw").unwrap();
            r2.load_index().unwrap();
            for (id, data) in &ids {
                assert_eq!(&r2.load_blob(BlobType::Data, id).unwrap(), data);
                let loc = r2.blob_location(BlobType::Data, id).unwrap();
                let compressible = data.len() > 100 && data.starts_with(b"blob");
                assert_eq!(
                    loc.uncompressed_length.is_some(),
                    version == 2 && compressible
                );
            }
            assert!(b.list(FileType::Pack).unwrap().len() > 1);
        }
    }

    #[test]
    fn unpacked_files_are_compressed_in_v2_only() {
        for version in [1, 2] {
            let (_d, r) = repo(version);
            let json = br#"{"packs":[]}"#;
            let id = r.save_unpacked(FileType::Index, json).unwrap();
            let raw = r.backend().read(FileType::Index, &id.to_hex()).unwrap();
            let plain = r.key().decrypt(&raw, &|| "x".into()).unwrap();
            assert_eq!(plain[0] == 2, version == 2);
            assert_eq!(
                r.load_unpacked(FileType::Index, &id.to_hex()).unwrap(),
                json
            );
        }
    }

    /// One damaged snapshot file costs only itself: the listing and
    /// `latest` skip it and name it; `snapshots()` (for prune) still fails.
    #[test]
    fn damaged_snapshot_costs_only_itself() {
        let (d, r) = repo(2);
        let tree = Id::hash(b"tree");
        let mut ids = Vec::new();
        for t in ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"] {
            let s = Snapshot {
                time: chrono::DateTime::parse_from_rfc3339(t).unwrap(),
                parent: None,
                tree,
                paths: vec!["/p".into()],
                hostname: "h".into(),
                username: String::new(),
                uid: 0,
                gid: 0,
                excludes: vec![],
                tags: vec![],
                original: None,
                program_version: String::new(),
                summary: None,
            };
            ids.push(r.save_unpacked(FileType::Snapshot, &s.to_json()).unwrap());
        }
        // Damage the newest.
        let p = d.path().join("r/snapshots").join(ids[1].to_hex());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[20] ^= 1;
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let all = r.snapshots_readable().unwrap();
        assert_eq!(all.snapshots.len(), 1);
        assert_eq!(all.snapshots[0].0, ids[0]);
        assert_eq!(all.unreadable.len(), 1);
        assert_eq!(all.unreadable[0].0, ids[1]);
        let ((latest, _), skipped) = r.find_snapshot_readable("latest").unwrap();
        assert_eq!(latest, ids[0]);
        assert_eq!(skipped.len(), 1);
        assert!(r.snapshots().is_err());
        assert!(r.find_snapshot(&ids[1].to_hex()).is_err());
    }

    #[test]
    fn damaged_files_are_named() {
        let (d, r) = repo(2);
        let id = r.save_unpacked(FileType::Snapshot, b"{}").unwrap();
        let p = d.path().join("r/snapshots").join(id.to_hex());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[20] ^= 1;
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let e = r
            .load_unpacked(FileType::Snapshot, &id.to_hex())
            .unwrap_err();
        assert!(e.to_string().contains(&id.to_hex()), "{e}");
    }
}
