"""A mount by an ordinary user through fusermount3 (_FUSE_COMMFD), served by meshfs.fuse.

Runs tests/fuse/daemon.py as a throwaway unprivileged user. /dev/fuse is 0600 on these machines;
like an ordinary distribution would have it, the fixture makes it 0666 for the test and puts the
old mode back afterwards (see shared/reference/interop.md).
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import is_mounted

from meshfs.fuse import lazy_unmount

pytestmark = pytest.mark.fuse

DAEMON = str(Path(__file__).with_name("daemon.py"))
USER = "meshfs-fusetest"


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: creating the throwaway user for the fusermount3 test needs root")
    if shutil.which("fusermount3") is None:
        pytest.skip("SKIPPED LOUDLY: fusermount3 missing (run dev/deps.sh: apt-get install fuse3)")
    created = False
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        created = True
        pw = pwd.getpwnam(USER)
    old_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield pw
    finally:
        os.chmod("/dev/fuse", old_mode)
        if created:
            subprocess.run(["userdel", USER], check=False, capture_output=True)


def as_user(pw: pwd.struct_passwd, *cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]


def start_daemon(pw: pwd.struct_passwd, mp: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    p = subprocess.Popen(as_user(pw, sys.executable, DAEMON, str(mp), *extra), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 30)
    line = p.stdout.readline().strip() if ready else "no answer within 30 s"
    return p, line


@pytest.fixture
def user_dir(user: pwd.struct_passwd) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="meshfs-nonroot-", dir="/tmp"))
    os.chown(d, user.pw_uid, user.pw_gid)
    mp = d / "mnt"
    mp.mkdir()
    os.chown(mp, user.pw_uid, user.pw_gid)
    try:
        yield mp
    finally:
        if is_mounted(mp):
            lazy_unmount(str(mp))
        shutil.rmtree(d, ignore_errors=True)


def test_nonroot_mount_through_fusermount3(user: pwd.struct_passwd, user_dir: Path) -> None:
    p, line = start_daemon(user, user_dir)
    try:
        assert line == f"ready {user.pw_uid}", p.stderr.read() if p.poll() is not None else line  # type: ignore[union-attr]
        with open("/proc/self/mountinfo") as f:
            entry = next(ln for ln in f if ln.split()[4] == str(user_dir))
        assert "fuse.memfs" in entry and f"user_id={user.pw_uid}" in entry
        r = subprocess.run(as_user(user, "sh", "-c", f"echo hello > {user_dir}/f && cat {user_dir}/f && "
                                   f"mkdir {user_dir}/d && ls {user_dir} && stat -c %u {user_dir}/f"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["hello", "d", "f", str(user.pw_uid)]
    finally:
        assert p.stdin is not None
        p.stdin.close()  # the daemon unmounts (fusermount3 -u) and exits
        rc = p.wait(30)
    assert rc == 0
    assert not is_mounted(user_dir)


def test_nonroot_allow_other_is_refused_with_a_clear_error(user: pwd.struct_passwd, user_dir: Path) -> None:
    conf = Path("/etc/fuse.conf")
    if conf.exists() and any(ln.strip() == "user_allow_other" for ln in conf.read_text().splitlines()):
        pytest.skip("SKIPPED LOUDLY: /etc/fuse.conf allows allow_other for users on this machine")
    p, line = start_daemon(user, user_dir, "--allow-other")
    try:
        assert line.startswith("error fusermount3 could not mount"), line
        assert "allow_other" in line and "\n" not in line
        assert p.wait(30) == 2
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert not is_mounted(user_dir)
