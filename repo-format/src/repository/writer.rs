//! Writing blobs: deduplicate, compress, encrypt, verify, collect into
//! packs, upload, index.
//!
//! Callers (many threads at once) hand in plaintext blobs; compression and
//! encryption run on the caller's thread, outside any lock. A full pack is
//! passed through a bounded queue to a small pool of uploader threads, which
//! finish it (header, hash), write it to the backend, and only then make its
//! blobs visible in the index. The bounded queue is the backpressure that
//! keeps memory flat: at most one filling pack per blob type, `queue` packs
//! waiting and one pack per uploader are held at any time.
//!
//! Order on disk is restic's: packs first, then the index files naming them
//! (written by [`BlobWriter::flush`] and whenever enough blobs are pending),
//! and only after that, by the caller, a snapshot referring to them.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::{Backend, FileType};
use crate::error::{Error, Result};
use crate::format::crypto::Key;
use crate::format::id::Id;
use crate::format::repofile::{BlobType, IndexBlob, IndexFile, IndexPack};
use crate::repository::index::{BlobLocation, Index};
use crate::repository::packer::Packer;

/// How blobs and files are compressed (repository version 2 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store everything uncompressed.
    Off,
    /// zstd level 3, skipping data a quick sample shows does not compress.
    #[default]
    Auto,
    /// zstd level 1.
    Fastest,
    /// zstd level 9.
    Better,
    /// zstd level 19.
    Max,
}

impl Compression {
    /// The zstd level, or `None` for no compression.
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::Off => None,
            Compression::Fastest => Some(1),
            Compression::Auto => Some(3),
            Compression::Better => Some(9),
            Compression::Max => Some(19),
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "off" => Compression::Off,
            "auto" => Compression::Auto,
            "fastest" => Compression::Fastest,
            "better" => Compression::Better,
            "max" => Compression::Max,
            _ => {
                return Err(format!(
                    "compression {s:?}: use auto, off, fastest, better or max"
                ))
            }
        })
    }
}

/// How long uploaded packs may wait for an index file by default.
pub const DEFAULT_INDEX_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Settings for writing.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// A pack is uploaded once its blobs reach this size.
    pub pack_size: usize,
    /// Compression (forced off for version 1 repositories).
    pub compression: Compression,
    /// An index file is written once this many blobs are pending.
    pub index_max_blobs: usize,
    /// ... or once the oldest pending pack was uploaded this long ago, so
    /// that a backup killed after hours of uploads (an agent pod deleted,
    /// a node lost) leaves at most this much work unindexed: the next run,
    /// in any process, reuses the indexed packs without waiting for the
    /// dead run's lock to go stale. restic uses 10 minutes.
    pub index_max_age: Duration,
    /// Uploader threads (concurrent pack uploads).
    pub upload_threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            pack_size: 16 << 20,
            compression: Compression::Auto,
            index_max_blobs: crate::format::repofile::index::INDEX_FILE_MAX_BLOBS,
            index_max_age: DEFAULT_INDEX_MAX_AGE,
            upload_threads: 2,
        }
    }
}

/// Statistics of what a writer added.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    /// Data blobs added.
    pub data_blobs: u64,
    /// Tree blobs added.
    pub tree_blobs: u64,
    /// Plaintext bytes added.
    pub data_added: u64,
    /// Stored bytes added (compressed and encrypted).
    pub data_added_packed: u64,
}

/// Packs being filled, blobs not yet visible in the index, and packs
/// uploaded but not yet named by an index file.
#[derive(Debug, Default)]
struct WriteState {
    data: Option<Packer>,
    tree: Option<Packer>,
    /// Blobs accepted but not yet in the index (in a packer or uploading).
    in_flight: HashSet<(BlobType, Id)>,
    /// Packs uploaded since the last index file.
    pending: Vec<IndexPack>,
    /// Blobs in `pending`.
    pending_blobs: usize,
    /// When the first pack in `pending` was uploaded.
    pending_since: Option<Instant>,
}

