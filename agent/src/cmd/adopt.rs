//! Reading a repository as another tool wrote it (`--adopt`): every
//! snapshot mapped to the identity that tool gave it
//! (`stash_api::adopt`), or set apart with the reason it does not fit.

use repo_format::{Id, Snapshot};
use stash_api::adopt::{map, Facts, Identity, Misfit, Tool};

/// A repository's snapshots as `tool` laid them out, oldest first.
pub struct Adoption {
    /// The tool.
    pub tool: Tool,
    /// Snapshots that fit, with their identity.
    pub fits: Vec<(Id, Snapshot, Identity)>,
    /// Snapshots that do not, with the reason.
    pub misfits: Vec<(Id, Snapshot, Misfit)>,
}

impl Adoption {
    /// Maps every snapshot (as `Repository::snapshots_readable` sorts
    /// them).
    pub fn of(tool: Tool, snapshots: Vec<(Id, Snapshot)>) -> Adoption {
        let mut fits = Vec::new();
        let mut misfits = Vec::new();
        for (id, s) in snapshots {
            let facts = Facts {
                hostname: &s.hostname,
                paths: &s.paths,
                tags: &s.tags,
            };
            match map(tool, facts) {
                Ok(identity) => fits.push((id, s, identity)),
                Err(m) => misfits.push((id, s, m)),
            }
        }
        Adoption {
            tool,
            fits,
            misfits,
        }
    }

    /// Why the repository as a whole is not the tool's: it holds snapshots
    /// but none of them fits.
    pub fn not_the_tools(&self) -> Option<String> {
        if !self.fits.is_empty() || self.misfits.is_empty() {
            return None;
        }
        Some(format!(
            "this repository does not look like {}'s: none of its {} snapshot(s) fits {}'s layout ({})",
            self.tool.name(),
            self.misfits.len(),
            self.tool.name(),
            self.tool.layout()
        ))
    }
}

/// What a snapshot carries, for reporting one that does not fit.
pub fn found(s: &Snapshot) -> String {
    format!(
        "host {:?}, paths [{}], tags [{}]",
        s.hostname,
        s.paths.join(", "),
        s.tags.join(", ")
    )
}
