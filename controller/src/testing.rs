//! A mock API server for unit tests of reconcile decisions: each test
//! scripts the requests it expects, in order, and the answers
//! (controller-rs's "API server verifier").

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Client;
use serde_json::Value;
use stash_api::BackupSession;
use tokio::task::JoinHandle;

use crate::{Context, Metrics, Settings};

/// The test's end of the mock: requests to check and answer.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A context on a mock client, with `sessions` in the session cache.
pub fn context(sessions: Vec<BackupSession>) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer): (Store<BackupSession>, _) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for s in sessions {
        writer.apply_watcher_event(&watcher::Event::InitApply(s));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context {
        recorder: Recorder::new(client.clone(), Reporter::from("test")),
        client,
        settings: Settings {
            concurrency: 1,
            job_image: Some(crate::webhook::RestoreWaitImage::Fixed(
                "stash-agent:test".into(),
            )),
            ..Settings::new("test")
        },
        metrics: Metrics::default(),
        sessions: store,
        configs: ready_store(),
        repositories: ready_store(),
        ticks: crate::clock::Ticks::default(),
        firing: crate::clock::Firing::default(),
        notifier: crate::notify::Notifier::default(),
        lost_since: crate::session::LostSince::default(),
        agent_secrets: crate::agent_secrets::SyncLock::default(),
    };
    (Arc::new(ctx), handle)
}

/// An empty cache, ready: lookups miss and fall back to requests.
fn ready_store<K>() -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// Waits for the next request, checks its method and path, and returns
/// its JSON body (Null when empty) with the means to answer it.
pub async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (req, send) = handle
        .next_request()
        .await
        .unwrap_or_else(|| panic!("expected {method} {path}, but no request came"));
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        (method, path),
        "unexpected request"
    );
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, send)
}

/// Waits for request `method path` (see [`expect`]) and answers it with
/// `status` and JSON `body`.
pub async fn respond(handle: &mut Handle, method: &str, path: &str, status: u16, body: &Value) {
    let (_, send) = expect(handle, method, path).await;
    answer(send, status, body);
}

/// Answers with `status` and JSON `body`.
pub fn answer(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// A 409 Conflict status, as the apiserver sends it.
pub fn conflict() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

/// Answers every remaining request with its own body (events and the
/// like), until the client is dropped; returns how many came.
pub fn echo_rest(mut handle: Handle) -> JoinHandle<Vec<(String, String, Value)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            answer(send, 200, &body);
            seen.push((method, path, body));
        }
        seen
    })
}