/// What the uploader threads share with the writer.
#[derive(Debug)]
struct Shared {
    backend: Arc<dyn Backend>,
    key: Key,
    /// zstd level for index files (`None`: repository version 1).
    unpacked_level: Option<i32>,
    index: Arc<RwLock<Index>>,
    state: Mutex<WriteState>,
    stats: Mutex<WriteStats>,
    /// The first upload failure; every later call fails with it.
    error: Mutex<Option<String>>,
    /// Full packs out of their slot (queued or uploading), and the most
    /// allowed: with the slot's own pack, what bounds pack memory.
    uploads: Mutex<usize>,
    /// Signalled when an upload finishes.
    upload_done: std::sync::Condvar,
    /// Buffers of uploaded packs, for the next packs: allocating and
    /// freeing 16 MiB per pack makes the allocator hold freed memory.
    pack_buffers: Mutex<Vec<Vec<u8>>>,
    max_uploads: usize,
    index_max_blobs: usize,
    index_max_age: Duration,
}

#[derive(Debug)]
struct Uploader {
    tx: SyncSender<Packer>,
    threads: Vec<JoinHandle<()>>,
}

/// Writes blobs into a repository; see the module documentation.
#[derive(Debug)]
pub struct BlobWriter {
    shared: Arc<Shared>,
    opts: WriteOptions,
    /// zstd level for blobs (`None`: off or version 1).
    blob_level: Option<i32>,
    uploader: Mutex<Option<Uploader>>,
}

/// `0x02 ‖ zstd(json)` for version 2 with compression, else the JSON as is,
/// then encrypted: the stored form of an unpacked file.
pub(crate) fn seal_unpacked(
    key: &Key,
    level: Option<i32>,
    json: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    let plain = match level {
        Some(level) => {
            let mut v = vec![2u8];
            v.extend(
                crate::format::compress::compress(json, level).map_err(|source| {
                    Error::Compression {
                        what: what.into(),
                        source,
                    }
                })?,
            );
            v
        }
        None => json.to_vec(),
    };
    Ok(key.encrypt(&plain))
}

impl Shared {
    fn fail(&self, e: &Error) {
        let mut slot = self.error.lock().expect("error slot");
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }

    fn check(&self) -> Result<()> {
        match &*self.error.lock().expect("error slot") {
            Some(msg) => Err(Error::format("writing to the repository", msg.clone())),
            None => Ok(()),
        }
    }

    fn upload(&self, p: Packer) -> Result<()> {
        let tpe = p.blob_type();
        let f = p.finish(&self.key);
        let name = f.id.to_hex();
        let size = f.bytes.len();
        let written = self.backend.write(FileType::Pack, &name, &f.bytes);
        let mut bytes = f.bytes;
        if tpe == BlobType::Data {
            bytes.clear();
            let mut pool = self.pack_buffers.lock().expect("pack buffers");
            if pool.len() <= self.max_uploads {
                pool.push(bytes);
            }
        }
        written?;
        tracing::debug!(pack = %name, blobs = f.entries.len(), bytes = size, %tpe, "wrote pack");
        let ipack = IndexPack {
            id: f.id,
            blobs: f.entries.iter().map(IndexBlob::from).collect(),
        };
        {
            let mut idx = self.index.write().expect("index lock");
            for b in &ipack.blobs {
                let loc = BlobLocation {
                    pack: ipack.id,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                };
                idx.add(b.tpe, b.id, loc);
            }
        }
        let flush = {
            let mut w = self.state.lock().expect("write state");
            for e in &f.entries {
                w.in_flight.remove(&(e.tpe, e.id));
            }
            w.pending_blobs += ipack.blobs.len();
            w.pending.push(ipack);
            let since = *w.pending_since.get_or_insert_with(Instant::now);
            if w.pending_blobs >= self.index_max_blobs || since.elapsed() >= self.index_max_age {
                w.pending_blobs = 0;
                w.pending_since = None;
                std::mem::take(&mut w.pending)
            } else {
                Vec::new()
            }
        };
        self.write_index(flush)
    }

