"""The mount's kernel readahead (`read_ahead_kb`): set by the daemon through sysfs once the mount is
live, read back from /sys/class/bdi/<st_dev>/read_ahead_kb of the real kernel mount.

The filesystem behind the daemon is the fake (tests/daemon/fakefs.py): the option is the daemon's
business. The non-root case runs the whole `meshfs mount` as `nobody` through fusermount3: the sysfs
file is root's, so the mount must come up anyway with the kernel default and one log line saying so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from rig import bdi_read_ahead, devno
from rigs import HERE, REPO, Rig, cleanup, mounted, one_line, pid_alive, wait_for

from meshfs import daemon

pytestmark = pytest.mark.fuse

KERNEL_DEFAULT_KB = 128  # VM_READAHEAD_PAGES: what a FUSE mount's bdi starts with




def _mount(rig: Rig, *extra: str) -> None:
    done = rig.meshfs(*rig.mount_args(*extra))
    assert done.returncode == 0, done.stderr
    assert mounted(rig.mountpoint)


def _umount(rig: Rig) -> None:
    done = rig.meshfs("umount", os.fspath(rig.mountpoint))
    assert done.returncode == 0, done.stderr
    assert not mounted(rig.mountpoint)


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: setting a bdi's read_ahead_kb needs root; run the suite as root")


@pytest.mark.parametrize(
    ("options", "expected"),
    [((), 1024), (("read_ahead_kb=4096",), 4096), (("read_ahead_kb=0",), KERNEL_DEFAULT_KB)],
    ids=["default-1024", "4096", "0-kernel-default"],
)
def test_read_ahead_kb_is_set_once_the_mount_is_live(
    rig: Rig, root_only: None, options: tuple[str, ...], expected: int
) -> None:
    extra = ("-o", ",".join(options)) if options else ()
    _mount(rig, *extra)
    try:
        # `meshfs mount` returned: the value must already be in place (no waiting)
        assert bdi_read_ahead(rig.mountpoint) == expected
        assert (rig.mountpoint / "hello").read_bytes().startswith(b"hello")
    finally:
        _umount(rig)


def test_each_mount_gets_its_own_bdi(rig: Rig, root_only: None) -> None:
    """Two mounts, two values: the daemon writes the bdi of its own mount, not some other one."""
    second_mp = rig.root / "mnt2"
    second_mp.mkdir()
    _mount(rig, "-o", "read_ahead_kb=2048")
    try:
        done = rig.meshfs(
            *rig.mount_args("-o", "read_ahead_kb=512", mountpoint=second_mp, cache_dir=rig.root / "cache2")
        )
        assert done.returncode == 0, done.stderr
        try:
            for mp in (rig.mountpoint, second_mp):
                st_dev = os.stat(mp).st_dev
                assert devno(mp) == f"{os.major(st_dev)}:{os.minor(st_dev)}"
            assert devno(rig.mountpoint) != devno(second_mp)
            assert bdi_read_ahead(rig.mountpoint) == 2048
            assert bdi_read_ahead(second_mp) == 512
        finally:
            done = rig.meshfs("umount", os.fspath(second_mp))
            assert done.returncode == 0, done.stderr
    finally:
        _umount(rig)


@pytest.mark.parametrize("value", ["lots", "-1", "65537", "1.5", "1M", ""])
def test_bad_values_are_one_clear_line(rig: Rig, value: str) -> None:
    done = rig.meshfs(*rig.mount_args("-o", f"read_ahead_kb={value}"))
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert f"read_ahead_kb: expected an integer from 0 to 65536, got '{value}'" in line, line
    assert not mounted(rig.mountpoint)


def test_bad_value_in_the_config_file_is_one_clear_line(rig: Rig) -> None:
    cfg = rig.root / "meshfs.toml"
    cfg.write_text("read_ahead_kb = true\n")
    done = rig.meshfs(*rig.mount_args(), "--config", os.fspath(cfg))
    assert done.returncode != 0
    assert "read_ahead_kb: expected an integer from 0 to 65536, got True" in one_line(done.stderr)
    assert not mounted(rig.mountpoint)


def test_set_read_ahead_without_a_mount_says_so(tmp_path: Path) -> None:
    result = daemon.set_read_ahead(os.fspath(tmp_path), 1024)
    assert not result.applied
    assert "not in /proc/self/mountinfo" in result.message


# ------------------------------------------------------------------------------------ not root


@pytest.fixture
def nobody() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: running the daemon as another user needs root")
    if shutil.which("fusermount3") is None or shutil.which("setpriv") is None:
        pytest.skip("SKIPPED LOUDLY: fusermount3 or setpriv missing (run dev/deps.sh)")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("no user 'nobody' on this machine to run the unprivileged mount as")
    # /dev/fuse is 0600 on these machines; an ordinary distribution has it 0666 (as tests/fuse)
    old_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", old_mode | 0o666)
    try:
        yield pw
    finally:
        os.chmod("/dev/fuse", old_mode)


@pytest.fixture
def user_rig(nobody: pwd.struct_passwd) -> Iterator[Rig]:
    """A rig whose every path belongs to `nobody` (pytest's tmp_path is root's 0700)."""
    root = Path(tempfile.mkdtemp(prefix="meshfs-ra-nonroot-", dir="/tmp"))
    r = Rig(
        root=root,
        mountpoint=root / "mnt",
        cache_dir=root / "cache",
        runtime_dir=root / "run",
        password_file=root / "password",
        events_file=root / "events",
    )
    r.mountpoint.mkdir()
    r.password_file.write_text("relativity\n")
    for p in (root, r.mountpoint, r.password_file):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    r.password_file.chmod(0o600)
    r.env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.fspath(root),
        "MESHFS_RUNTIME_DIR": os.fspath(r.runtime_dir),
        "MESHFS_FILESYSTEM": "fakefs:FakeFilesystem",
        "PYTHONPATH": os.pathsep.join([os.fspath(HERE), os.fspath(REPO)]),
        "FAKEFS_EVENTS": os.fspath(r.events_file),
    }
    try:
        yield r
    finally:
        problems = cleanup(r)
        for pid in _daemons_of(root):
            problems.append(f"daemon {pid} still running")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(partial(_dead, pid), 10, f"daemon {pid} to die")
        shutil.rmtree(root, ignore_errors=True)
        assert not problems, f"the test left {problems}"


def _dead(pid: int) -> bool:
    return not pid_alive(pid)


def _daemons_of(root: Path) -> list[int]:
    needle = os.fsencode(os.fspath(root))
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def test_not_root_mounts_anyway_with_the_kernel_default(user_rig: Rig, nobody: pwd.struct_passwd) -> None:
    """In the foreground (-f): the venv's interpreter lies under /root (0700 here), so a background
    daemon re-executed by an unprivileged CLI could not start; -f is what a user's systemd unit runs."""
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    log_path = user_rig.root / "daemon.stderr"
    with open(log_path, "w") as log_file:
        daemon_proc = subprocess.Popen(
            [
                *as_nobody,
                sys.executable,
                "-m",
                "meshfs",
                *user_rig.mount_args("-o", "read_ahead_kb=1024"),
                "-f",
            ],
            env=user_rig.env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        wait_for(
            lambda: daemon_proc.poll() is not None or " mounted " in log_path.read_text(),
            60,
            "the unprivileged daemon to report the mount live (or to exit)",
        )
        assert daemon_proc.poll() is None, log_path.read_text()
        assert mounted(user_rig.mountpoint)
        assert bdi_read_ahead(user_rig.mountpoint) == KERNEL_DEFAULT_KB
        done = subprocess.run(
            [*as_nobody, sys.executable, "-m", "meshfs", "umount", os.fspath(user_rig.mountpoint)],
            env=user_rig.env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert daemon_proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if daemon_proc.poll() is None:
            daemon_proc.kill()
            daemon_proc.wait(timeout=30)
    assert not mounted(user_rig.mountpoint)
    log = log_path.read_text()
    said = [line for line in log.splitlines() if "kernel readahead not set to 1024 KiB" in line]
    assert len(said) == 1, log
    assert "Permission denied (needs root)" in said[0] and " INFO " in said[0], said[0]
    assert "ERROR" not in log and "WARNING" not in log, log


# ------------------------------------------------------- options that reach the FUSE session


def test_max_background_reaches_the_kernel(rig: Rig) -> None:
    """`-o max_background=N` is what the kernel's connection reports (it used to stay at 64)."""
    _mount(rig, "-o", "max_background=17")
    try:
        minor = devno(rig.mountpoint).split(":")[1]
        assert int(Path(f"/sys/fs/fuse/connections/{minor}/max_background").read_text()) == 17
    finally:
        _umount(rig)
