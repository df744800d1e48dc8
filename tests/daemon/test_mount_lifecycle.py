"""The mount lifecycle through the real CLI, the real daemon and a real kernel FUSE mount.

The filesystem behind the daemon is the fake (tests/daemon/fakefs.py): these tests are about
`meshfs mount/umount/status/sync`, the readiness protocol, signals, the control socket, the
registry and cleanup, not about CS3.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from rigs import SOURCE, Rig, mounted, one_line, pid_alive, wait_for

from meshfs import daemon

pytestmark = pytest.mark.fuse


def _mount(rig: Rig, *extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = rig.meshfs(*rig.mount_args(*extra), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return rig.entry()


def _umount(rig: Rig, *extra: str, mountpoint: Path | None = None) -> None:
    done = rig.meshfs("umount", os.fspath(mountpoint or rig.mountpoint), *extra)
    assert done.returncode == 0, done.stderr
    assert "--force" in extra or done.stderr == "", done.stderr


# ----------------------------------------------------------------------------------- the happy path


def test_mount_returns_when_live_and_umount_when_gone(rig: Rig) -> None:
    entry = _mount(rig, env={"FAKEFS_START_SECONDS": "1"})
    # live the moment `meshfs mount` returned: no waiting here
    assert mounted(rig.mountpoint)
    assert (rig.mountpoint / "hello").read_bytes() == b"hello from the fake filesystem\n"
    assert os.listdir(rig.mountpoint) == ["hello"]
    pid = int(entry["pid"])  # type: ignore[call-overload]
    assert pid_alive(pid)
    sock = Path(str(entry["socket"]))
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    assert rig.runtime_dir.stat().st_mode & 0o777 == 0o700
    assert rig.cache_dir.stat().st_mode & 0o777 == 0o700
    # the daemon is detached: its own session, not a child of the test
    assert os.getsid(pid) == pid

    _umount(rig)
    # `meshfs umount` returns after the daemon has exited and everything is cleaned up
    assert not pid_alive(pid)
    assert not mounted(rig.mountpoint)
    assert rig.entries() == []
    assert not sock.exists()
    events = rig.events()
    assert events.index("drain-begin") < events.index("drain-end") < events.index("destroy")


def test_foreground_sigterm_drains_then_unmounts(rig: Rig) -> None:
    proc = rig.popen(*rig.mount_args("-f"), env={"FAKEFS_DRAIN_SECONDS": "1"})
    try:
        wait_for(lambda: rig.entries() and mounted(rig.mountpoint), 30, "the foreground mount")
        assert (rig.mountpoint / "hello").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not mounted(rig.mountpoint)
    assert rig.entries() == []
    events = rig.events()
    assert events.index("drain-begin") < events.index("drain-end") < events.index("destroy")
    assert "stopping (SIGTERM received)" in err


def test_external_unmount_ends_the_daemon(rig: Rig) -> None:
    entry = _mount(rig)
    pid = int(entry["pid"])  # type: ignore[call-overload]
    cmd = (
        ["umount", os.fspath(rig.mountpoint)]
        if os.geteuid() == 0
        else ["fusermount3", "-u", os.fspath(rig.mountpoint)]
    )
    subprocess.run(cmd, check=True, timeout=30)
    wait_for(lambda: not pid_alive(pid), 30, "the daemon to exit after an external unmount")
    assert rig.entries() == []
    assert not mounted(rig.mountpoint)
    assert "drain-end" in rig.events()


def test_status_sync_and_forwarded_command(rig: Rig) -> None:
    entry = _mount(rig)
    done = rig.meshfs("status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (row,) = report["mounts"]
    assert set(row) == {"mountpoint", "source", "pid", "cache_dir", "started", "state", "fs", "error"}
    assert row["mountpoint"] == os.fspath(rig.mountpoint)
    assert row["source"] == SOURCE
    assert row["pid"] == entry["pid"]
    assert row["state"] == "running"
    assert row["error"] is None
    assert row["fs"]["user"] == "einstein"

    human = rig.meshfs("status", os.fspath(rig.mountpoint))
    assert human.returncode == 0 and os.fspath(rig.mountpoint) in human.stdout and "pid" in human.stdout

    done = rig.meshfs("sync", os.fspath(rig.mountpoint / "hello"))
    assert done.returncode == 0, done.stderr
    done = rig.meshfs("sync", cwd=rig.mountpoint)
    assert done.returncode == 0, done.stderr
    assert "sync /hello" in rig.events() and "sync None" in rig.events()

    done = rig.meshfs("share", "ls", cwd=rig.mountpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no shares"
    assert 'command share {"action": "ls"}' in rig.events()
    done = rig.meshfs("lock", "--mount", os.fspath(rig.mountpoint), "--json", "show", "x")
    assert done.returncode == 0, done.stderr
    # run from outside the mount: no cwd is sent
    assert json.loads(done.stdout) == {"name": "lock", "args": {"argv": ["show", "x"]}}
    _umount(rig)


def test_sync_failures_are_listed_with_exit_1(rig: Rig) -> None:
    _mount(rig, env={"FAKEFS_SYNC_FAILURES": "upload /home/a.txt: quota exceeded;upload /home/b: conflict"})
    done = rig.meshfs("sync", os.fspath(rig.mountpoint))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "meshfs: sync: upload /home/a.txt: quota exceeded",
        "meshfs: sync: upload /home/b: conflict",
    ]
    _umount(rig)


def test_sync_timeout(rig: Rig) -> None:
    _mount(rig, env={"FAKEFS_SYNC_SECONDS": "3600"})
    done = rig.meshfs("sync", os.fspath(rig.mountpoint), "--timeout", "0.5")
    assert done.returncode == 1
    assert "uploads still pending after 0.5 s" in one_line(done.stderr)
    _umount(rig)


def test_umount_warns_when_uploads_stay_pending(rig: Rig) -> None:
    entry = _mount(rig, env={"FAKEFS_DRAIN_ERROR": "server unavailable"})
    done = rig.meshfs("umount", os.fspath(rig.mountpoint))
    assert done.returncode == 0, done.stderr  # unmounted; the uploads are not lost, only postponed
    line = one_line(done.stderr)
    assert "pending uploads did not all finish" in line and os.fspath(rig.cache_dir) in line
    assert not pid_alive(int(entry["pid"]))  # type: ignore[call-overload]
    _assert_nothing_left(rig)


def test_mount_helper_form_with_fstab_options(rig: Rig) -> None:
    # what mount.fuse3 runs for `mount -t fuse.meshfs` with the options mount(8) passes on
    opts = f"rw,nosuid,nodev,dev,suid,_netdev,noauto,x-systemd.automount,password_file={rig.password_file}"
    done = rig.meshfs(
        SOURCE, os.fspath(rig.mountpoint), "-o", opts, "-o", f"cache_dir={rig.cache_dir},tls=false"
    )
    assert done.returncode == 0, done.stderr
    assert mounted(rig.mountpoint) and (rig.mountpoint / "hello").exists()
    _umount(rig)


def test_mount_from_a_config_file_only(rig: Rig) -> None:
    config = rig.root / "cernbox.toml"
    config.write_text(
        f'source = "{SOURCE}"\nmountpoint = "{rig.mountpoint}"\npassword_file = "{rig.password_file}"\n'
        f'cache_dir = "{rig.cache_dir}"\ntls = false\n'
    )
    done = rig.meshfs("mount", "--config", os.fspath(config))
    assert done.returncode == 0, done.stderr
    assert (rig.mountpoint / "hello").exists()
    _umount(rig)
    config.write_text(config.read_text() + "cache_size = 'lots'\n")
    done = rig.meshfs("mount", "--config", os.fspath(config))
    assert done.returncode == 2 and "cache_size" in one_line(done.stderr)


def test_sd_notify_ready_and_stopping(rig: Rig, tmp_path: Path) -> None:
    path = os.fspath(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        proc = rig.popen(*rig.mount_args("-f"), env={"NOTIFY_SOCKET": path})
        try:
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready.splitlines()
            assert f"MAINPID={proc.pid}" in ready.splitlines()
            assert mounted(rig.mountpoint)  # READY only once the mount is live
            proc.send_signal(signal.SIGTERM)
            stopping = sock.recv(4096).decode()
            assert "STOPPING=1" in stopping.splitlines()
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0, err


# ---------------------------------------------------------------------------------------- failures


def _assert_nothing_left(rig: Rig) -> None:
    assert not mounted(rig.mountpoint)
    assert rig.entries() == []


def test_bad_source_url(rig: Rig) -> None:
    done = rig.meshfs(
        "mount",
        "http://einstein@host",
        os.fspath(rig.mountpoint),
        "--password-file",
        os.fspath(rig.password_file),
    )
    assert done.returncode == 2
    assert "cs3://USER@HOST:PORT" in one_line(done.stderr)
    _assert_nothing_left(rig)


def test_missing_mountpoint(rig: Rig) -> None:
    rig.mountpoint.rmdir()
    done = rig.meshfs(*rig.mount_args())
    assert done.returncode == 1
    assert "does not exist" in one_line(done.stderr)
    _assert_nothing_left(rig)


def test_mountpoint_not_empty(rig: Rig) -> None:
    (rig.mountpoint / "precious.txt").write_text("x")
    done = rig.meshfs(*rig.mount_args())
    assert done.returncode == 1
    assert "is not empty" in one_line(done.stderr)
    _assert_nothing_left(rig)


def test_mountpoint_is_a_file(rig: Rig) -> None:
    rig.mountpoint.rmdir()
    rig.mountpoint.write_text("x")
    done = rig.meshfs(*rig.mount_args())
    assert done.returncode == 1
    assert "is not a directory" in one_line(done.stderr)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_password_file_readable_by_others_is_refused(rig: Rig, mode: int) -> None:
    rig.password_file.chmod(mode)
    done = rig.meshfs(*rig.mount_args())
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "password_file" in line and "chmod 600" in line
    assert "relativity" not in done.stderr
    _assert_nothing_left(rig)


def test_missing_password_file(rig: Rig) -> None:
    rig.password_file.unlink()
    done = rig.meshfs(*rig.mount_args())
    assert done.returncode == 2
    assert "password_file" in one_line(done.stderr)


def test_password_on_the_command_line_is_refused(rig: Rig) -> None:
    done = rig.meshfs("mount", SOURCE, os.fspath(rig.mountpoint), "-o", "password=relativity")
    assert done.returncode == 2
    assert "password" in one_line(done.stderr)
    assert "relativity" not in done.stderr


def test_start_failure_is_one_line(rig: Rig) -> None:
    done = rig.meshfs(*rig.mount_args(), env={"FAKEFS_START_ERROR": "wrong username or password"})
    assert done.returncode == 1
    assert "wrong username or password" in one_line(done.stderr)
    _assert_nothing_left(rig)


def test_second_daemon_on_the_same_cache_dir_is_refused(rig: Rig) -> None:
    entry = _mount(rig)
    other = rig.root / "mnt2"
    other.mkdir()
    done = rig.meshfs(*rig.mount_args()[:2], os.fspath(other), *rig.mount_args()[3:])
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "in use by another meshfs daemon" in line and f"pid {entry['pid']}" in line
    assert not mounted(other)
    # the refused attempt did not rotate the running daemon's log away
    assert "mounted cs3://" in (rig.cache_dir / "daemon.log").read_text()
    # another cache dir is fine: two mounts of the same user behave like two nodes
    done = rig.meshfs(*rig.mount_args(mountpoint=other, cache_dir=rig.root / "cache2"))
    assert done.returncode == 0, done.stderr
    _umount(rig, mountpoint=other)
    _umount(rig)


def test_mountpoint_already_mounted_is_refused(rig: Rig) -> None:
    _mount(rig)
    done = rig.meshfs(*rig.mount_args(cache_dir=rig.root / "cache2"))
    assert done.returncode == 1
    assert "is already mounted by meshfs (pid" in one_line(done.stderr)
    _umount(rig)


def test_mountpoint_with_another_filesystem_is_refused(rig: Rig) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.fspath(rig.mountpoint)], check=True, timeout=30)
    try:
        done = rig.meshfs(*rig.mount_args())
        assert done.returncode == 1
        assert "already a mountpoint (tmpfs)" in one_line(done.stderr)
    finally:
        subprocess.run(["umount", os.fspath(rig.mountpoint)], check=True, timeout=30)
    assert rig.entries() == []


def test_sigterm_while_starting_leaves_nothing(rig: Rig) -> None:
    proc = rig.popen(*rig.mount_args("-f"), env={"FAKEFS_START_BLOCK": "1"})
    try:
        wait_for(lambda: "start" in rig.events(), 30, "the daemon to start connecting")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "before the mount was live" in err
    _assert_nothing_left(rig)


def test_umount_and_status_of_something_else(rig: Rig) -> None:
    done = rig.meshfs("umount", os.fspath(rig.mountpoint))
    assert done.returncode == 1 and "not mounted" in one_line(done.stderr)
    done = rig.meshfs("status", os.fspath(rig.mountpoint))
    assert done.returncode == 1 and "not a meshfs mount" in one_line(done.stderr)
    done = rig.meshfs("sync", os.fspath(rig.root))
    assert done.returncode == 1 and "not inside a meshfs mount" in one_line(done.stderr)
    done = rig.meshfs("status", "--json")
    others = json.loads(done.stdout)["mounts"]  # dead mounts other tests of this machine left, if any
    assert not [r for r in others if r["mountpoint"].startswith(os.fspath(rig.root))]
    if not others:
        done = rig.meshfs("status")
        assert done.returncode == 0 and done.stdout.strip() == "no meshfs mounts"


# ------------------------------------------------------------------------------- lazy and force


def test_umount_lazy_with_a_busy_mount(rig: Rig) -> None:
    entry = _mount(rig)
    pid = int(entry["pid"])  # type: ignore[call-overload]
    busy = open(rig.mountpoint / "hello", "rb")  # noqa: SIM115 - held open across the unmount
    try:
        start = time.monotonic()
        _umount(rig, "--lazy")
        assert time.monotonic() - start < 30
        assert not pid_alive(pid)
        assert not mounted(rig.mountpoint)
        # the daemon is gone: the process that kept the file open sees a dead connection
        with pytest.raises(OSError) as exc:
            busy.read()
        assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    finally:
        with contextlib.suppress(OSError):
            busy.close()
    assert rig.entries() == []


def test_umount_force_with_a_hung_drain(rig: Rig) -> None:
    entry = _mount(rig, env={"FAKEFS_DRAIN_SECONDS": "3600"})
    pid = int(entry["pid"])  # type: ignore[call-overload]
    start = time.monotonic()
    _umount(rig, "--force")
    assert time.monotonic() - start < 30
    assert not pid_alive(pid)
    _assert_nothing_left(rig)


def test_umount_timeout_says_what_to_do(rig: Rig) -> None:
    entry = _mount(rig, env={"FAKEFS_DRAIN_SECONDS": "3600"})
    done = rig.meshfs("umount", os.fspath(rig.mountpoint), "--timeout", "1")
    assert done.returncode == 1
    assert "--force" in one_line(done.stderr)
    assert pid_alive(int(entry["pid"]))  # type: ignore[call-overload]
    _umount(rig, "--force")
    _assert_nothing_left(rig)


def test_dead_daemon_leaves_a_mount_that_umount_lazy_clears(rig: Rig) -> None:
    entry = _mount(rig)
    pid = int(entry["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
    assert mounted(rig.mountpoint)
    done = rig.meshfs("umount", os.fspath(rig.mountpoint))
    assert done.returncode == 1 and "--lazy" in one_line(done.stderr)
    # the registry entry of the dead daemon is cleaned; the mount it left is reported as dead
    done = rig.meshfs("status", "--json")
    assert done.returncode == 1
    rows = [r for r in json.loads(done.stdout)["mounts"] if r["mountpoint"] == os.fspath(rig.mountpoint)]
    assert len(rows) == 1 and rows[0]["state"] == "dead" and rows[0]["pid"] is None
    assert "--lazy" in rows[0]["error"]
    assert rig.entries() == []
    _umount(rig, "--lazy")
    assert not mounted(rig.mountpoint)
    # and a new mount on the same mountpoint and cache dir works (the lock died with the daemon)
    _mount(rig)
    _umount(rig)


def test_second_sigterm_skips_the_rest_of_the_drain(rig: Rig) -> None:
    proc = rig.popen(*rig.mount_args("-f"), env={"FAKEFS_DRAIN_SECONDS": "3600"})
    try:
        wait_for(lambda: rig.entries() and mounted(rig.mountpoint), 30, "the foreground mount")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "drain-begin" in rig.events(), 30, "the drain to begin")
        assert proc.poll() is None  # draining, for up to an hour
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "drain-end" not in rig.events()
    assert "pending uploads stay in the cache" in err
    _assert_nothing_left(rig)


def test_mount_over_the_stale_mount_of_a_killed_daemon(rig: Rig) -> None:
    entry = _mount(rig)
    pid = int(entry["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
    with pytest.raises(OSError) as exc:
        os.listdir(rig.mountpoint)
    # ECONNABORTED: the request was queued when the kernel aborted the connection
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    # no manual cleanup: the new daemon replaces the dead mount
    _mount(rig)
    assert (rig.mountpoint / "hello").exists()
    _umount(rig)
    _assert_nothing_left(rig)


def test_umount_force_with_a_stopped_daemon(rig: Rig) -> None:
    entry = _mount(rig)
    pid = int(entry["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGSTOP)  # answers nothing any more: not the socket, not the kernel
    try:
        start = time.monotonic()
        done = rig.meshfs("umount", os.fspath(rig.mountpoint), "--force", timeout=60)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - start < 30
        assert not pid_alive(pid)
        _assert_nothing_left(rig)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


class _CrashingSessionApi(daemon.SessionApi):
    """Serves until INIT, then dies the way a bug in the request loop would: the session closes
    its /dev/fuse fd and forgets the mount, which the kernel still has (ENOTCONN for users)."""

    async def serve(self, session: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await self.wait_initialized(session)
            raise RuntimeError("request loop crashed")


def test_a_crashing_session_leaves_no_mount(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fakefs import FakeFilesystem

    from meshfs.config import load_config

    monkeypatch.setenv("MESHFS_RUNTIME_DIR", os.fspath(rig.runtime_dir))
    config = load_config(
        flags={
            "source": SOURCE,
            "mountpoint": os.fspath(rig.mountpoint),
            "cache_dir": os.fspath(rig.cache_dir),
            "password_file": os.fspath(rig.password_file),
            "tls": False,
        }
    )
    plan = daemon.MountPlan(
        source=SOURCE, mountpoint=os.fspath(rig.mountpoint), cache_dir=rig.cache_dir, drain_timeout=10
    )
    r, w = os.pipe()
    d = daemon.Daemon(
        config,
        plan,
        fs_factory=FakeFilesystem,
        session_api=_CrashingSessionApi(),
        readiness=daemon.Readiness(w),
    )
    try:
        assert d.run() == 1
        assert not mounted(rig.mountpoint)
        assert rig.entries() == []
        assert os.read(r, 200).startswith(b"READY ")  # it was live before the crash
        assert "internal error: RuntimeError: request loop crashed (traceback in the log)" in caplog.text
    finally:
        os.close(r)
