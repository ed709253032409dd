//! How deep a directory tree may go, and the stack the walks that recurse
//! over it run on.
//!
//! The archiver and the restore planner recurse once per directory level.
//! A pod can create a directory chain as deep as it likes and a tenant can
//! write a snapshot whose trees nest as deep as it likes; unbounded, either
//! overflows the stack, which aborts the whole process (the node agent, and
//! every other tenant's work on that node with it). So levels below
//! [`MAX_DEPTH`] are refused as an error of that one directory, and the
//! walks run on threads with [`STACK_SIZE`] of stack, which holds
//! `MAX_DEPTH` levels many times over (a level takes about 1-2 KiB in a
//! release build, up to 8 KiB in a debug build).
//!
//! `MAX_DEPTH` levels of one-character names already make a path of twice
//! `PATH_MAX` (4096): no path-based tool can reach such files.

use std::path::Path;

/// The deepest directory level walked (counting the components of the
/// path, the target's own included).
pub const MAX_DEPTH: usize = 2048;

/// The stack of the threads that walk trees (reserved address space; only
/// the pages a deep walk touches are backed by memory).
pub const STACK_SIZE: usize = 128 << 20;

/// The number of components of `path`.
pub fn of_path(path: &Path) -> usize {
    path.components().count()
}

/// The number of levels of a snapshot path such as `/a/b/c` (3).
pub fn of_snapshot_path(p: &[u8]) -> usize {
    p.split(|&b| b == b'/').filter(|c| !c.is_empty()).count()
}

/// The message for a directory below [`MAX_DEPTH`].
pub fn too_deep() -> String {
    format!("directory nesting deeper than {MAX_DEPTH} levels: its content is left out")
}

/// Runs `f` on a thread with [`STACK_SIZE`] of stack and waits for it; a
/// panic in `f` is passed on.
pub fn on_deep_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("stash-walk".into())
            .stack_size(STACK_SIZE)
            .spawn_scoped(s, f)
            .expect("spawn a walker thread");
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// A thread pool whose threads have [`STACK_SIZE`] of stack, for walks that
/// recurse through rayon.
pub fn pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(STACK_SIZE)
        .thread_name(|i| format!("stash-walk-{i}"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths() {
        assert_eq!(of_snapshot_path(b"/"), 0);
        assert_eq!(of_snapshot_path(b"/a"), 1);
        assert_eq!(of_snapshot_path(b"/a/b/c"), 3);
        assert_eq!(of_path(Path::new("/a/b")), 3);
        assert_eq!(on_deep_stack(|| 7), 7);
    }
}
