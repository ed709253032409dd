//! Fuzz targets for every parser that reads repository or user bytes.
//!
//! Each target is a plain `fn(&[u8])` that feeds the bytes to the real
//! public parse functions of `repo-format` and `stash-api` (no copies) and
//! checks what must hold whatever the input: no panic, no hang, no
//! unbounded allocation, and where a format is written back, that what we
//! write parses again to the same value. `src/main.rs` runs one under
//! AFL++ (`cargo afl`, see README.md) or replays files through it; the
//! corpus test (`tests/corpus.rs`) replays every committed seed.
//!
//! Encrypted forms go through decryption with one fixed master key: the
//! key of the restic 0.14 repository the seeds were taken from, so the
//! repository's files as restic stored them are seeds that decrypt. A
//! mutated ciphertext almost never passes the MAC, so the `*sealed*`
//! modes seal the fuzzer's bytes with that key first and then take the
//! reading path (decrypt, decompress, parse) from the stored form.

use chrono::{DateTime, TimeZone, Utc};
use repo_format::backend::location::{redact, Location};
use repo_format::format::compress;
use repo_format::format::crypto::Key;
use repo_format::format::id::Id;
use repo_format::format::repofile::pack::{header_from_bytes, header_to_bytes, split_pack};
use repo_format::format::repofile::tree::{go_quote, go_unquote};
use repo_format::format::repofile::{
    BlobType, Config, IndexFile, KeyFile, LockFile, Node, Snapshot, Tree,
};
use repo_format::ops::filter::Patterns;
use repo_format::ops::forget::{self, Count, GroupBy, KeepDuration, Policy};
use repo_format::repository::index::{file_blobs, BlobLocation, Index};
use repo_format::repository::{decode_unpacked, open_blob};

/// One fuzz target: `name` is also its seed folder, `fuzz/corpus/<name>`.
pub struct Target {
    /// The name `stash-fuzz NAME` and hack/fuzz.sh know it by.
    pub name: &'static str,
    /// Feeds one input to the parsers; panics on a violated property.
    pub run: fn(&[u8]),
}

