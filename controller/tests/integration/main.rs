//! The controller's tests against a real kube-apiserver (see `envtest/`),
//! in one test binary.

mod auto_backup;
mod checks;
mod common;
mod deploy;
mod finalizers;
mod jobs;
mod leader;
mod notifications;
mod privileges;
mod restore;
mod retention;
mod schedule;
mod security;
mod sessions;
mod webhook;
mod wedge;
