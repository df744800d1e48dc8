"""The daemon with the real MeshFilesystem against the dev Reva: login failures as one line, a
clean umount that has uploaded what was written, `meshfs doctor`.

These are about the lifecycle (readiness, drain at umount, error lines); the filesystem's
semantics are tested by the vfs suites.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from rigs import Rig, mounted, one_line, pid_alive


def _real(rig: Rig) -> dict[str, str]:
    """Overrides of the rig's environment that select the real MeshFilesystem (empty = unset)."""
    return {"MESHFS_FILESYSTEM": ""}


def _source(reva: Any, user: str = "einstein") -> str:
    return f"cs3://{user}@{reva.gateway}"


def _webdav(reva: Any, method: str, name: str) -> tuple[int, bytes]:
    request = urllib.request.Request(reva.webdav_url.rstrip("/") + "/" + name, method=method)
    token = base64.b64encode(f"{reva.einstein.username}:{reva.einstein.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _mount_args(rig: Rig, reva: Any, password_file: Path) -> list[str]:
    return [
        "mount",
        _source(reva),
        os.fspath(rig.mountpoint),
        "--password-file",
        os.fspath(password_file),
        "--cache-dir",
        os.fspath(rig.cache_dir),
        "-o",
        "tls=false",
    ]


@pytest.mark.fuse
def test_wrong_password_is_one_line(rig: Rig, reva: Any, password_file: Any) -> None:
    done = rig.meshfs(*_mount_args(rig, reva, password_file("not-the-password")), env=_real(rig))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "wrong username or password" in line
    assert "not-the-password" not in done.stderr
    assert "not-the-password" not in (rig.cache_dir / "daemon.log").read_text()
    assert not mounted(rig.mountpoint) and rig.entries() == []


@pytest.mark.fuse
def test_tls_against_a_plain_server_says_so(rig: Rig, reva: Any, password_file: Any) -> None:
    args = [a for a in _mount_args(rig, reva, password_file(reva.einstein)) if a not in ("-o", "tls=false")]
    done = rig.meshfs(*args, "-o", "call_timeout=2s,unavailable_timeout=2s", env=_real(rig), timeout=120)
    assert done.returncode == 1
    assert "tls=false" in one_line(done.stderr)
    assert not mounted(rig.mountpoint)


@pytest.mark.fuse
def test_umount_uploads_what_was_written(rig: Rig, reva: Any, password_file: Any) -> None:
    name = f"daemon-test-{uuid.uuid4().hex[:8]}.txt"
    body = b"written just before umount\n" * 100
    done = rig.meshfs(
        *_mount_args(rig, reva, password_file(reva.einstein)), "-o", "upload_delay=30s", env=_real(rig)
    )
    assert done.returncode == 0, done.stderr
    pid = int(rig.entry()["pid"])
    # the password is in no place another process could read: argv, environment, log
    for where in ("cmdline", "environ"):
        assert reva.einstein.password.encode() not in Path(f"/proc/{pid}/{where}").read_bytes()
    try:
        (rig.mountpoint / "home" / name).write_bytes(body)
        # the upload waits 30 s after close; umount must not: it drains first
        done = rig.meshfs("umount", os.fspath(rig.mountpoint), timeout=120)
        assert done.returncode == 0, done.stderr
        assert not pid_alive(pid) and not mounted(rig.mountpoint)
        assert _webdav(reva, "GET", name) == (200, body)
        assert reva.einstein.password not in (rig.cache_dir / "daemon.log").read_text()
    finally:
        _webdav(reva, "DELETE", name)


def test_doctor_good_and_bad_credentials(rig: Rig, reva: Any, password_file: Any) -> None:
    base = ["doctor", _source(reva), "--cache-dir", os.fspath(rig.cache_dir), "-o", "tls=false"]
    done = rig.meshfs(*base, "--password-file", os.fspath(password_file(reva.einstein)))
    assert "ok    credentials accepted" in done.stdout and "authenticated as einstein" in done.stdout, (
        done.stdout
    )
    # exit status 1 exactly when some check failed (the local ones depend on the machine)
    assert done.returncode == (1 if "\nFAIL" in "\n" + done.stdout else 0)
    done = rig.meshfs(*base, "--password-file", os.fspath(password_file("wrong")))
    assert done.returncode == 1
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "wrong username or password" in fails[0]
    loose = password_file("relativity")
    loose.chmod(0o644)
    done = rig.meshfs(*base, "--password-file", os.fspath(loose))
    assert done.returncode == 1 and "chmod 600" in done.stdout


def test_doctor_dead_server(rig: Rig) -> None:
    done = rig.meshfs(
        "doctor",
        "cs3://einstein@127.0.0.1:9",
        "--cache-dir",
        os.fspath(rig.cache_dir),
        "-o",
        "tls=false",
        "--password-file",
        os.fspath(rig.password_file),
    )
    assert done.returncode == 1
    assert "FAIL  server 127.0.0.1:9 is not reachable" in done.stdout


def test_doctor_mountpoint(rig: Rig) -> None:
    base = [
        "doctor",
        "cs3://einstein@127.0.0.1:9",
        "--cache-dir",
        os.fspath(rig.cache_dir),
        "-o",
        "tls=false",
        "--password-file",
        os.fspath(rig.password_file),
    ]
    done = rig.meshfs(*base, "-o", f"mountpoint={rig.mountpoint}")
    assert f"ok    mountpoint {rig.mountpoint}: an empty directory" in done.stdout
    (rig.mountpoint / "x").touch()
    done = rig.meshfs(*base, "-o", f"mountpoint={rig.mountpoint}")
    assert f"FAIL  mountpoint {rig.mountpoint} is not empty" in done.stdout and done.returncode == 1
    done = rig.meshfs(*base, "-o", f"mountpoint={rig.root / 'missing'}")
    assert "does not exist" in done.stdout
