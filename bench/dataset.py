"""The benchmark data set: generated locally once (the local-disk target reads it in place) and
uploaded to the server under bench/data/ when the server's copy is missing or has the wrong size.

Owns: big/sparse random files, directories of 1k/10k small files, a source-tree tarball with .git.
Must not import: meshfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .rows import TARBALL, MiB, Params
from .server import PASSWORD, USER, Reva
from .sysutil import log, run

REPO = Path(__file__).resolve().parent.parent


def _random_file(path: Path, mb: int) -> None:
    if path.exists() and path.stat().st_size == mb * MiB:
        return
    log(f"generating {path.name} ({mb} MiB of random data)")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(MiB))
    tmp.rename(path)


def _small_files(d: Path, n: int) -> None:
    if d.is_dir() and len(os.listdir(d)) == n:
        return
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"file-{i:05d}.txt").write_bytes(b"x" * 100)


# a small real source tree (115 files, 1.8 MB): a whole pip tree (928 files) took 2-4 minutes per
# untar on the network mounts of this loaded 2-core machine, too long for interleaved rounds
SOURCE_DIRS = ("pip/_vendor/requests", "pip/_vendor/urllib3")


def _source_tarball(tar: Path) -> None:
    """A source tree from the venv, made a git repo (so `git status` has an index to check)."""
    if tar.exists():
        return
    log(f"building the source-tree tarball ({', '.join(SOURCE_DIRS)} + .git)")
    site = next(iter(Path(REPO / ".venv/lib").glob("python3*/site-packages")))
    tree = tar.parent / "srctree"
    shutil.rmtree(tree, ignore_errors=True)
    for d in SOURCE_DIRS:
        shutil.copytree(site / d, tree / Path(d).name)
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="b@x",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="b@x",
    )
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "tree"]):
        subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, timeout=300)
    run(["tar", "cf", str(tar), "-C", str(tree), "."], timeout=300)
    shutil.rmtree(tree)


def prepare(data: Path, work: Path, reva: Reva, p: Params) -> None:
    """Make the local data set and make sure the server holds the same under bench/data/."""
    (data / "data").mkdir(parents=True, exist_ok=True)
    _random_file(data / p.big, p.size_mb)
    _random_file(data / p.sparse, p.sparse_mb)
    for n in p.ls_sizes:
        _small_files(data / f"data/d{n}", n)
    _source_tarball(data / TARBALL)

    reva.mkcol("bench")
    reva.mkcol("bench/data")
    for rel in (p.big, p.sparse):
        if reva.size(f"bench/{rel}") != (data / rel).stat().st_size:
            log(f"uploading {rel} to the server")
            reva.put_file(f"bench/{rel}", data / rel)
    conf = work / "setup-rclone.conf"
    obscured = run(["rclone", "obscure", PASSWORD], timeout=30).out.strip()
    conf.write_text(
        f"[reva]\ntype = webdav\nurl = {reva.webdav}\nvendor = owncloud\nuser = {USER}\npass = {obscured}\n"
    )
    os.chmod(conf, 0o600)
    for n in p.ls_sizes:
        rel = f"bench/data/d{n}"
        if reva.count(rel) != n:
            log(f"uploading {n} small files to {rel} (rclone copy)")
            run(
                ["rclone", "copy", "--config", str(conf), "--transfers", "16", "--checkers", "16",
                 str(data / f"data/d{n}"), f"reva:{rel}"],
                timeout=3600,
            )  # fmt: skip
            got = reva.count(rel)
            if got != n:
                raise SystemExit(
                    f"bench: the server has {got} entries in {rel} after the upload, expected {n}"
                )
