//! Conditional status writes: the controller shares the status of sessions
//! with the node agents, so it writes only the top-level fields it changed,
//! and only if nobody wrote the object since the version it decided on.
//!
//! The patch carries `metadata.resourceVersion`; the apiserver then treats it
//! as a precondition and answers 409 Conflict when the object moved on. The
//! caller re-reads the object and decides again ([`Written::Conflict`]),
//! so an agent's item update made in between is never overwritten.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
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
