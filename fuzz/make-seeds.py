#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from
restic-made repositories: a version 1 and a version 2 repository, made with
the restic on PATH (restic 0.14 from Debian when the seeds were made), with
the password "stash-fuzz". Needs restic, zstd and Python's `cryptography`.

    python3 fuzz/make-seeds.py [MASTERKEY_JSON]

The fuzz targets decrypt with one fixed master key (stash_fuzz::fixed_key);
restic makes a new one for each `init`, so this script prints the new key's
bytes for src/lib.rs, or, given the JSON of `restic cat masterkey` of an
earlier run, makes the repositories' files decrypt with that key by sealing
them again. Only a few small files per target are kept (a few KB each).
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

PASSWORD = "stash-fuzz"
CORPUS = Path(__file__).resolve().parent / "corpus"


def restic(repo, *args, check=True):
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
    return subprocess.run(
        ["restic", "--no-lock", "-q", "--repo", str(repo), *args],
        env=env, check=check, capture_output=True,
    ).stdout


class Key:
    def __init__(self, encrypt, mac_k, mac_r):
        self.encrypt, self.mac_k, self.mac_r = encrypt, mac_k, mac_r

    @classmethod
    def from_json(cls, j):
        d = lambda s: base64.b64decode(s)
        return cls(d(j["encrypt"]), d(j["mac"]["k"]), d(j["mac"]["r"]))

    def _mac(self, iv, ct):
        enc = Cipher(algorithms.AES(self.mac_k), modes.ECB()).encryptor()
        s = enc.update(iv) + enc.finalize()
        return Poly1305.generate_tag(self.mac_r + s, ct)

    def decrypt(self, data):
        iv, ct, tag = data[:16], data[16:-16], data[-16:]
        assert self._mac(iv, ct) == tag, "MAC"
        dec = Cipher(algorithms.AES(self.encrypt), modes.CTR(iv)).decryptor()
        return dec.update(ct) + dec.finalize()

    def encrypt_(self, plain, iv=None):
        iv = iv or os.urandom(16)
        enc = Cipher(algorithms.AES(self.encrypt), modes.CTR(iv)).encryptor()
        ct = enc.update(plain) + enc.finalize()
        return iv + ct + self._mac(iv, ct)


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-19"], input=data, check=True,
                          capture_output=True).stdout


