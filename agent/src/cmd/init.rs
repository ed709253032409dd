//! `stash init`.

use anyhow::{bail, Context, Result};
use repo_format::Repository;

use crate::cli::GlobalArgs;
use crate::repo;

pub fn run(g: &GlobalArgs, version: &str) -> Result<u8> {
    let version: u32 = match version {
        "1" => 1,
        "2" | "latest" | "stable" => 2,
        v => bail!("--repository-version {v:?}: must be 1 or 2"),
    };
    let backend = repo::backend(g)?;
    let password = repo::password(g)?;
    let kdf = repo::kdf_params()?;
    let r = Repository::init(backend.clone(), &password, version, kdf)
        .with_context(|| format!("creating repository at {}", backend.location()))?;
    println!(
        "created stash repository {} (format version {version}) at {}",
        &r.config().id[..10],
        backend.location()
    );
    println!();
    println!("Knowledge of the password is required to access the repository.");
    println!("Losing the password means the data is irrecoverably lost.");
    Ok(0)
}
