//! Issue 4: every backend keeps the `Backend` contract the engine relies
//! on, against the real servers (`stash_testkit::servers`): exact listings
//! with sizes, ranges, missing files as `NotFound`, idempotent writes of
//! content-addressed files, removal. The REST backend is checked with API
//! v2 and v1 listings.

use std::sync::Arc;

use repo_format::backend::object_store::Credentials;
use repo_format::backend::rest::RestBackend;
use repo_format::backend::{open, FileInfo, Location, OpenOptions, TlsOptions};
use repo_format::{Backend, Error, FileType};
use sha2::{Digest, Sha256};
use stash_testkit::servers;

/// `(name, bytes)` of a content-addressed file of `len` bytes.
fn file(len: usize, seed: u8) -> (String, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (hex::encode(Sha256::digest(&data)), data)
}

fn conformance(b: &dyn Backend) {
    let what = b.location();
    b.create().unwrap_or_else(|e| panic!("{what}: create: {e}"));
    // Creating again (a second `init` attempt) is harmless.
    b.create()
        .unwrap_or_else(|e| panic!("{what}: create again: {e}"));
    assert!(!b.exists(FileType::Config, "config").unwrap(), "{what}");
    assert!(
        matches!(
            b.read(FileType::Config, "config"),
            Err(Error::NotFound { .. })
        ),
        "{what}: a missing config is NotFound"
    );
    assert_eq!(b.list(FileType::Pack).unwrap(), vec![], "{what}");

    b.write(FileType::Config, "config", b"the config").unwrap();
    assert_eq!(b.read(FileType::Config, "config").unwrap(), b"the config");

    let packs: Vec<(String, Vec<u8>)> = [(1, 1u8), (70_000, 2), (3 << 20, 3)]
        .iter()
        .map(|&(len, seed)| file(len, seed))
        .collect();
    for (name, data) in &packs {
        b.write(FileType::Pack, name, data)
            .unwrap_or_else(|e| panic!("{what}: write {name}: {e}"));
    }
    let (key, key_data) = file(300, 9);
    b.write(FileType::Key, &key, &key_data).unwrap();

    let mut expected: Vec<FileInfo> = packs
        .iter()
        .map(|(n, d)| FileInfo {
            name: n.clone(),
            size: d.len() as u64,
        })
        .collect();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(b.list(FileType::Pack).unwrap(), expected, "{what}");
    assert_eq!(
        b.list(FileType::Key).unwrap(),
        vec![FileInfo {
            name: key.clone(),
            size: 300
        }],
        "{what}"
    );
    assert_eq!(b.list(FileType::Lock).unwrap(), vec![], "{what}");

    let (big, big_data) = &packs[2];
    assert_eq!(&b.read(FileType::Pack, big).unwrap(), big_data, "{what}");
    assert_eq!(
        b.read_range(FileType::Pack, big, 1000, 5000).unwrap(),
        big_data[1000..6000],
        "{what}"
    );
    let end = big_data.len() as u64;
    assert_eq!(
        b.read_range(FileType::Pack, big, end - 4, 4).unwrap(),
        big_data[big_data.len() - 4..],
        "{what}: the last bytes"
    );
    assert!(
        b.read_range(FileType::Pack, big, end - 4, 8).is_err(),
        "{what}: a range past the end is an error, not a short read"
    );

    // Content-addressed: writing the same file again succeeds.
    b.write(FileType::Pack, big, big_data)
        .unwrap_or_else(|e| panic!("{what}: rewrite: {e}"));
    assert_eq!(b.list(FileType::Pack).unwrap().len(), 3, "{what}");

    b.remove(FileType::Pack, big).unwrap();
    assert!(!b.exists(FileType::Pack, big).unwrap(), "{what}");
    assert!(
        matches!(b.read(FileType::Pack, big), Err(Error::NotFound { .. })),
        "{what}: a removed pack is NotFound"
    );
    assert_eq!(b.list(FileType::Pack).unwrap().len(), 2, "{what}");
}

fn opened(location: &str, creds: Credentials) -> Arc<dyn Backend> {
    let opts = OpenOptions {
        credentials: creds,
        ..OpenOptions::default()
    };
    open(&Location::parse(location).unwrap(), &opts).unwrap()
}

#[test]
fn local_backend_keeps_the_contract() {
    let d = tempfile::tempdir().unwrap();
    conformance(&*opened(
        &format!("local:{}", d.path().join("r").display()),
        Credentials::default(),
    ));
}

#[test]
fn rest_backend_keeps_the_contract_with_api_v2_and_v1() {
    let server = servers::rest_server(&[]);
    conformance(&*opened(
        &format!("rest:{}/v2/", server.base_url()),
        Credentials::default(),
    ));
    let v1 = RestBackend::new(
        &format!("{}/v1/", server.base_url()),
        None,
        None,
        &TlsOptions::default(),
        2,
    )
    .unwrap()
    .with_api_v1();
    conformance(&v1);
}

#[test]
fn s3_backend_keeps_the_contract_on_minio() {
    let server = servers::minio();
    let creds = Credentials {
        aws_access_key_id: Some(servers::MINIO_USER.into()),
        aws_secret_access_key: Some(servers::MINIO_PASSWORD.into()),
        ..Credentials::default()
    };
    conformance(&*opened(
        &format!("s3:{}/conformance/a/prefix", server.base_url()),
        creds.clone(),
    ));
    // The bucket's root works too.
    conformance(&*opened(
        &format!("s3:{}/at-root", server.base_url()),
        creds,
    ));
}

#[test]
fn azure_backend_keeps_the_contract_on_azurite() {
    let server = servers::azurite();
    conformance(&*opened(
        "azure:conformance:/a/prefix",
        Credentials {
            azure_account_name: Some(servers::AZURITE_ACCOUNT.into()),
            azure_account_key: Some(servers::AZURITE_KEY.into()),
            azure_endpoint: Some(format!(
                "{}/{}",
                server.base_url(),
                servers::AZURITE_ACCOUNT
            )),
            ..Credentials::default()
        },
    ));
}

#[test]
fn gcs_backend_keeps_the_contract_on_fake_gcs_server() {
    let server = servers::fake_gcs();
    conformance(&*opened(
        "gs:conformance:/a/prefix",
        Credentials {
            gcs_endpoint: Some(server.base_url()),
            google_project_id: Some("stash-test".into()),
            ..Credentials::default()
        },
    ));
}