def main():
    fixed = Key.from_json(json.loads(Path(sys.argv[1]).read_text())) if len(sys.argv) > 1 else None
    work = Path(tempfile.mkdtemp(prefix="stash-fuzz-seeds-"))
    src = work / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "dir" / "bin").write_bytes(bytes(range(256)) * 12)
    (src / "dir" / "sub" / 'name with "quotes" and \u00e9').write_text("x" * 500)
    os.symlink("a.txt", src / "link")
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
    for version in ("1", "2"):
        repo = work / f"r{version}"
        subprocess.run(["restic", "-q", "--repo", str(repo), "init", "--repository-version", version],
                       env=env, check=True, capture_output=True)
        for host, tag in (("h", "t1"), ("h2", "t2")):
            subprocess.run(["restic", "-q", "--repo", str(repo), "backup", "--host", host,
                            "--tag", tag, str(src)], env=env, check=True, capture_output=True)
        master = json.loads(restic(repo, "cat", "masterkey"))
        key = Key.from_json(master)
        if fixed is None:
            fixed = key
            print("new fixed key (src/lib.rs fixed_key):", json.dumps(master))
            for part in (key.encrypt, key.mac_k, key.mac_r):
                print(", ".join(f"0x{b:02x}" for b in part))
        v = f"v{version}"
        reseal = lambda stored: fixed.encrypt_(key.decrypt(stored))

        # The config: plaintext, and as stored (kind 0 of `unpacked`).
        cfg = (repo / "config").read_bytes()
        write("config", f"{v}", key.decrypt(cfg))
        write("unpacked", f"config-{v}", b"\x00" + reseal(cfg))
        write("unpacked", f"config-{v}-sealed", b"\x80" + key.decrypt(cfg))
        for kind, sub, target in ((1, "index", "index"), (2, "snapshots", "snapshot")):
            for i, f in enumerate(sorted((repo / sub).iterdir())[:2]):
                stored = f.read_bytes()
                plain = key.decrypt(stored)
                write("unpacked", f"{target}-{v}-{i}", bytes([kind]) + reseal(stored))
                write("unpacked", f"{target}-{v}-{i}-sealed", bytes([0x80 | kind]) + plain)
                if plain[:1] == b"\x02":
                    plain = subprocess.run(["zstd", "-d", "-q", "-c"], input=plain[1:],
                                           check=True, capture_output=True).stdout
                write(target, f"{v}-{i}", plain)
        # A lock, as restic holds it during a backup (of stdin kept open).
        held = subprocess.Popen(["restic", "-q", "--repo", str(repo), "backup", "--stdin"],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not any((repo / "locks").iterdir()):
            time.sleep(0.1)
        stored = next((repo / "locks").iterdir()).read_bytes()
        held.stdin.close()
        held.wait()
        plain = key.decrypt(stored)
        write("unpacked", f"lock-{v}", b"\x03" + reseal(stored))
        write("unpacked", f"lock-{v}-sealed", b"\x83" + plain)
        if plain[:1] == b"\x02":
            plain = subprocess.run(["zstd", "-d", "-q", "-c"], input=plain[1:],
                                   check=True, capture_output=True).stdout
        write("lock", v, plain)
        # Key files: restic's own (its scrypt costs too much to open in a
        # fuzz run), and one with N=1024 that the target opens.
        for f in sorted((repo / "keys").iterdir())[:1]:
            write("key", f"{v}-restic", f.read_bytes())
        # Packs: as stored (resealed with the fixed key), and their headers.
        for i, f in enumerate(sorted((repo / "data").rglob("*"))):
            if not f.is_file():
                continue
            b = f.read_bytes()
            hlen = int.from_bytes(b[-4:], "little")
            blobs, hdr = b[: -4 - hlen], b[-4 - hlen : -4]
            header = key.decrypt(hdr)
            out, pos, new_header = bytearray(), 0, bytearray()
            e = 0
            while e < len(header):
                t = header[e]
                n = 37 if t < 2 else 41
                length = int.from_bytes(header[e + 1 : e + 5], "little")
                blob = key.decrypt(blobs[pos : pos + length])
                out += fixed.encrypt_(blob)
                new_header += header[e : e + n]
                if t in (1, 3):
                    plain = blob
                    flags = 1
                    if t == 3:
                        flags = 3
                        blob = int.from_bytes(header[e + 5 : e + 9], "little").to_bytes(4, "little") + blob
                        plain = subprocess.run(["zstd", "-d", "-q", "-c"], input=plain,
                                               check=True, capture_output=True).stdout
                    write("tree", f"{v}-{i}-{e}", plain)
                    write("blob_sealed", f"tree-{v}-{i}-{e}", bytes([flags]) + blob)
                pos += length
                e += n
            write("pack_header", f"{v}-{i}", header)
            sealed = fixed.encrypt_(bytes(new_header))
            if len(out) + len(sealed) <= 4096:
                write("pack", f"{v}-{i}", bytes(out) + sealed + len(sealed).to_bytes(4, "little"))
    # One blob of each remaining form: plain data, compressed data.
    write("blob_sealed", "data", b"\x00" + b"hello\n")
    data = b"hello, compressed " * 20
    write("blob_sealed", "data-zstd", b"\x02" + len(data).to_bytes(4, "little") + zstd(data))
    # A key file with cheap scrypt parameters, sealing the fixed key.
    salt = os.urandom(64)
    user = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=1024, r=8, p=1, dklen=64)
    user_key = Key(user[:32], user[32:48], user[48:])
    master = json.dumps({
        "mac": {"k": base64.b64encode(fixed.mac_k).decode(), "r": base64.b64encode(fixed.mac_r).decode()},
        "encrypt": base64.b64encode(fixed.encrypt).decode(),
    }).encode()
    write("key", "cheap", json.dumps({
        "created": "2026-12-04T18:34:03.68913423Z", "username": "root", "hostname": "vm",
        "kdf": "scrypt", "N": 1024, "r": 8, "p": 1,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(user_key.encrypt_(master)).decode(),
    }).encode())
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
