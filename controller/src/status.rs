//! Conditional status writes: the controller shares the status of sessions
//! with the node agents, so it writes only the top-level fields it changed,
//! and only if nobody wrote the object since the version it decided on.
//!
//! The patch carries `metadata.resourceVersion`; the apiserver then treats it
//! as a precondition and answers 409 Conflict when the object moved on. The
//! caller re-reads the object and decides again ([`Written::Conflict`]),
//! so an agent's item update made in between is never overwritten.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use prometheus::IntCounter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{kube_err, Result};

/// What became of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The status now holds the new fields.
    Done,
    /// Nothing differed: no request was made.
    Unchanged,
    /// The object changed since it was read: read it again and decide again.
    Conflict,
}

/// The top-level status fields of `new` that differ from `old` (a field
/// `new` drops becomes `null`), or `None` when nothing differs.
pub fn changed_fields<S: Serialize>(old: &S, new: &S) -> Option<Map<String, Value>> {
    let as_map = |s: &S| match serde_json::to_value(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let mut out = Map::new();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Writes the fields of `new` that differ from `old` into `obj`'s status,
/// on condition that `obj` is still at the `resourceVersion` it was read
/// at. `action` names the write in errors ("update BackupSession status").
pub async fn write_if_unchanged<K, S>(
    api: &Api<K>,
    obj: &K,
    old: &S,
    new: &S,
    action: &'static str,
) -> Result<Written>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let Some(fields) = changed_fields(old, new) else {
        return Ok(Written::Unchanged);
    };
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": obj.resource_version()},
        "status": fields,
    });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(object = %format!("{ns}/{name}"), "status changed meanwhile; deciding again");
            Ok(Written::Conflict)
        }
        Err(e) => Err(kube_err(action, &ns, &name)(e)),
    }
}

/// How often a reconciliation reads its object again after a conflict
/// before it gives up and requeues.
const ATTEMPTS: usize = 5;

/// Runs one decision, `step`, on `obj` as read, and again on the object
/// read afresh each time `step` answers `None` (its write met a
/// [`Written::Conflict`], counted in `conflicts`), at most [`ATTEMPTS`]
/// times before it requeues after a second. An object deleted meanwhile
/// waits for the next change. `action` names the read in errors ("get
/// BackupSession").
pub async fn decide_until_written<K, F, Fut>(
    api: &Api<K>,
    obj: Arc<K>,
    conflicts: &IntCounter,
    action: &'static str,
    mut step: F,
) -> Result<Action>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    F: FnMut(Arc<K>) -> Fut,
    Fut: Future<Output = Result<Option<Action>>>,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let mut current = obj;
    for _ in 0..ATTEMPTS {
        if let Some(action) = step(current.clone()).await? {
            return Ok(action);
        }
        conflicts.inc();
        match api
            .get_opt(&name)
            .await
            .map_err(kube_err(action, &ns, &name))?
        {
            Some(fresh) => current = Arc::new(fresh),
            None => return Ok(Action::await_change()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_fields_are_written() {
        let old = json!({"phase": "Running", "items": [1, 2], "progress": "0/2", "gone": 1});
        let new = json!({"phase": "Running", "items": [1, 2], "progress": "1/2"});
        let fields = changed_fields(&old, &new).unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"progress": "1/2", "gone": null})
        );
        assert!(changed_fields(&old, &old).is_none());
    }
}
