//! JSON patches by which an agent claims, reports on and finishes a piece
//! of work in a session's status (the protocol is described in the
//! `stash_api` crate docs). Each patch first `test`s what it relies on — the
//! item's identity, its phase or the claim — so two writers can never both
//! succeed, and an agent never writes over an item it no longer owns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Map, Value};

/// Where in a session's status a piece of work lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `status.items[i]`, with the identity the item must still have.
    Item {
        /// Its index.
        index: usize,
        /// Namespace of the pod.
        namespace: String,
        /// The pod.
        pod: String,
        /// The pod volume.
        volume: String,
    },
    /// `status.retention`.
    Retention,
    /// A Repository's `status.check`, with the run's `scheduledTime` (as
    /// written) that identifies it.
    Check {
        /// The run's `scheduledTime`, as the status holds it.
        scheduled: String,
    },
}

impl Slot {
    fn path(&self) -> String {
        match self {
            Slot::Item { index, .. } => format!("/status/items/{index}"),
            Slot::Retention => "/status/retention".to_owned(),
            Slot::Check { .. } => "/status/check".to_owned(),
        }
    }

    fn identity_tests(&self) -> Vec<Value> {
        let base = self.path();
        match self {
            Slot::Item {
                namespace,
                pod,
                volume,
                ..
            } => vec![
                test(&base, "namespace", json!(namespace)),
                test(&base, "pod", json!(pod)),
                test(&base, "volume", json!(volume)),
            ],
            Slot::Retention => Vec::new(),
            Slot::Check { scheduled } => vec![test(&base, "scheduledTime", json!(scheduled))],
        }
    }
}

fn test(base: &str, field: &str, value: Value) -> Value {
    json!({"op": "test", "path": format!("{base}/{field}"), "value": value})
}

fn add(base: &str, field: &str, value: Value) -> Value {
    json!({"op": "add", "path": format!("{base}/{field}"), "value": value})
}

/// What the claimed item was before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Pending: nobody has it.
    Pending,
    /// Running under another claim whose agent has stopped answering.
    Abandoned(String),
}

/// Claims `slot` for `instance`.
pub fn claim(slot: &Slot, previous: &Previous, instance: &str, attempt: i32, now: &Time) -> Value {
    let base = slot.path();
    let mut ops = slot.identity_tests();
    match previous {
        Previous::Pending => ops.push(test(&base, "phase", json!("Pending"))),
        Previous::Abandoned(old) => {
            ops.push(test(&base, "phase", json!("Running")));
            ops.push(test(&base, "claimedBy", json!(old)));
        }
    }
    ops.push(add(&base, "phase", json!("Running")));
    ops.push(add(&base, "claimedBy", json!(instance)));
    ops.push(add(&base, "attempt", json!(attempt)));
    ops.push(add(&base, "heartbeatTime", json!(now)));
    ops.push(add(&base, "startTime", json!(now)));
    let message = match previous {
        Previous::Pending => "started".to_owned(),
        Previous::Abandoned(old) => format!("taken over from {old}, whose heartbeat stopped"),
    };
    ops.push(add(&base, "message", json!(message)));
    Value::Array(ops)
}

/// Sets `fields` on `slot` if `instance` still holds it; `heartbeatTime`
/// is refreshed too.
pub fn update(slot: &Slot, instance: &str, now: &Time, fields: Map<String, Value>) -> Value {
    let base = slot.path();
    let mut ops = slot.identity_tests();
    ops.push(test(&base, "claimedBy", json!(instance)));
    ops.push(add(&base, "heartbeatTime", json!(now)));
    for (k, v) in fields {
        ops.push(add(&base, &k, v));
    }
    Value::Array(ops)
}

/// Sets the waiting `message` of a still Pending `slot` (before any claim).
pub fn waiting(slot: &Slot, message: &str) -> Value {
    let base = slot.path();
    let mut ops = slot.identity_tests();
    ops.push(test(&base, "phase", json!("Pending")));
    ops.push(add(&base, "message", json!(message)));
    Value::Array(ops)
}