    fn write_index(&self, packs: Vec<IndexPack>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let f = IndexFile {
            supersedes: vec![],
            packs,
        };
        let ct = seal_unpacked(&self.key, self.unpacked_level, &f.to_json(), "index file")?;
        let id = Id::hash(&ct);
        self.backend.write(FileType::Index, &id.to_hex(), &ct)?;
        tracing::debug!(index = %id, packs = f.packs.len(), "wrote index");
        Ok(())
    }
}

fn uploader_loop(shared: Arc<Shared>, rx: Arc<Mutex<Receiver<Packer>>>) {
    loop {
        let next = rx.lock().expect("upload queue").recv();
        let Ok(p) = next else { return };
        if shared.error.lock().expect("error slot").is_none() {
            if let Err(e) = shared.upload(p) {
                tracing::error!(error = %e, "pack upload failed");
                shared.fail(&e);
            }
        } // after a failure: drain without writing
        *shared.uploads.lock().expect("uploads") -= 1;
        shared.upload_done.notify_all();
    }
}

impl BlobWriter {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        key: Key,
        version: u32,
        index: Arc<RwLock<Index>>,
        opts: WriteOptions,
    ) -> BlobWriter {
        let level = if version >= 2 {
            opts.compression.level()
        } else {
            None
        };
        let unpacked_level = if version >= 2 {
            Some(level.unwrap_or(3).min(19))
        } else {
            None
        };
        BlobWriter {
            shared: Arc::new(Shared {
                backend,
                key,
                unpacked_level,
                index,
                state: Mutex::new(WriteState::default()),
                stats: Mutex::new(WriteStats::default()),
                error: Mutex::new(None),
                uploads: Mutex::new(0),
                upload_done: std::sync::Condvar::new(),
                max_uploads: opts.upload_threads.max(1),
                pack_buffers: Mutex::new(Vec::new()),
                index_max_blobs: opts.index_max_blobs,
                index_max_age: opts.index_max_age,
            }),
            blob_level: level,
            opts,
            uploader: Mutex::new(None),
        }
    }

    /// The compression level used for unpacked files, if any.
    pub(crate) fn unpacked_level(&self) -> Option<i32> {
        self.shared.unpacked_level
    }

    /// Takes an upload slot if one is free.
    fn try_reserve_upload(&self) -> bool {
        let mut n = self.shared.uploads.lock().expect("uploads");
        if *n < self.shared.max_uploads {
            *n += 1;
            true
        } else {
            false
        }
    }

    /// Waits for a free upload slot and takes it.
    fn reserve_upload(&self) {
        let mut n = self.shared.uploads.lock().expect("uploads");
        while *n >= self.shared.max_uploads {
            n = self.shared.upload_done.wait(n).expect("uploads");
        }
        *n += 1;
    }

    fn release_upload(&self) {
        *self.shared.uploads.lock().expect("uploads") -= 1;
        self.shared.upload_done.notify_all();
    }

    /// Hands a full pack to the uploaders; an upload slot must be reserved.
    fn send(&self, p: Packer) -> Result<()> {
        let tx = {
            let mut u = self.uploader.lock().expect("uploader");
            let u = u.get_or_insert_with(|| {
                let n = self.opts.upload_threads.max(1);
                // Room for every reserved upload: sending never blocks;
                // reserve_upload is where writers wait.
                let (tx, rx) = sync_channel::<Packer>(n);
                let rx = Arc::new(Mutex::new(rx));
                let threads = (0..n)
                    .map(|i| {
                        let (s, r) = (self.shared.clone(), rx.clone());
                        std::thread::Builder::new()
                            .name(format!("upload-{i}"))
                            .spawn(move || uploader_loop(s, r))
                            .expect("spawn uploader thread")
                    })
                    .collect();
                Uploader { tx, threads }
            });
            u.tx.clone()
        };
        tx.send(p).map_err(|_| {
            self.release_upload();
            Error::format("writing to the repository", "uploader stopped")
        })
    }

    /// Stores a blob unless the repository has it; returns whether it was new.
    pub fn save(&self, tpe: BlobType, id: Id, data: &[u8]) -> Result<bool> {
        self.shared.check()?;
        if !self.claim(tpe, id) {
            return Ok(false);
        }
        // The sealed blob stays in this thread's scratch buffer until it
        // is copied into the pack: no allocation per blob.
        let full = SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            let ulen = match self.seal(tpe, &id, data, scratch) {
                Ok(u) => u,
                Err(e) => {
                    self.shared
                        .state
                        .lock()
                        .expect("write state")
                        .in_flight
                        .remove(&(tpe, id));
                    return Err(e);
                }
            };
            let full = self.pack(tpe, id, &scratch.sealed, ulen, data.len());
            scratch.trim();
            Ok(full)
        })?;
        self.dispatch(tpe, full)?;
        Ok(true)
    }

    /// Stores a blob that is already sealed (compressed if
    /// `uncompressed_length` says so, and encrypted with this repository's
    /// key) unless the writer has it: prune copies verified blobs this way
    /// without compressing and encrypting them again. The caller vouches
    /// that `sealed` decrypts to the blob `id`.
    pub fn save_sealed(
        &self,
        tpe: BlobType,
        id: Id,
        sealed: &[u8],
        uncompressed_length: Option<u32>,
    ) -> Result<bool> {
        self.shared.check()?;
        if !self.claim(tpe, id) {
            return Ok(false);
        }
        let plain_len = match uncompressed_length {
            Some(u) => u as usize,
            None => sealed.len().saturating_sub(crate::format::crypto::OVERHEAD),
        };
        let full = self.pack(tpe, id, sealed, uncompressed_length, plain_len);
        self.dispatch(tpe, full)?;
        Ok(true)
    }

    /// Marks a blob as being written; false if it is indexed or in flight.
    fn claim(&self, tpe: BlobType, id: Id) -> bool {
        if self
            .shared
            .index
            .read()
            .expect("index lock")
            .contains(tpe, &id)
        {
            return false;
        }
        let mut w = self.shared.state.lock().expect("write state");
        w.in_flight.insert((tpe, id))
    }

    /// Appends a sealed blob to the open pack of its type; says whether
    /// the pack is full and what to do with it.
    fn pack(&self, tpe: BlobType, id: Id, ct: &[u8], ulen: Option<u32>, plain_len: usize) -> Full {
        {
            let mut st = self.shared.stats.lock().expect("stats");
            match tpe {
                BlobType::Data => st.data_blobs += 1,
                BlobType::Tree => st.tree_blobs += 1,
            }
            st.data_added += plain_len as u64;
            st.data_added_packed += ct.len() as u64;
        }
        let mut w = self.shared.state.lock().expect("write state");
        let slot = match tpe {
            BlobType::Data => &mut w.data,
            BlobType::Tree => &mut w.tree,
        };
        // Room for a full pack and a bit: rarely any reallocation.
        let cap = match tpe {
            BlobType::Data => self.opts.pack_size + (1 << 20),
            BlobType::Tree => 0,
        };
        let p = slot.get_or_insert_with(|| {
            let pooled = match tpe {
                BlobType::Data => self.shared.pack_buffers.lock().expect("pack buffers").pop(),
                BlobType::Tree => None,
            };
            match pooled {
                Some(buf) => Packer::with_buffer(tpe, buf),
                None => Packer::with_capacity(tpe, cap),
            }
        });
        p.add(id, ct, ulen);
        // A full pack leaves its slot only with an upload slot: while
        // all uploaders are busy, writers wait here and the pack in the
        // slot grows by at most one blob per writer. That bounds memory
        // to the uploads plus one pack per type.
        let full = if p.size() < self.opts.pack_size {
            Full::No
        } else if self.try_reserve_upload() {
            Full::Take(slot.take().expect("just filled"))
        } else {
            Full::Wait
        };
        drop(w);
        full
    }

    /// Sends a full pack on (or waits for an upload slot first).
    fn dispatch(&self, tpe: BlobType, full: Full) -> Result<()> {
        match full {
            Full::No => {}
            Full::Take(p) => self.send(p)?,
            Full::Wait => {
                self.reserve_upload();
                let p = {
                    let mut w = self.shared.state.lock().expect("write state");
                    let slot = match tpe {
                        BlobType::Data => &mut w.data,
                        BlobType::Tree => &mut w.tree,
                    };
                    match slot {
                        Some(p) if p.size() >= self.opts.pack_size => slot.take(),
                        _ => None, // another writer sent it meanwhile
                    }
                };
                match p {
                    Some(p) => self.send(p)?,
                    None => self.release_upload(),
                }
            }
        }
        Ok(())
    }

    /// Compresses (when it helps) and encrypts a blob, then checks that the
    /// result decrypts back to the same content before it may be stored,
    /// as restic does, so a fault in memory or in the crypto cannot put a
    /// bad blob into the repository unnoticed.
    fn seal(
        &self,
        tpe: BlobType,
        id: &Id,
        data: &[u8],
        scratch: &mut Scratch,
    ) -> Result<Option<u32>> {
        let what = || format!("new {tpe} blob {id}");
        let compressed = match self.blob_level {
            Some(level) if !data.is_empty() && worth_compressing(self.opts.compression, data) => {
                crate::format::compress::compress_into(data, level, &mut scratch.compressed)
                    .map_err(|source| Error::Compression {
                        what: what(),
                        source,
                    })?;
                scratch.compressed.len() < data.len()
            }
            _ => false,
        };
        let (payload, ulen) = if compressed {
            (&scratch.compressed[..], Some(data.len() as u32))
        } else {
            (data, None)
        };
        scratch.sealed.clear();
        self.shared.key.encrypt_into(payload, &mut scratch.sealed);
        // Verify: decrypt, decompress, hash, compare with the id.
        self.shared
            .key
            .decrypt_into(&scratch.sealed, &what, &mut scratch.decrypted)?;
        let plain = match ulen {
            Some(u) => {
                crate::format::compress::decompress_into(
                    &scratch.decrypted,
                    u as usize,
                    &mut scratch.decompressed,
                )
                .map_err(|source| Error::Compression {
                    what: what(),
                    source,
                })?;
                &scratch.decompressed
            }
            None => &scratch.decrypted,
        };
        let actual = Id::hash(plain);
        if actual != *id {
            return Err(Error::format(
                what(),
                format!("verification after encryption failed: content hashes to {actual}"),
            ));
        }
        Ok(ulen)
    }

    /// Uploads the open packs, waits for every upload, and writes an index
    /// file for everything not yet indexed. After it returns, every blob
    /// saved so far is durable and indexed: a snapshot may refer to them.
    pub fn flush(&self) -> Result<()> {
        let (d, t) = {
            let mut w = self.shared.state.lock().expect("write state");
            (w.data.take(), w.tree.take())
        };
        for p in [d, t].into_iter().flatten() {
            if p.count() > 0 {
                self.reserve_upload();
                self.send(p)?;
            }
        }
        if let Some(u) = self.uploader.lock().expect("uploader").take() {
            drop(u.tx);
            for t in u.threads {
                let _ = t.join();
            }
        }
        self.shared.check()?;
        let pending = {
            let mut w = self.shared.state.lock().expect("write state");
            w.pending_blobs = 0;
            w.pending_since = None;
            std::mem::take(&mut w.pending)
        };
        self.shared.write_index(pending)
    }

    /// What was added so far.
    pub fn stats(&self) -> WriteStats {
        *self.shared.stats.lock().expect("stats")
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(u) = self.uploader.get_mut().expect("uploader").take() {
            drop(u.tx);
            for t in u.threads {
                let _ = t.join();
            }
        }
    }
}

