//! End-to-end tests of the `stash` command line, with real restic (Debian's
//! `restic` package) as the oracle: restic must read, check and restore what
//! we write, and we must read what restic writes.

mod adopt;
mod backends;
mod bad_input;
mod crash;
mod database;
mod forget;
mod interop;
mod keys;
mod maintenance;
mod pipeline;
mod stream;
mod support;