/// Whether a failed status write proves that the claim is gone: the
/// apiserver refused the patch (a `test` failed: 422, or 400 for a path
/// that no longer exists) or the session is gone (404, 410). Anything else
/// — 429, 5xx, 409, timeouts, broken connections — proves nothing, and the
/// work goes on.
pub fn proves_loss(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 400 | 404 | 410 | 422),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn item() -> Slot {
        Slot::Item {
            index: 2,
            namespace: "a".into(),
            pod: "p".into(),
            volume: "data".into(),
        }
    }

    fn apply(doc: &mut Value, patch: Value) -> Result<(), String> {
        let p: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(doc, &p).map_err(|e| e.to_string())
    }

    fn session() -> Value {
        json!({"status": {"items": [
            {"namespace": "a", "pod": "p", "volume": "x", "phase": "Pending"},
            {"namespace": "a", "pod": "q", "volume": "data", "phase": "Pending"},
            {"namespace": "a", "pod": "p", "volume": "data", "phase": "Pending"},
        ]}})
    }

    #[test]
    fn only_one_claim_wins_and_only_the_holder_updates() {
        let now = stash_api::time::to_time(Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap());
        let mut doc = session();
        apply(
            &mut doc,
            claim(&item(), &Previous::Pending, "n/a/1", 1, &now),
        )
        .unwrap();
        let it = &doc["status"]["items"][2];
        assert_eq!(it["phase"], "Running");
        assert_eq!(it["claimedBy"], "n/a/1");
        // A second agent racing for the same item loses.
        assert!(apply(
            &mut doc,
            claim(&item(), &Previous::Pending, "n/b/1", 1, &now)
        )
        .is_err());
        // Updates by the holder land; by anyone else, not.
        let mut f = Map::new();
        f.insert("bytesDone".into(), json!(10));
        apply(&mut doc, update(&item(), "n/a/1", &now, f.clone())).unwrap();
        assert_eq!(doc["status"]["items"][2]["bytesDone"], 10);
        assert!(apply(&mut doc, update(&item(), "n/b/1", &now, f)).is_err());
        // A takeover names the old claim; once taken, the old holder is out.
        let old = Previous::Abandoned("n/a/1".into());
        apply(&mut doc, claim(&item(), &old, "n/a/2", 2, &now)).unwrap();
        assert_eq!(doc["status"]["items"][2]["attempt"], 2);
        assert!(apply(&mut doc, update(&item(), "n/a/1", &now, Map::new())).is_err());
        assert!(apply(&mut doc, claim(&item(), &old, "n/a/3", 3, &now)).is_err());
    }

    #[test]
    fn only_a_refused_patch_or_a_gone_session_proves_a_lost_claim() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        for code in [400, 404, 410, 422] {
            assert!(proves_loss(&api(code)), "{code}");
        }
        for code in [401, 403, 408, 409, 429, 500, 502, 503, 504] {
            assert!(!proves_loss(&api(code)), "{code}");
        }
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert!(!proves_loss(&kube::Error::ReadEvents(io)));
        assert!(!proves_loss(&kube::Error::Service(
            "connection reset".into()
        )));
    }

    #[test]
    fn a_check_claim_names_its_run() {
        let now = stash_api::time::to_time(Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 5).unwrap());
        let mut doc = json!({"status": {"check": {
            "phase": "Pending", "scheduledTime": "2026-12-06T03:00:00Z"}}});
        let old = Slot::Check {
            scheduled: "2026-12-05T03:00:00Z".into(),
        };
        assert!(apply(&mut doc, claim(&old, &Previous::Pending, "n/a/1", 1, &now)).is_err());
        let run = Slot::Check {
            scheduled: "2026-12-06T03:00:00Z".into(),
        };
        apply(&mut doc, claim(&run, &Previous::Pending, "n/a/1", 1, &now)).unwrap();
        assert_eq!(doc["status"]["check"]["claimedBy"], "n/a/1");
        assert!(apply(&mut doc, claim(&run, &Previous::Pending, "n/b/1", 1, &now)).is_err());
        // The controller expired it (claimedBy removed): the holder is out.
        doc["status"]["check"]
            .as_object_mut()
            .unwrap()
            .remove("claimedBy");
        assert!(apply(&mut doc, update(&run, "n/a/1", &now, Map::new())).is_err());
    }

    #[test]
    fn an_item_that_moved_is_not_touched() {
        let now = stash_api::time::to_time(Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap());
        let mut doc = session();
        // Index 1 holds another pod's volume: the identity test fails.
        let wrong = Slot::Item {
            index: 1,
            namespace: "a".into(),
            pod: "p".into(),
            volume: "data".into(),
        };
        assert!(apply(
            &mut doc,
            claim(&wrong, &Previous::Pending, "n/a/1", 1, &now)
        )
        .is_err());
        assert!(apply(&mut doc, waiting(&wrong, "why")).is_err());
        apply(&mut doc, waiting(&item(), "pod not running")).unwrap();
        assert_eq!(doc["status"]["items"][2]["message"], "pod not running");
        assert_eq!(doc["status"]["items"][2]["phase"], "Pending");
    }
}