/// What became of a pack after a blob was added to it.
enum Full {
    /// Not full.
    No,
    /// Full, and an upload slot is reserved for it.
    Take(Packer),
    /// Full, but every upload slot is busy.
    Wait,
}

/// Buffers reused by each worker thread for every blob it seals.
#[derive(Default)]
struct Scratch {
    sealed: Vec<u8>,
    compressed: Vec<u8>,
    decrypted: Vec<u8>,
    decompressed: Vec<u8>,
}

impl Scratch {
    /// Keeps buffers of typical chunk size, lets rare large ones go, so a
    /// few 8 MiB chunks do not pin 24 MiB per thread for the whole run.
    fn trim(&mut self) {
        for b in [
            &mut self.sealed,
            &mut self.compressed,
            &mut self.decrypted,
            &mut self.decompressed,
        ] {
            if b.capacity() > 2 << 20 {
                *b = Vec::new();
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// For `auto`: whether the data is worth compressing. zstd on data that is
/// already compressed or encrypted still costs time; three 16 KiB probes
/// (start, middle, end) at level 1 tell cheaply. Data that compresses in any
/// probe is compressed: chunks often mix text with binary.
fn worth_compressing(mode: Compression, data: &[u8]) -> bool {
    const PROBE: usize = 16 << 10;
    if mode != Compression::Auto || data.len() <= 8 * PROBE {
        return true;
    }
    let at = [0, data.len() / 2 - PROBE / 2, data.len() - PROBE];
    at.iter().any(|&o| {
        let sample = &data[o..o + PROBE];
        match crate::format::compress::compress(sample, 1) {
            Ok(c) => c.len() < PROBE * 97 / 100,
            Err(_) => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::FileInfo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local backend whose pack writes wait at a gate.
    #[derive(Debug)]
    struct Gated {
        inner: LocalBackend,
        open: Mutex<bool>,
        cv: std::sync::Condvar,
        writing: AtomicUsize,
        max_writing: AtomicUsize,
        packs: AtomicUsize,
    }

    impl Backend for Gated {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> Result<()> {
            self.inner.create()
        }
        fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
            self.inner.list(t)
        }
        fn read(&self, t: FileType, n: &str) -> Result<Vec<u8>> {
            self.inner.read(t, n)
        }
        fn read_range(&self, t: FileType, n: &str, o: u64, l: u32) -> Result<Vec<u8>> {
            self.inner.read_range(t, n, o, l)
        }
        fn write(&self, t: FileType, n: &str, d: &[u8]) -> Result<()> {
            if t == FileType::Pack {
                let now = self.writing.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_writing.fetch_max(now, Ordering::SeqCst);
                let mut open = self.open.lock().unwrap();
                while !*open {
                    open = self.cv.wait(open).unwrap();
                }
                drop(open);
                self.writing.fetch_sub(1, Ordering::SeqCst);
                self.packs.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.write(t, n, d)
        }
        fn remove(&self, t: FileType, n: &str) -> Result<()> {
            self.inner.remove(t, n)
        }
        fn exists(&self, t: FileType, n: &str) -> Result<bool> {
            self.inner.exists(t, n)
        }
    }

    #[test]
    fn writers_wait_while_every_upload_slot_is_busy() {
        let d = tempfile::tempdir().unwrap();
        let gated = Arc::new(Gated {
            inner: LocalBackend::new(d.path()),
            open: Mutex::new(false),
            cv: std::sync::Condvar::new(),
            writing: AtomicUsize::new(0),
            max_writing: AtomicUsize::new(0),
            packs: AtomicUsize::new(0),
        });
        gated.create().unwrap();
        let opts = WriteOptions {
            pack_size: 64 << 10,
            compression: Compression::Off,
            upload_threads: 2,
            ..WriteOptions::default()
        };
        let writer = Arc::new(BlobWriter::new(
            gated.clone(),
            Key::random(),
            2,
            Arc::new(RwLock::new(Index::new())),
            opts,
        ));
        let saved = Arc::new(AtomicUsize::new(0));
        let (w2, s2) = (writer.clone(), saved.clone());
        let producer = std::thread::spawn(move || {
            for i in 0..64u32 {
                let blob: Vec<u8> = (0..32 << 10)
                    .map(|j: u32| (j ^ i).wrapping_mul(2654435761) as u8)
                    .collect();
                w2.save(BlobType::Data, Id::hash(&blob), &blob).unwrap();
                s2.fetch_add(1, Ordering::SeqCst);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Two packs uploading (stuck at the gate), one filling: the
        // producer is held after about three packs' worth of blobs.
        let held_at = saved.load(Ordering::SeqCst);
        assert!(
            held_at < 12,
            "producer was not held back: {held_at} blobs saved"
        );
        assert_eq!(gated.max_writing.load(Ordering::SeqCst), 2);
        *gated.open.lock().unwrap() = true;
        gated.cv.notify_all();
        producer.join().unwrap();
        writer.flush().unwrap();
        assert_eq!(saved.load(Ordering::SeqCst), 64);
        assert!(gated.max_writing.load(Ordering::SeqCst) <= 2);
        assert_eq!(gated.packs.load(Ordering::SeqCst), 32);
    }

    /// Packs uploaded long enough ago are indexed before the writer is
    /// flushed (a killed run's successor can reuse them); younger ones
    /// wait for the flush.
    #[test]
    fn uploaded_packs_are_indexed_once_the_oldest_is_old_enough() {
        let write = |max_age: Duration| {
            let d = tempfile::tempdir().unwrap();
            let backend = Arc::new(LocalBackend::new(d.path()));
            backend.create().unwrap();
            let opts = WriteOptions {
                pack_size: 64 << 10,
                compression: Compression::Off,
                index_max_age: max_age,
                ..WriteOptions::default()
            };
            let writer = BlobWriter::new(
                backend.clone(),
                Key::random(),
                2,
                Arc::new(RwLock::new(Index::new())),
                opts,
            );
            for i in 0..16u32 {
                let blob: Vec<u8> = (0..32 << 10)
                    .map(|j: u32| (j ^ i).wrapping_mul(2654435761) as u8)
                    .collect();
                writer.save(BlobType::Data, Id::hash(&blob), &blob).unwrap();
            }
            // Let the uploads of the full packs finish.
            let deadline = Instant::now() + Duration::from_secs(20);
            while backend.list(FileType::Pack).unwrap().len() < 7 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let before = backend.list(FileType::Index).unwrap().len();
            writer.flush().unwrap();
            let after = backend.list(FileType::Index).unwrap().len();
            (before, after, d)
        };
        let (before, after, _d) = write(Duration::ZERO);
        assert!(before >= 6, "indexed while running: {before} index files");
        assert!(after >= before);
        let (before, after, _d) = write(Duration::from_secs(3600));
        assert_eq!((before, after), (0, 1), "one index file, at the flush");
    }

    #[test]
    fn compression_names() {
        assert_eq!("auto".parse::<Compression>().unwrap(), Compression::Auto);
        assert_eq!("max".parse::<Compression>().unwrap().level(), Some(19));
        assert_eq!(Compression::Off.level(), None);
        assert!("zip".parse::<Compression>().is_err());
    }

    #[test]
    fn auto_compresses_mixed_data() {
        let mut mixed: Vec<u8> = (0..40_000u32)
            .flat_map(|i| Id::hash(&i.to_le_bytes()).0)
            .collect();
        mixed.extend(b"some text, some text, some text. ".repeat(20_000));
        assert!(worth_compressing(Compression::Auto, &mixed));
    }

    #[test]
    fn auto_skips_random_data_but_not_text() {
        let random: Vec<u8> = (0..400_000u32)
            .flat_map(|i| Id::hash(&i.to_le_bytes()).0)
            .collect();
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(20_000);
        assert!(!worth_compressing(Compression::Auto, &random));
        assert!(worth_compressing(Compression::Auto, &text));
        assert!(worth_compressing(Compression::Max, &random));
    }
}
