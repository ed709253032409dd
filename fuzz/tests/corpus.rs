//! Every committed seed (fuzz/corpus/<target>/) goes through its target in
//! a plain test build: the seeds stay valid inputs for the parsers they
//! were made for, and an input that once crashed a target (kept in its
//! corpus after the fix) cannot crash it again unnoticed.

use std::path::Path;

#[test]
fn every_target_has_seeds_and_survives_them() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in stash_fuzz::TARGETS {
        let dir = corpus.join(t.name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let start = std::time::Instant::now();
            (t.run)(&data);
            // Generous for a debug build on a busy machine; a hang is minutes.
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{} took {:?}",
                path.display(),
                start.elapsed()
            );
            n += 1;
        }
        assert!(n > 0, "target {} has no seeds in {}", t.name, dir.display());
    }
}

/// The encrypted seeds really decrypt with the fixed key (else the
/// `unpacked` and `pack` targets would stop at the MAC on every seed).
#[test]
fn stored_seeds_decrypt_with_the_fixed_key() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let key = stash_fuzz::fixed_key();
    let mut n = 0;
    for entry in std::fs::read_dir(corpus.join("unpacked")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if data[0] & 0x80 == 0 {
            key.decrypt(&data[1..], &|| path.display().to_string())
                .unwrap();
            n += 1;
        }
    }
    assert!(n >= 4, "stored config, index, snapshot and lock seeds");
    for entry in std::fs::read_dir(corpus.join("pack")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let id = repo_format::Id::default();
        let (_, hdr) = repo_format::format::repofile::pack::split_pack(&data, &id).unwrap();
        let plain = key.decrypt(hdr, &|| path.display().to_string()).unwrap();
        assert!(
            !repo_format::format::repofile::pack::header_from_bytes(&plain, &id)
                .unwrap()
                .is_empty()
        );
    }
}

/// The cheap key seed opens with the seed password to the fixed key, so the
/// `key` target reaches the master key's JSON.
#[test]
fn cheap_key_seed_opens_to_the_fixed_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/key/cheap");
    let kf =
        repo_format::format::repofile::KeyFile::from_json(&std::fs::read(path).unwrap(), "cheap")
            .unwrap();
    assert_eq!(
        kf.open(stash_fuzz::PASSWORD, "cheap").unwrap(),
        stash_fuzz::fixed_key()
    );
}
