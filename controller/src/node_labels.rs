//! Keeps each session's `node.stash.rs/<node>` labels equal to the nodes
//! with unfinished agent work in it (see [`stash_api::nodes`]), so that a
//! node agent watches only the sessions that concern it.
//!
//! Run at the start of every reconcile of a session, from the session as
//! the reconcile sees it: a status write (the controller's or an agent's)
//! brings another reconcile, which then brings the labels up to date; a
//! label patch brings one too, which finds them in agreement and writes
//! nothing.

use std::collections::BTreeSet;

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::error::{kube_err, Result};

/// Patches the node labels of `obj` to `wanted` if they differ; a session
/// deleted meanwhile is not an error.
pub(crate) async fn sync<K>(
    api: &Api<K>,
    obj: &K,
    wanted: &BTreeSet<String>,
    action: &'static str,
) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(patch) = stash_api::nodes::label_patch(obj.meta().labels.as_ref(), wanted) else {
        return Ok(());
    };
    let name = obj.name_any();
    tracing::debug!(name, ?wanted, "node labels");
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err(
            action,
            &obj.namespace().unwrap_or_default(),
            &name,
        )(e)),
    }
}
