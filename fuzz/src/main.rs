//! `stash-fuzz TARGET`: one fuzz target under AFL++ (built with
//! `cargo afl build --features afl`, run by hack/fuzz.sh), or, in a plain
//! build, `stash-fuzz TARGET FILE...` replays files through the target:
//! how a crash AFL++ saved is reproduced with a backtrace.

use std::process::ExitCode;

fn usage() -> ExitCode {
    let names: Vec<&str> = stash_fuzz::TARGETS.iter().map(|t| t.name).collect();
    eprintln!(
        "usage: stash-fuzz TARGET [FILE...]; targets: {}",
        names.join(" ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next().as_deref().and_then(stash_fuzz::target) else {
        return usage();
    };
    run(target, args.collect())
}

#[cfg(feature = "afl")]
fn run(target: &'static stash_fuzz::Target, _files: Vec<String>) -> ExitCode {
    afl::fuzz!(|data: &[u8]| (target.run)(data));
    ExitCode::SUCCESS
}

#[cfg(not(feature = "afl"))]
fn run(target: &'static stash_fuzz::Target, files: Vec<String>) -> ExitCode {
    if files.is_empty() {
        return usage();
    }
    for f in files {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("stash-fuzz: {f}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let start = std::time::Instant::now();
        (target.run)(&data);
        println!("{f}: ok in {:?}", start.elapsed());
    }
    ExitCode::SUCCESS
}