/// Every target, in the order hack/fuzz.sh runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "pack_header",
        run: pack_header,
    },
    Target {
        name: "pack",
        run: pack,
    },
    Target {
        name: "blob_sealed",
        run: blob_sealed,
    },
    Target {
        name: "index",
        run: index,
    },
    Target {
        name: "tree",
        run: tree,
    },
    Target {
        name: "snapshot",
        run: snapshot,
    },
    Target {
        name: "key",
        run: key,
    },
    Target {
        name: "config",
        run: config,
    },
    Target {
        name: "lock",
        run: lock,
    },
    Target {
        name: "unpacked",
        run: unpacked,
    },
    Target {
        name: "go_quote",
        run: go_quoted,
    },
    Target {
        name: "location",
        run: location,
    },
    Target {
        name: "cron",
        run: cron,
    },
    Target {
        name: "retention",
        run: retention,
    },
    Target {
        name: "patterns",
        run: patterns,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The master key of the seed repository (restic 0.14, password
/// [`PASSWORD`]): `restic cat masterkey`.
pub fn fixed_key() -> Key {
    Key::from_parts(
        [
            0x3d, 0x37, 0xf8, 0x5c, 0xcf, 0xdc, 0x9a, 0xaa, 0xa7, 0x5a, 0xf6, 0x82, 0x93, 0xc4,
            0xca, 0x0d, 0xba, 0x92, 0xac, 0xdf, 0x91, 0xec, 0x21, 0x26, 0x27, 0x0b, 0x8b, 0x6d,
            0xa5, 0x15, 0x06, 0x92,
        ],
        [
            0x28, 0xe2, 0x4f, 0x00, 0xe6, 0x81, 0x4e, 0xd6, 0x85, 0x2f, 0x29, 0x6b, 0x7b, 0x30,
            0x94, 0x76,
        ],
        [
            0xc9, 0xb2, 0x4e, 0x05, 0xcc, 0x59, 0x47, 0x02, 0x88, 0x10, 0x72, 0x05, 0xa4, 0xd7,
            0x4c, 0x0b,
        ],
    )
}

/// The password of the seed repository's key files.
pub const PASSWORD: &[u8] = b"stash-fuzz";

/// A fixed IV, so that a sealed input is the same ciphertext every run
/// (AFL++ wants a deterministic target).
const IV: [u8; 16] = [7; 16];

/// The "now" of the time-dependent checks (lock staleness, retention).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
}

fn seal(key: &Key, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key.encrypt_with_iv(&IV, plain, &mut out);
    out
}

/// A decrypted pack header, as `check` and `repair` read it. Whatever
/// parses must be written back byte for byte, with offsets that add up.
pub fn pack_header(data: &[u8]) {
    let Ok(entries) = header_from_bytes(data, &Id::default()) else {
        return;
    };
    let mut offset = 0u64;
    for e in &entries {
        assert_eq!(u64::from(e.offset), offset, "offsets are the running sum");
        offset += u64::from(e.length);
    }
    assert_eq!(header_to_bytes(&entries), data, "header round trip");
}

/// A whole pack file as stored: the trailing length, the encrypted header,
/// then every blob the header names, decrypted, decompressed and hashed
/// (what `check --read-data` does); tree blobs are parsed.
pub fn pack(data: &[u8]) {
    let key = fixed_key();
    let id = Id::hash(data);
    let Ok((_, hdr)) = split_pack(data, &id) else {
        return;
    };
    let Ok(plain) = key.decrypt(hdr, &|| "pack header".into()) else {
        return;
    };
    let Ok(entries) = header_from_bytes(&plain, &id) else {
        return;
    };
    for e in entries {
        let loc = BlobLocation {
            pack: id,
            offset: e.offset,
            length: e.length,
            uncompressed_length: e.uncompressed_length,
        };
        let start = e.offset as usize;
        let Some(ct) = data.get(start..start + e.length as usize) else {
            continue;
        };
        if let Ok(blob) = open_blob(&key, e.tpe, &e.id, &loc, ct) {
            if e.tpe == BlobType::Tree {
                let _ = Tree::from_json(&blob, &e.id);
            }
        }
    }
}

/// One blob as the index and pack describe it: byte 0 picks the type
/// (bit 0: tree) and compression (bit 1: then bytes 1..5 are the
/// uncompressed length the index claims, little endian); the rest is the
/// stored plaintext, sealed with the fixed key, then opened the way
/// `Repository::decode_blob` opens it. Its id is the hash of what a
/// correct blob decodes to, so the hash check passes for honest inputs.
pub fn blob_sealed(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let tpe = if flags & 1 == 1 {
        BlobType::Tree
    } else {
        BlobType::Data
    };
    let (uncompressed_length, stored) = if flags & 2 == 2 {
        let Some((len, stored)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (Some(u32::from_le_bytes(*len)), stored)
    } else {
        (None, rest)
    };
    let plain = match uncompressed_length {
        // The id an honest pack would record: the hash of the plaintext.
        Some(u) if u <= repo_format::repository::MAX_DATA_BLOB_SIZE => {
            compress::decompress(stored, u as usize).unwrap_or_else(|_| stored.to_vec())
        }
        Some(_) => stored.to_vec(),
        None => stored.to_vec(),
    };
    let id = Id::hash(&plain);
    let key = fixed_key();
    let ct = seal(&key, stored);
    let loc = BlobLocation {
        pack: Id::default(),
        offset: 0,
        length: u32::try_from(ct.len()).unwrap_or(u32::MAX),
        uncompressed_length,
    };
    if let Ok(blob) = open_blob(&key, tpe, &id, &loc, &ct) {
        assert_eq!(Id::hash(&blob), id, "an opened blob has its id");
        if tpe == BlobType::Tree {
            let _ = Tree::from_json(&blob, &id);
        }
    }
}

/// A decrypted index file; what parses also goes into the in-memory
/// index, and must survive our own writing.
pub fn index(data: &[u8]) {
    let Ok(f) = IndexFile::from_json(data, "fuzz") else {
        return;
    };
    let mut idx = Index::from_files([&f]);
    for (tpe, id, loc) in file_blobs(&f) {
        assert!(idx.contains(tpe, &id), "an indexed blob is found");
        let _ = loc.data_length();
    }
    idx.compact();
    let _ = idx.memory_bytes();
    let again = IndexFile::from_json(&f.to_json(), "fuzz").expect("our index JSON parses");
    assert_eq!(again, f, "index round trip");
}

/// A decrypted tree blob: every name is checked the way restore checks
/// it, quoted the way `ls` prints it, and the tree written back.
pub fn tree(data: &[u8]) {
    let Ok(t) = Tree::from_json(data, &Id::default()) else {
        return;
    };
    for n in &t.nodes {
        let _ = Node::check_name(&n.name);
        let _ = n.name_lossy();
        let q = go_quote(&n.name);
        assert_eq!(go_unquote(&q).as_deref(), Some(&n.name[..]), "name quoting");
    }
    let again = Tree::from_json(&t.to_json(), &Id::default()).expect("our tree JSON parses");
    assert_eq!(again, t, "tree round trip");
}

/// A decrypted snapshot file.
pub fn snapshot(data: &[u8]) {
    let Ok(s) = Snapshot::from_json(data, "fuzz") else {
        return;
    };
    let again = Snapshot::from_json(&s.to_json(), "fuzz").expect("our snapshot JSON parses");
    assert_eq!(again, s, "snapshot round trip");
}

/// A key file (stored in plain JSON). Its scrypt parameters come from the
/// repository; opening it with the seed password runs scrypt only when
/// they are cheap, so that a run measures the parser, not scrypt.
pub fn key(data: &[u8]) {
    let Ok(k) = KeyFile::from_json(data, "fuzz") else {
        return;
    };
    let p = k.params();
    let cost =
        p.n.saturating_mul(u64::from(p.r))
            .saturating_mul(u64::from(p.p));
    if cost <= 1 << 13 {
        let _ = k.open(PASSWORD, "fuzz");
    }
    let _ = KeyFile::from_json(&k.to_json(), "fuzz").expect("our key JSON parses");
}

/// The decrypted config file.
pub fn config(data: &[u8]) {
    let Ok(c) = Config::from_json(data) else {
        return;
    };
    let _ = c.chunker();
    let again = Config::from_json(&c.to_json()).expect("our config JSON parses");
    assert_eq!(again, c, "config round trip");
}

/// A decrypted lock file, judged stale or not as `unlock` judges it.
pub fn lock(data: &[u8]) {
    let Ok(l) = LockFile::from_json(data, "fuzz") else {
        return;
    };
    let _ = l.is_stale(now().fixed_offset(), "host", |_| false);
    let _ = l.describe();
    let again = LockFile::from_json(&l.to_json(), "fuzz").expect("our lock JSON parses");
    assert_eq!(again, l, "lock round trip");
}

/// An encrypted file other than a pack, read the way `Repository` reads
/// it. Byte 0: bits 0-1 pick the kind (config, index, snapshot, lock);
/// bit 7 clear: the rest is the file as stored (decrypted with the fixed
/// key); bit 7 set: the rest is the plaintext (JSON, or `0x02` and a zstd
/// frame), sealed with the fixed key first.
pub fn unpacked(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let key = fixed_key();
    let stored = if flags & 0x80 != 0 {
        seal(&key, rest)
    } else {
        rest.to_vec()
    };
    let Ok(plain) = key.decrypt(&stored, &|| "fuzz".into()) else {
        return;
    };
    match flags & 3 {
        // Repository::open: the config is never compressed.
        0 => config(&plain),
        kind => {
            let Ok(json) = decode_unpacked(plain, "fuzz") else {
                return;
            };
            match kind {
                1 => index(&json),
                2 => snapshot(&json),
                _ => lock(&json),
            }
        }
    }
}

/// Go's quoting of names (`ls`, `find`, `diff` output) and its inverse:
/// quoting any bytes and unquoting gives the bytes back; unquoting any
/// string and quoting again unquotes to the same bytes.
pub fn go_quoted(data: &[u8]) {
    let q = go_quote(data);
    assert_eq!(go_unquote(&q).as_deref(), Some(data), "quote then unquote");
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(b) = go_unquote(s) {
            assert_eq!(go_unquote(&go_quote(&b)), Some(b), "unquote then quote");
        }
    }
}

/// A repository string (`--repo`, a Repository object's `spec.location`),
/// and the redaction of credentials for messages. What parses is
/// printed and parsed again to the same place.
pub fn location(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = redact(s);
    let Ok(l) = Location::parse(s) else {
        return;
    };
    let _ = l.scheme();
    let shown = l.to_string();
    let _ = redact(&shown);
}

/// A BackupConfiguration's schedule: line 1 the cron pattern, line 2 the
/// time zone (empty: UTC), line 3 a timeout duration. A schedule that
/// parses is evaluated forwards and backwards from a fixed instant.
pub fn cron(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = s.split('\n');
    let schedule = lines.next().unwrap_or("");
    let tz = lines.next().filter(|l| !l.is_empty());
    if let Some(timeout) = lines.next() {
        let _ = stash_api::parse_duration(timeout);
    }
    if let Ok(sched) = stash_api::schedule::Schedule::parse(schedule, tz) {
        if let Some(next) = sched.next_after(now()) {
            assert!(next > now(), "the next tick is after now");
        }
        if let Some(last) = sched.last_at_or_before(now()) {
            assert!(last <= now(), "the last tick is not after now");
        }
    }
}

/// A retention policy as `forget` takes it, applied to snapshots. Line 1:
/// `--group-by`; lines 2-7: the `--keep-{last,hourly,daily,weekly,
/// monthly,yearly}` counts; lines 8-13: `--keep-within{,-hourly,-daily,
/// -weekly,-monthly,-yearly}` durations (an empty line leaves a rule
/// unset); line 14: `--keep-tag` lists (`;` between lists, `,` between
/// tags); every further line a snapshot's JSON.
pub fn retention(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = s.split('\n');
    let mut next = || lines.next().filter(|l| !l.is_empty());
    let Ok(by) = next().unwrap_or("").parse::<GroupBy>() else {
        return;
    };
    let mut count = || next().map(str::parse::<Count>).transpose();
    let (Ok(last), Ok(hourly), Ok(daily), Ok(weekly), Ok(monthly), Ok(yearly)) =
        (count(), count(), count(), count(), count(), count())
    else {
        return;
    };
    let mut within = || next().map(str::parse::<KeepDuration>).transpose();
    let (Ok(w), Ok(wh), Ok(wd), Ok(ww), Ok(wm), Ok(wy)) =
        (within(), within(), within(), within(), within(), within())
    else {
        return;
    };
    let keep_tags = next()
        .map(|l| {
            l.split(';')
                .map(|list| list.split(',').map(str::to_owned).collect())
                .collect()
        })
        .unwrap_or_default();
    let policy = Policy {
        keep_last: last,
        keep_hourly: hourly,
        keep_daily: daily,
        keep_weekly: weekly,
        keep_monthly: monthly,
        keep_yearly: yearly,
        keep_within: w,
        keep_within_hourly: wh,
        keep_within_daily: wd,
        keep_within_weekly: ww,
        keep_within_monthly: wm,
        keep_within_yearly: wy,
        keep_tags,
    };
    let _ = policy.is_empty();
    let snapshots: Vec<(Id, Snapshot)> = lines
        .filter_map(|l| Snapshot::from_json(l.as_bytes(), "fuzz").ok())
        .map(|s| (Id::hash(&s.to_json()), s))
        .collect();
    let groups = forget::apply(&snapshots, by, &policy, now());
    let decided: usize = groups.iter().map(|g| g.keep.len() + g.remove.len()).sum();
    assert_eq!(
        decided,
        snapshots.len(),
        "every snapshot is kept or removed"
    );
}

/// Include/exclude patterns (`--exclude`, `--include`, a configuration's
/// `exclude`): the lines before the first empty line are patterns, the
/// lines after it paths to match.
pub fn patterns(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let pats: Vec<&[u8]> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
    let Ok(p) = Patterns::new(&pats) else {
        return;
    };
    let _ = p.is_empty();
    for path in lines {
        let _ = p.matches(path);
        let _ = p.may_match_below(path);
    }
}
