#!/usr/bin/env python3
"""Deterministic benchmark corpus for hack/bench.sh.

Many small files, a few large files of mixed compressibility, some duplicated
content. SIZE_MB scales everything (default 1024). Same seed, same bytes.

usage: corpus.py DIR [SIZE_MB]
       corpus.py --modify DIR PERCENT SEED   (change PERCENT % of the files)
       corpus.py --remove DIR PERCENT SEED   (delete about PERCENT % of the bytes, whole files)
"""
import os
import random
import sys

WORDS = (b"backup restore volume snapshot cluster node pod kubelet repository "
         b"pack blob index tree chunk encrypt compress deduplicate retention ").split()


def text(rng, n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(WORDS) for _ in range(16)) + b"\n"
    return bytes(out[:n])


def mixed(rng, n):
    # Alternating runs of random and text data, like real files.
    out = bytearray()
    while len(out) < n:
        k = rng.randint(64 << 10, 1 << 20)
        out += rng.randbytes(k) if rng.random() < 0.5 else text(rng, k)
    return bytes(out[:n])


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def generate(root, size_mb):
    rng = random.Random(0x57A5)
    total = size_mb << 20
    # ~10 % in small files, ~25 % in medium, ~50 % in large, ~15 % duplicates.
    small_bytes, medium_bytes, large_bytes = total // 10, total // 4, total // 2
    n = 0
    written = 0
    while written < small_bytes:
        size = rng.randint(0, 24 << 10)
        d = os.path.join(root, "small", f"d{n // 500:03d}", f"s{n // 50:04d}")
        data = text(rng, size) if rng.random() < 0.6 else rng.randbytes(size)
        write(os.path.join(d, f"f{n:06d}.dat"), data)
        written += size
        n += 1
    written = 0
    m = 0
    while written < medium_bytes:
        size = rng.randint(256 << 10, 4 << 20)
        write(os.path.join(root, "medium", f"m{m:04d}.bin"), mixed(rng, size))
        written += size
        m += 1
    per_large = max(large_bytes // 4, 1 << 20)
    kinds = [("random", lambda k: rng.randbytes(k)), ("text", lambda k: text(rng, k)),
             ("mixed-a", lambda k: mixed(rng, k)), ("mixed-b", lambda k: mixed(rng, k))]
    for name, gen in kinds:
        write(os.path.join(root, "large", f"{name}.img"), gen(per_large))
    # Duplicated content: a large file again, and a tree of small files again.
    with open(os.path.join(root, "large", "mixed-a.img"), "rb") as f:
        write(os.path.join(root, "dup", "mixed-a-copy.img"), f.read())
    for i in range(0, n, 7):
        src = os.path.join(root, "small", f"d{i // 500:03d}", f"s{i // 50:04d}", f"f{i:06d}.dat")
        with open(src, "rb") as f:
            write(os.path.join(root, "dup", "small", f"c{i:06d}.dat"), f.read())


def modify(root, percent, seed):
    rng = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    chosen = rng.sample(files, max(1, len(files) * percent // 100))
    for path in chosen:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            # Overwrite a small region in the middle and append a little.
            f.seek(size // 2)
            f.write(rng.randbytes(min(4096, max(1, size // 10))))
            f.seek(0, 2)
            f.write(b"modified\n")
    return len(chosen)


def remove(root, percent, seed):
    rng = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    rng.shuffle(files)
    total = sum(os.path.getsize(f) for f in files)
    goal, gone = total * percent // 100, 0
    for path in files:
        if gone >= goal:
            break
        gone += os.path.getsize(path)
        os.remove(path)
    return gone


if __name__ == "__main__":
    if sys.argv[1] == "--modify":
        print(modify(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), "files modified")
    elif sys.argv[1] == "--remove":
        print(remove(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), "bytes removed")
    else:
        generate(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1024)
