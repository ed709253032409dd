//! The operations, named as users know them: each works on an open
//! [`Repository`](crate::Repository) and never the other way round.

pub mod backup;
pub mod beneath;
pub mod check;
pub mod copy;
pub mod depth;
pub mod dump;
pub mod filter;
pub mod forget;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod stdin;
