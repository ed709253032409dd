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

/// Of `snapshots` (as `Repository::snapshots_readable` lists them), the one
/// `sel` chooses at `at` (the latest when `None`) among those that fit
/// `tool`'s layout, and the tree of its source's contents (below the paths
/// the tool recorded, such as K8up's `/data/<pvc>`), with a description.
/// Snapshots of another layout in the repository are an error: nothing is
/// guessed.
pub fn choose_tree(
    r: &repo_format::Repository,
    tool: Tool,
    snapshots: Vec<(Id, Snapshot)>,
    sel: &stash_api::adopt::Selector,
    at: Option<chrono::DateTime<chrono::FixedOffset>>,
) -> anyhow::Result<(Id, Snapshot, Id, String)> {
    use anyhow::{anyhow, Context as _};
    use stash_api::adopt::{choose, Adopted};
    let adoption = Adoption::of(tool, snapshots);
    if let Some(v) = adoption.not_the_tools() {
        anyhow::bail!("{v}; see `stash snapshots --adopt` for what each snapshot carries");
    }
    let candidates: Vec<Adopted> = adoption
        .fits
        .iter()
        .map(|(id, s, identity)| Adopted {
            id: id.to_hex(),
            time: s.time,
            identity: identity.clone(),
        })
        .collect();
    let i = choose(&candidates, sel, at).map_err(|e| anyhow!("{e}"))?;
    let (id, s, identity) = adoption.fits.into_iter().nth(i).expect("chosen");
    let mut tree = s.tree;
    let mut below = String::new();
    for name in &identity.subdir {
        below.push('/');
        below.push_str(name);
        let t = r
            .load_tree(&tree)
            .with_context(|| format!("snapshot {}: reading {below:?}", id.short()))?;
        let node = t
            .nodes
            .iter()
            .find(|n| n.name == name.as_bytes())
            .ok_or_else(|| {
                anyhow!(
                    "snapshot {}: {below:?} is not in the snapshot, though {} records it",
                    id.short(),
                    tool.name()
                )
            })?;
        if node.node_type != repo_format::NodeType::Dir {
            anyhow::bail!("snapshot {}: {below:?} is not a directory", id.short());
        }
        tree = node.subtree.ok_or_else(|| {
            anyhow!(
                "snapshot {}: directory {below:?} without a tree",
                id.short()
            )
        })?;
    }
    let what = format!("{} ({})", identity.describe(), tool.name());
    Ok((id, s, tree, what))
}
