//! Opening the repository named on the command line or in the environment.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use repo_format::backend::object_store::Credentials;
use repo_format::backend::{Location, OpenOptions, TlsOptions};
use repo_format::{Backend, KdfParams, Repository};

use crate::cli::GlobalArgs;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The backend for the repository string (see `repo_format::backend::location`
/// for the forms), with credentials for object stores from restic's
/// environment variables.
pub fn backend(global: &GlobalArgs) -> Result<Arc<dyn Backend>> {
    let Some(spec) = global
        .repo
        .clone()
        .or_else(|| env("STASH_REPOSITORY"))
        .or_else(|| env("RESTIC_REPOSITORY"))
    else {
        bail!("no repository given: use -r/--repo or set STASH_REPOSITORY");
    };
    backend_for(global, &spec)
}

/// The backend for a repository string, with the global connection and
/// TLS settings.
pub fn backend_for(global: &GlobalArgs, spec: &str) -> Result<Arc<dyn Backend>> {
    let location = Location::parse(spec)?;
    let opts = OpenOptions {
        connections: global.connections.map(|n| n as usize),
        tls: TlsOptions {
            ca_certs: global.cacert.clone(),
            insecure: global.insecure_tls,
        },
        credentials: Credentials::from_env(env),
        ..OpenOptions::default()
    };
    Ok(repo_format::backend::open(&location, &opts)?)
}

/// The password from --password-file, STASH_PASSWORD_FILE, STASH_PASSWORD,
/// RESTIC_PASSWORD_FILE or RESTIC_PASSWORD, in that order. Like restic,
/// surrounding white space in a password file is ignored.
pub fn password(global: &GlobalArgs) -> Result<Vec<u8>> {
    let from_file = |p: PathBuf| password_from_file(&p);
    if let Some(p) = &global.password_file {
        return from_file(p.clone());
    }
    if let Some(p) = env("STASH_PASSWORD_FILE") {
        return from_file(p.into());
    }
    if let Some(p) = env("STASH_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if let Some(p) = env("RESTIC_PASSWORD_FILE") {
        return from_file(p.into());
    }
    if let Some(p) = env("RESTIC_PASSWORD") {
        return Ok(p.into_bytes());
    }
    bail!("no password given: use --password-file, or set STASH_PASSWORD_FILE or STASH_PASSWORD")
}

/// scrypt parameters for new keys: calibrated to about 0.5 s, or
/// `STASH_KDF_PARAMS=N,r,p` (for tests; weak parameters weaken the key).
pub fn kdf_params() -> Result<KdfParams> {
    if let Some(s) = env("STASH_KDF_PARAMS") {
        let v: Vec<u64> = s
            .split(',')
            .map(|x| x.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("STASH_KDF_PARAMS={s:?}: expected N,r,p"))?;
        if v.len() != 3 {
            bail!("STASH_KDF_PARAMS={s:?}: expected N,r,p");
        }
        return Ok(KdfParams {
            n: v[0],
            r: u32::try_from(v[1])?,
            p: u32::try_from(v[2])?,
        });
    }
    Ok(KdfParams::calibrate(std::time::Duration::from_millis(500)))
}

/// A password from a file, surrounding white space ignored (like restic).
pub fn password_from_file(p: &std::path::Path) -> Result<Vec<u8>> {
    let s = std::fs::read(p).with_context(|| format!("reading password file {}", p.display()))?;
    let t = s.trim_ascii();
    if t.is_empty() {
        bail!("password file {} is empty", p.display());
    }
    Ok(t.to_vec())
}

/// Opens the repository with the password.
pub fn open(global: &GlobalArgs) -> Result<Arc<Repository>> {
    let backend = backend(global)?;
    let password = password(global)?;
    let repo = Repository::open(backend.clone(), &password)
        .with_context(|| format!("opening repository {}", backend.location()))?;
    Ok(Arc::new(repo))
}
