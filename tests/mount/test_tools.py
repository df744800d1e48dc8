"""Real tools on the mount: git, tar, rsync, cp -a, vim and editor-style saves, jupyter's save, sqlite3.

What another node must see is checked on a second mount (own cache dir) after `meshfs sync`, and
contents on the server also with a plain WebDAV GET.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mounthelp import REPO, WebDav, sync, tree_snapshot

pytestmark = [pytest.mark.reva, pytest.mark.fuse]

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Albert Einstein",
    "GIT_AUTHOR_EMAIL": "einstein@example.org",
    "GIT_COMMITTER_NAME": "Albert Einstein",
    "GIT_COMMITTER_EMAIL": "einstein@example.org",
}


def run(
    *cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> str:
    proc = subprocess.run(
        [os.fspath(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )
    return proc.stdout


def git(*args: str | Path, cwd: Path) -> str:
    return run("git", *args, cwd=cwd, env=GIT_ENV)


def make_source_tree(dest: Path) -> Path:
    """A copy of the meshfs package (no caches) with one executable script: a realistic small source tree."""
    shutil.copytree(REPO / "meshfs", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    script = dest / "run.sh"
    script.write_text("#!/bin/sh\necho run\n")
    script.chmod(0o755)
    return dest


# ------------------------------------------------------------------------------------------------ git


def test_git_init_add_commit_on_the_mount(work: Path, mount_factory: Callable[..., Path]) -> None:
    repo = work / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README").write_text("hello\n")
    (repo / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (repo / "tool.sh").chmod(0o755)
    (repo / "src").mkdir()
    (repo / "src" / "a.py").write_text("print('a')\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    assert git("status", "--porcelain", cwd=repo) == ""
    (repo / "README").write_text("hello again\n")
    assert git("status", "--porcelain", cwd=repo) == " M README\n"
    git("commit", "-q", "-am", "second", cwd=repo)
    assert git("log", "--format=%s", cwd=repo).split() == ["second", "first"]
    git("fsck", "--strict", cwd=repo)
    assert git("ls-files", "-s", "tool.sh", cwd=repo).startswith("100755 ")
    sync(work)
    other = mount_factory() / "home" / work.name / "repo"
    assert git("status", "--porcelain", cwd=other) == ""
    git("fsck", "--strict", cwd=other)
    assert git("log", "--format=%s", cwd=other).split() == ["second", "first"]


def test_git_clone_onto_the_mount(work: Path, tmp_path: Path, mount_factory: Callable[..., Path]) -> None:
    origin = tmp_path / "origin"
    make_source_tree(origin)
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "import", cwd=origin)
    (origin / "later.txt").write_text("later\n")
    git("add", "later.txt", cwd=origin)
    git("commit", "-q", "-m", "later", cwd=origin)

    clone = work / "clone"
    git("clone", "-q", os.fspath(origin), os.fspath(clone), cwd=work)
    assert git("status", "--porcelain", cwd=clone) == ""
    assert os.access(clone / "run.sh", os.X_OK)
    (clone / "later.txt").write_text("changed on the mount\n")
    (clone / "new.txt").write_text("new\n")
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "on the mount", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    assert git("log", "--format=%s", cwd=clone).split("\n")[:3] == ["on the mount", "later", "import"]
    git("fsck", "--strict", "--full", cwd=clone)
    sync(work)
    other = mount_factory() / "home" / work.name / "clone"
    assert git("status", "--porcelain", cwd=other) == ""
    git("fsck", "--strict", cwd=other)
    assert git("rev-parse", "HEAD", cwd=other) == git("rev-parse", "HEAD", cwd=clone)


@pytest.mark.long
def test_git_gc_repack_on_the_mount(work: Path, tmp_path: Path) -> None:
    """gc packs objects, renames packs in, deletes loose objects: many renames/unlinks on the mount."""
    origin = tmp_path / "origin"
    make_source_tree(origin)
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "import", cwd=origin)
    clone = work / "clone"
    git("clone", "-q", "--no-local", os.fspath(origin), os.fspath(clone), cwd=work)
    for i in range(5):
        (clone / f"n{i}.txt").write_text(f"{i}\n")
        git("add", f"n{i}.txt", cwd=clone)
        git("commit", "-q", "-m", f"n{i}", cwd=clone)
    git("gc", "-q", "--aggressive", "--prune=now", cwd=clone)
    git("fsck", "--strict", "--full", cwd=clone)
    assert git("count-objects", "-v", cwd=clone).splitlines()[0] == "count: 0"
    assert git("status", "--porcelain", cwd=clone) == ""


# --------------------------------------------------------------------------------------- tar, rsync, cp


def test_tar_extract_and_diff(work: Path, tmp_path: Path, mount_factory: Callable[..., Path]) -> None:
    src = make_source_tree(tmp_path / "src")
    archive = tmp_path / "src.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname="src")
    run("tar", "xf", archive, "-C", work)
    run("diff", "-r", src, work / "src")
    # tar's own compare: content, size, mode, mtime (and owner) of every member
    run("tar", "df", archive, "-C", work)
    sync(work)
    other = mount_factory() / "home" / work.name
    run("diff", "-r", src, other / "src")
    run("tar", "df", archive, "-C", other)


def mtimes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[os.fspath(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def test_rsync_round_trip(work: Path, tmp_path: Path) -> None:
    src = make_source_tree(tmp_path / "src")
    (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    run("rsync", "-a", f"{src}/", f"{work / 'copy'}/")
    back = tmp_path / "back"
    run("rsync", "-a", f"{work / 'copy'}/", f"{back}/")
    assert tree_snapshot(back) == tree_snapshot(src)
    assert mtimes(work / "copy") == mtimes(src)
    assert mtimes(back) == mtimes(src)
    assert stat.S_IMODE((back / "run.sh").stat().st_mode) == 0o755
    # a second run finds nothing to do (sizes and mtimes are stable on the mount)
    again = run("rsync", "-a", "-i", f"{src}/", f"{work / 'copy'}/")
    assert again == "", again


def test_dir_mtime_stays_put_when_the_uploads_of_its_children_land(
    work: Path, mount_factory: Callable[..., Path]
) -> None:
    """What test_rsync_round_trip relies on, made deterministic. rsync compares directory times in
    whole seconds and skips its final utime of a directory whose time already matches: when the
    transfer of a directory ends within the second of the source's mtime, the directory keeps the
    time of its last local change. That time must then stay put, as on a local disk: the uploads of
    the files written before it (upload_delay later) must not move it, on this node or another."""
    d = work / "d"
    d.mkdir()
    for name in ("a", "b"):
        tmp = d / f".{name}.tmp"
        tmp.write_bytes(name.encode() * 1000)
        tmp.rename(d / name)  # rsync's way: a temp file, renamed into place
    after_writes = d.stat().st_mtime_ns
    sync(work)  # the uploads land
    other = mount_factory() / "home" / work.name / "d"  # a fresh node: no cached attributes
    assert other.stat().st_mtime_ns == after_writes
    assert d.stat().st_mtime_ns == after_writes


def test_cp_a_within_the_mount(work: Path, tmp_path: Path) -> None:
    src = make_source_tree(tmp_path / "src")
    run("cp", "-a", src, work / "one")
    run("cp", "-a", work / "one", work / "two")
    run("diff", "-r", src, work / "two")
    assert mtimes(work / "two") == mtimes(src)


# ---------------------------------------------------------------------------------------------- saves


def test_vim_style_save_steps(work: Path, webdav: WebDav, mount_factory: Callable[..., Path]) -> None:
    """What vim does with 'writebackup' and backupcopy=no: swap file, backup by rename, write anew."""
    p = work / "notes.txt"
    p.write_text("line 1\n")
    sync(work)
    swp = work / ".notes.txt.swp"
    swp.write_bytes(b"b0VIM 9.0" + b"\0" * 4000)
    backup = work / "notes.txt~"
    os.rename(p, backup)
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"line 1\nline 2\n")
    os.fsync(fd)
    os.close(fd)
    os.unlink(backup)
    os.unlink(swp)
    assert sorted(os.listdir(work)) == ["notes.txt"]
    assert p.read_text() == "line 1\nline 2\n"
    sync(work)
    assert webdav.get(f"{work.name}/notes.txt") == b"line 1\nline 2\n"
    assert not webdav.exists(f"{work.name}/notes.txt~")
    assert not webdav.exists(f"{work.name}/.notes.txt.swp")
    other = mount_factory() / "home" / work.name
    assert sorted(os.listdir(other)) == ["notes.txt"]


@pytest.mark.parametrize("backupcopy", ["yes", "no"])
def test_real_vim_save(work: Path, webdav: WebDav, backupcopy: str) -> None:
    if shutil.which("vim") is None:
        pytest.skip("vim is not installed (apt-get install vim)")
    p = work / "edit.txt"
    p.write_text("alpha\n")
    p.chmod(0o640)
    sync(work)
    run(
        "vim", "-u", "NONE", "-i", "NONE", "-N", "-Es",
        "-c", f"set backup writebackup backupskip= backupcopy={backupcopy} backupdir=. directory=.",
        "-c", "normal Gobeta", "-c", "wq", p,
        cwd=work, timeout=60,
    )  # fmt: skip
    assert p.read_text() == "alpha\nbeta\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(os.listdir(work)) == ["edit.txt", "edit.txt~"]
    assert (work / "edit.txt~").read_text() == "alpha\n"
    sync(work)
    assert webdav.get(f"{work.name}/edit.txt") == b"alpha\nbeta\n"


def test_temp_file_then_rename_over_save(
    work: Path, webdav: WebDav, mount_factory: Callable[..., Path]
) -> None:
    p = work / "config.json"
    p.write_text('{"v": 1}')
    sync(work)
    for v in range(2, 6):
        tmp = work / f".config.json.tmp{v}"
        with open(tmp, "w") as f:
            f.write(json.dumps({"v": v}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        assert json.loads(p.read_text()) == {"v": v}
    assert os.listdir(work) == ["config.json"]
    sync(work)
    assert json.loads(webdav.get(f"{work.name}/config.json")) == {"v": 5}
    other = mount_factory() / "home" / work.name
    assert os.listdir(other) == ["config.json"]
    assert json.loads((other / "config.json").read_text()) == {"v": 5}


def test_jupyter_style_notebook_save(work: Path, webdav: WebDav, mount_factory: Callable[..., Path]) -> None:
    """jupyter_server: copy to .~name, open the original with O_TRUNC, write, fsync, delete .~name."""
    nb = work / "analysis.ipynb"
    first = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    nb.write_text(json.dumps(first))
    os.utime(nb, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    sync(work)
    before = nb.stat().st_mtime_ns
    second = {**first, "cells": [{"cell_type": "code", "source": "1+1", "metadata": {}, "outputs": []}]}
    tmp = work / ".~analysis.ipynb"
    shutil.copy2(nb, tmp)  # jupyter_server's copy2_safe
    with open(nb, "w", encoding="utf-8") as f:  # O_WRONLY | O_CREAT | O_TRUNC
        f.write(json.dumps(second, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.unlink(tmp)
    after = nb.stat().st_mtime_ns
    assert after != before and after > before
    assert json.loads(nb.read_text()) == second
    sync(work)
    assert json.loads(webdav.get(f"{work.name}/analysis.ipynb")) == second
    assert not webdav.exists(f"{work.name}/.~analysis.ipynb")
    other = mount_factory() / "home" / work.name
    assert os.listdir(other) == ["analysis.ipynb"]
    assert (other / "analysis.ipynb").stat().st_mtime_ns == nb.stat().st_mtime_ns
    assert json.loads((other / "analysis.ipynb").read_text()) == second


# --------------------------------------------------------------------------------------------- sqlite


def test_sqlite_database(work: Path, mount_factory: Callable[..., Path]) -> None:
    db = work / "data.sqlite"
    con = sqlite3.connect(db, timeout=30)
    try:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        for batch in range(10):
            with con:  # one transaction per 100 rows
                con.executemany(
                    "INSERT INTO t (id, name, payload) VALUES (?, ?, ?)",
                    [(batch * 100 + i, f"row {batch * 100 + i}", os.urandom(200)) for i in range(100)],
                )
        with con:
            con.execute("UPDATE t SET name = name || '!' WHERE id % 7 = 0")
            con.execute("DELETE FROM t WHERE id >= 995")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM t").fetchone() == (995,)
    finally:
        con.close()
    assert not (work / "data.sqlite-journal").exists()
    sync(work)
    other = mount_factory() / "home" / work.name / "data.sqlite"
    con = sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=30)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM t").fetchone() == (995,)
        assert con.execute("SELECT name FROM t WHERE id = 993").fetchone() == ("row 993",)
        assert con.execute("SELECT name FROM t WHERE id = 700").fetchone() == ("row 700!",)
    finally:
        con.close()


def test_sqlite_wal_mode(work: Path, mount_factory: Callable[..., Path]) -> None:
    """WAL mode maps the -shm file shared and takes fcntl locks on it; a checkpoint folds the WAL in."""
    db = work / "wal.sqlite"
    con = sqlite3.connect(db, timeout=30)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for batch in range(5):
            with con:
                con.executemany("INSERT INTO t (v) VALUES (?)", [(f"{batch}-{i}",) for i in range(100)])
        reader = sqlite3.connect(db, timeout=30)
        try:
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (500,)
        finally:
            reader.close()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
    assert not (work / "wal.sqlite-wal").exists()
    sync(work)
    other = mount_factory() / "home" / work.name / "wal.sqlite"
    con = sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=30)
    try:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (500,)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()


def test_rename_over_never_hides_the_target_from_other_nodes(work: Path, webdav: WebDav) -> None:
    """POSIX rename is atomic: another reader sees the old or the new file, never none (a job reading its
    config while an editor saves it). The server is polled directly while the mount saves by rename."""
    target = f"{work.name}/config.txt"
    (work / "config.txt").write_text("v0")
    sync(work)
    stop = threading.Event()
    polls = [0]
    missing: list[float] = []

    def poll() -> None:
        while not stop.is_set():
            polls[0] += 1
            if not webdav.exists(target):
                missing.append(time.monotonic())

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        for v in range(1, 9):
            tmp = work / f".config.txt.{v}.tmp"
            tmp.write_text(f"v{v}")
            sync(work)  # the temp file is on the server: the rename is a server-side replace
            os.replace(tmp, work / "config.txt")
            sync(work)
    finally:
        stop.set()
        t.join(30)
    assert webdav.get(target) == b"v8"
    assert polls[0] >= 20, f"the poller ran only {polls[0]} times"
    assert not missing, f"the server had no {target} {len(missing)} times out of {polls[0]} polls"
    assert os.listdir(work) == ["config.txt"]
