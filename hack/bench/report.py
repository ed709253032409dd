#!/usr/bin/env python3
"""Turns the /usr/bin/time -v logs of hack/bench.sh into a table with
stash/restic ratios. usage: report.py RESULTS_DIR CORPUS_BYTES"""
import glob
import os
import re
import sys


def parse(path):
    t = open(path).read()
    def grab(pat, conv=float):
        m = re.search(pat, t)
        return conv(m.group(1)) if m else None
    wall = grab(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", str)
    parts = [float(p) for p in wall.split(":")]
    secs = parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) == 3 else 0)
    user = grab(r"User time \(seconds\): (\S+)")
    sys_ = grab(r"System time \(seconds\): (\S+)")
    rss = grab(r"Maximum resident set size \(kbytes\): (\d+)", int)
    status = grab(r"Exit status: (\d+)", int)
    return {"wall": secs, "cpu": user + sys_, "rss_mb": rss / 1024, "status": status}


def main():
    results, corpus_bytes = sys.argv[1], int(sys.argv[2])
    phases = ["backup-first", "backup-nochange", "backup-5pct", "restore", "check-read-data", "prune"]
    extra = sorted({os.path.basename(p).split(".")[1] for p in glob.glob(f"{results}/*.*.run*.time")} - set(phases))
    tools = [t for t in ["stash", "restic", "restic-current", "pg_dump"]
             if glob.glob(f"{results}/{t}.*.run*.time")]
    # Phases over another input than the corpus (the database dump).
    sizes = {}
    if os.path.exists(f"{results}/sizes"):
        for line in open(f"{results}/sizes"):
            name, n = line.split()
            sizes[name] = int(n)
    rows = []
    for phase in phases + extra:
        best = {}
        for tool in tools:
            runs = [parse(p) for p in sorted(glob.glob(f"{results}/{tool}.{phase}.run*.time"))]
            if not runs:
                continue
            if any(r["status"] not in (0, None) for r in runs):
                print(f"warning: {tool} {phase} exited non-zero", file=sys.stderr)
            best[tool] = min(runs, key=lambda r: r["wall"])
        if "stash" not in best or len(best) < 2:
            continue
        rows.append((phase, best))
    mb = corpus_bytes / (1 << 20)
    print(f"corpus: {mb:.0f} MiB; best of the runs per tool and phase (warm cache)\n")
    hdr = f"{'phase':<17}{'tool':<15}{'wall s':>8}{'MB/s':>9}{'CPU s':>8}{'RSS MiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for phase, best in rows:
        for tool in tools:
            if tool not in best:
                continue
            r = best[tool]
            pmb = sizes.get(phase, corpus_bytes) / (1 << 20)
            print(f"{phase:<17}{tool:<15}{r['wall']:>8.2f}{pmb / max(r['wall'], 1e-9):>9.1f}{r['cpu']:>8.2f}{r['rss_mb']:>9.1f}")
        s = best["stash"]
        for tool in tools[1:]:
            if tool not in best:
                continue
            q = best[tool]
            label = {"restic": "ratio", "restic-current": "ratio-current"}.get(tool, f"ratio-{tool}")
            print(f"{'':<17}{label:<15}{s['wall'] / q['wall']:>8.2f}{q['wall'] / s['wall']:>9.2f}"
                  f"{s['cpu'] / max(q['cpu'], 1e-9):>8.2f}{s['rss_mb'] / q['rss_mb']:>9.2f}")
    print("\nratio rows (vs Debian's restic, and vs a current restic when built):"
          "\n           wall and CPU as stash/restic (lower is better for stash),"
          "\n           MB/s as stash throughput / restic throughput (higher is better),"
          "\n           RSS as stash/restic."
          "\ndb-backup: MB/s is of the dump; ratio-pg_dump compares with pg_dump > /dev/null alone"
          "\n           (stash's time over pg_dump's: what backing up adds to the dump)."
          "\nprune: MB/s is of the corpus, not of the repository pruned (restic 0.14 made it,"
          "\n           about 30 % garbage; each tool prunes an identical copy).")


if __name__ == "__main__":
    main()
