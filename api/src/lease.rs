//! One holder at a time through a `coordination.k8s.io/v1` Lease: the
//! controller's leader election and the agents' maintenance runs (one
//! forget/prune per repository) share this step.
//!
//! The holder renews `spec.renewTime`; anyone may take the Lease when it is
//! free or when `renewTime + leaseDurationSeconds` has passed. Writes carry
//! the resourceVersion they read, so two writers racing for an expired Lease
//! cannot both win: the loser sees a conflict and reports the Lease busy.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// What one attempt to take or renew a Lease found.
#[derive(Debug)]
pub enum Attempt {
    /// The Lease is ours now (as written).
    Held(Box<Lease>),
    /// Someone else holds it, or won a race for it.
    Busy {
        /// The holder's identity, when known.
        holder: Option<String>,
    },
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Takes the Lease `name` for `identity` if it is free, expired or already
/// ours, renewing it for `duration`; creates it if it does not exist.
pub async fn take_or_renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<Attempt, kube::Error> {
    let seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(l) => Ok(Attempt::Held(Box::new(l))),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Busy { holder: None }),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == identity;
    if !ours && !holder.is_empty() {
        let valid_ms = i64::from(spec.lease_duration_seconds.unwrap_or(seconds)) * 1000;
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(0);
        if renewed + valid_ms > Utc::now().timestamp_millis() {
            return Ok(Attempt::Busy {
                holder: Some(holder),
            });
        }
    }
    if !ours {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now_micro());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now_micro());
    // replace carries the resourceVersion read above: a concurrent writer
    // makes this fail with 409 instead of both winning.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(l) => Ok(Attempt::Held(Box::new(l))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Busy { holder: None }),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if `identity` holds it, after `edit` changed it (e.g.
/// to record what the holder did), so the next holder need not wait for it
/// to expire. Returns whether it was ours.
pub async fn release(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    edit: impl FnOnce(&mut Lease),
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(identity)
    {
        return Ok(false);
    }
    edit(&mut lease);
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
    }
    api.replace(name, &PostParams::default(), &lease).await?;
    Ok(true)
}
