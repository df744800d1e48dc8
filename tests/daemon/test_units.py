"""Fast tests of the pieces under the daemon: control protocol and registry, argv forms, sd_notify,
the cache-dir lock, log formatting. No FUSE, no subprocess daemons."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from meshfs import cli, control, daemon, logsetup


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setenv("MESHFS_RUNTIME_DIR", os.fspath(path))
    return path


# ------------------------------------------------------------------------------------------ argv


@pytest.mark.parametrize(
    ("argv", "prog", "expected"),
    [
        (["cs3://u@h:1", "/mnt", "-o", "ro"], "meshfs", ["mount", "cs3://u@h:1", "/mnt", "-o", "ro"]),
        (["mount", "cs3://u@h:1", "/mnt"], "meshfs", ["mount", "cs3://u@h:1", "/mnt"]),
        (["status", "--json"], "meshfs", ["status", "--json"]),
        (["--help"], "meshfs", ["--help"]),
        (
            ["cs3://u@h:1", "/mnt", "-o", "x", "-t", "fuse.meshfs"],
            "/sbin/mount.fuse.meshfs",
            ["mount", "cs3://u@h:1", "/mnt", "-o", "x", "-t", "fuse.meshfs"],
        ),
    ],
)
def test_normalize_argv(argv: list[str], prog: str, expected: list[str]) -> None:
    assert cli.normalize_argv(argv, prog) == expected


def test_fake_mount_through_a_helper_name_does_nothing() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.normalize_argv(["cs3://u@h:1", "/mnt", "-f"], "mount.fuse.meshfs")
    assert exc.value.code == 0


@pytest.mark.parametrize("command", ["mount", "umount", "status", "sync", "doctor", "share", "users", "lock"])
def test_every_command_has_a_help_page(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshfs", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: meshfs {command}")
    assert len(done.stdout.splitlines()) > 8


def test_mount_help_lists_every_config_option() -> None:
    from meshfs.config import OPTIONS

    text = cli.build_parser()._subparsers._group_actions[0].choices["mount"].format_help()  # type: ignore[union-attr]
    for option in OPTIONS:
        assert f"  {option.name}=" in text


def test_usage_error_is_exit_2_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshfs",
            "mount",
            "cs3://u@h:1",
            os.fspath(tmp_path),
            "-o",
            "cache_size=lots",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cache_size" in done.stderr


# ------------------------------------------------------------------------------------- registry


def _entry(mountpoint: str, pid: int, pid_start: int) -> control.MountEntry:
    return control.MountEntry(
        mountpoint=mountpoint,
        socket=os.fspath(control.socket_path_for(mountpoint)),
        pid=pid,
        pid_start=pid_start,
        cache_dir="/c",
        source="cs3://u@h:1",
        started=1.0,
    )


def test_registry_roundtrip_and_stale_cleanup(runtime: Path) -> None:
    me = _entry("/mnt/a", os.getpid(), control.process_start_time(os.getpid()) or 0)
    control.register(me)
    stale = _entry("/mnt/b", os.getpid(), 1)  # our pid, but another start time: a reused pid
    control.register(stale)
    Path(stale.socket).touch()
    assert runtime.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in runtime.glob("*.json"))
    assert control.list_entries() == [me]
    assert not Path(stale.socket).exists()
    assert len(list(runtime.glob("*.json"))) == 1
    assert control.find_entry("/mnt/a/home/x.txt") == me
    assert control.find_entry("/mnt/ab") is None
    assert control.relative_to_mount("/mnt/a/home/x.txt", me) == "/home/x.txt"
    assert control.relative_to_mount("/mnt/a", me) == "/"
    control.unregister(me)
    assert control.list_entries() == []


def test_runtime_dir_of_someone_else_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(runtime, 12345, 12345)
    with pytest.raises(control.ControlError, match="belongs to uid 12345"):
        control.ensure_runtime_dir()
    with pytest.raises(control.ControlError, match="not a directory of yours"):
        control.list_entries()


def test_socket_path_too_long(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHFS_RUNTIME_DIR", os.fspath(tmp_path / ("x" * 120)))
    with pytest.raises(control.ControlError, match="shorter directory"):
        control.socket_path_for("/mnt")


def test_zombie_counts_as_exited() -> None:
    child = subprocess.Popen(["true"])
    pid = child.pid
    # not reaped yet: a zombie
    for _ in range(200):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        os.sched_yield()
        threading.Event().wait(0.01)
    assert control.process_start_time(pid) is None
    assert control.wait_pid_exit(pid, None, 5.0)
    child.wait(5)


# -------------------------------------------------------------------------------- control socket


async def test_control_protocol(runtime: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(request: dict[str, Any]) -> Any:
        seen.append(request)
        if request["op"] == "sync":
            raise ValueError("upload /a: conflict\nsecond line is dropped")
        return {"echo": request}

    path = control.socket_path_for("/mnt/p")
    server = control.ControlServer(path, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        assert path.stat().st_mode & 0o777 == 0o600

        def client() -> list[Any]:
            out: list[Any] = []
            with control.ControlClient(path, timeout=10) as c:
                out.append(c.request("status"))
                with pytest.raises(control.ControlError, match=r"^upload /a: conflict$"):
                    c.request("sync", path="/a")
                with pytest.raises(control.ControlError, match="unknown request 'nope'"):
                    c.request("nope")
                out.append(c.request("command", name="share", args={"argv": ["x"]}))
            return out

        status, command = await trio.to_thread.run_sync(client)
        assert status == {"echo": {"op": "status"}}
        assert command["echo"]["args"] == {"argv": ["x"]}

        # a raw client: garbage gets an error line, the connection stays usable
        def raw() -> list[dict[str, Any]]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(os.fspath(path))
                s.sendall(b'not json\n{"op": "ping"}\n')
                buf = b""
                while buf.count(b"\n") < 2:
                    buf += s.recv(4096)
            return [json.loads(line) for line in buf.splitlines()]

        bad, ping = await trio.to_thread.run_sync(raw)
        assert bad["ok"] is False and "malformed" in bad["error"]
        assert ping == {"ok": True, "result": {"echo": {"op": "ping"}}}
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert [r["op"] for r in seen] == ["status", "sync", "command", "ping"]


def test_client_without_daemon(runtime: Path) -> None:
    with pytest.raises(control.DaemonGone):
        control.ControlClient(runtime / "none.sock")


# ------------------------------------------------------------------------------ daemon helpers


def test_sd_notify_abstract_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.sd_notify("READY=1") is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"meshfs-test-{os.getpid()}"
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.sd_notify("READY=1", "STATUS=ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    path = os.fspath(tmp_path / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert daemon.sd_notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"


def test_cache_dir_lock(tmp_path: Path) -> None:
    first = daemon.CacheDirLock(tmp_path)
    first.acquire("/mnt/a", "cs3://u@h:1")
    second = daemon.CacheDirLock(tmp_path)
    with pytest.raises(
        daemon.StartupError,
        match=rf"in use by another meshfs daemon \(pid {os.getpid()}, mounted on /mnt/a\)",
    ):
        second.acquire("/mnt/b", "cs3://u@h:1")
    first.release()
    second.acquire("/mnt/b", "cs3://u@h:1")
    second.release()
    assert (tmp_path / "daemon.lock").stat().st_mode & 0o777 == 0o600


def test_readiness_pipe() -> None:
    r, w = os.pipe()
    ready = daemon.Readiness(w)
    ready.failed("cannot mount\nreally")
    ready.ready("/mnt")  # only the first word counts
    assert os.read(r, 100) == b"ERROR cannot mount really\n"
    assert os.read(r, 100) == b""  # closed
    os.close(r)


def test_mountinfo_unescapes_spaces(tmp_path: Path) -> None:
    assert control._unescape_mount_path("/mnt/a\\040b") == "/mnt/a b"
    assert "/" in control.mounted_filesystems() or "/proc" in control.mounted_filesystems()


# ---------------------------------------------------------------------------------------- logs


def test_log_lines_are_one_line_with_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    logsetup.setup_logging("info", out)
    log = logging.getLogger("meshfs.test")
    log.debug("hidden")
    log.warning("write %s failed", "/home/evil\nname")
    text = out.getvalue()
    assert "hidden" not in text
    assert text.count("\n") == 1 and "WARNING meshfs.test: write /home/evil\\nname failed" in text


def test_log_lines_for_journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "j", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logsetup.setup_logging("debug", stream)  # type: ignore[arg-type]
        logging.getLogger("meshfs.x").error("boom")
        logging.getLogger("meshfs.x").debug("detail")
    assert (tmp_path / "j").read_text().splitlines() == ["<3>meshfs.x: boom", "<7>meshfs.x: detail"]
    logsetup.setup_logging("info")


@pytest.mark.parametrize(("configured", "bound"), [("0", float("inf")), ("10s", 40.0), (None, 930.0)])
def test_plan_from_config(tmp_path: Path, configured: str | None, bound: float) -> None:
    from meshfs.config import load_config

    flags = {
        "source": "cs3://u@h:1",
        "mountpoint": os.fspath(tmp_path / "m"),
        "drain_timeout": configured,
        "ro": True,
        "allow_other": True,
    }
    plan = daemon.plan_from_config(load_config(flags=flags))
    assert plan.drain_timeout == bound  # the filesystem's own drain_timeout + a margin; 0 = none
    assert plan.mountpoint == os.fspath(tmp_path / "m") and plan.source == "cs3://u@h:1"
    assert plan.read_only and plan.allow_other and plan.default_permissions
