"""Plumbing for the write-back integration tests: mounts through the real CLI (kill -9, remount on the
same cache dir), bounded waits, the server's view over WebDAV, a private Reva stack, a tmpfs.

Owns only test plumbing for tests/writeback/. The product is driven through its CLI, the kernel and its
daemon log; the server is looked at through ocdav (WebDAV, basic auth), independent of meshfs.
Imports nothing from meshfs.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REVACTL = REPO / "dev" / "reva" / "revactl"
CLI_TIMEOUT = 120.0
UMOUNT_TIMEOUT = 120.0
MiB = 1 << 20
T = TypeVar("T")


# ---- bounded waits ---------------------------------------------------------------------------------


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `cond` until it returns something truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


# ---- data ------------------------------------------------------------------------------------------


def make_data_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes (deterministic per seed) to `path`; return their sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * (MiB // 32)  # 1 MiB pattern
    with open(path, "wb") as f:
        done = 0
        n = 0
        while done < size:
            # every MiB differs (its index is stamped in), so a misplaced chunk changes the digest
            chunk = (n.to_bytes(8, "little") + block[8:])[: size - done]
            f.write(chunk)
            h.update(chunk)
            done += len(chunk)
            n += 1
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the CLI and the mounts ------------------------------------------------------------------------


def run_meshfs(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`python -m meshfs ARGS` with a bounded run time."""
    return subprocess.run(
        [sys.executable, "-m", "meshfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def is_mounted(path: Path) -> bool:
    target = os.fspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def lazy_unmount(path: Path) -> None:
    cmd = ["umount", "-l"] if os.geteuid() == 0 else ["fusermount3", "-u", "-z"]
    subprocess.run([*cmd, os.fspath(path)], capture_output=True, check=False, timeout=30)


@dataclass
class Mount:
    """One running `meshfs mount`."""

    mountpoint: Path
    cache_dir: Path
    user: str
    pid: int | None = None

    @property
    def home(self) -> Path:
        return self.mountpoint / "home"

    @property
    def log(self) -> Path:
        return self.cache_dir / "daemon.log"

    def status(self) -> dict[str, Any]:
        proc = run_meshfs("status", os.fspath(self.mountpoint), "--json", timeout=60)
        assert proc.returncode == 0, f"meshfs status failed ({proc.returncode}): {proc.stderr.strip()}"
        doc = json.loads(proc.stdout)
        entries = doc.get("mounts", [doc])
        assert len(entries) == 1, entries
        entry: dict[str, Any] = entries[0]
        return entry

    def sync(self, path: Path | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`meshfs sync PATH --timeout T` (default: the whole mount); the caller checks the exit code."""
        target = os.fspath(path if path is not None else self.mountpoint)
        return run_meshfs("sync", target, "--timeout", str(timeout), timeout=timeout + 60)

    def sync_ok(self, path: Path | None = None, timeout: float = 120.0) -> None:
        proc = self.sync(path, timeout)
        assert proc.returncode == 0, (
            f"meshfs sync {path or self.mountpoint} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def uploads_logged(self, rel: str) -> int:
        """How many "uploaded <rel> (...)" lines the daemon logged (rel: mount-relative path)."""
        pat = re.compile(r"uploaded " + re.escape(rel.strip("/")) + r" \(\d+ bytes\)")
        return len(pat.findall(self.log_text()))


def state_of(path: Path) -> str:
    """xattr user.meshfs.state of a file on a mount."""
    return os.getxattr(path, "user.meshfs.state").decode()


@dataclass
class Mounter:
    """Mounts demo users through the real CLI below `root`; `close()` removes every mount and daemon."""

    gateway: str  # host:port the mounts talk to
    passwords: dict[str, str]
    root: Path
    mounts: list[Mount] = field(default_factory=list)

    def mount(self, *options: str, user: str = "einstein", cache_dir: Path | None = None) -> Mount:
        n = len(self.mounts)
        mp = self.root / f"mnt-{user}-{n}"
        mp.mkdir(parents=True)
        cache = cache_dir or self.root / f"cache-{user}-{n}"
        pw = self.root / f"{user}.password"
        pw.write_text(self.passwords[user])
        pw.chmod(0o600)
        opts = ",".join(("tls=false", *options))
        m = Mount(mp, cache, user)
        self.mounts.append(m)  # registered before checking, so a half-made mount is cleaned up too
        proc = run_meshfs(
            "mount",
            f"cs3://{user}@{self.gateway}",
            os.fspath(mp),
            "--password-file",
            os.fspath(pw),
            "--cache-dir",
            os.fspath(cache),
            "-o",
            opts,
            timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(f"meshfs mount failed ({proc.returncode}): {proc.stderr.strip()}")
        m.pid = int(m.status()["pid"])
        assert is_mounted(mp), f"{mp} not in /proc/self/mountinfo after a successful mount"
        return m

    def kill9(self, m: Mount) -> None:
        """kill -9 the daemon, then detach the dead mount (lazy unmount), as an admin would."""
        assert m.pid is not None
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(m.pid or 0), 30, f"daemon {m.pid} to die")
        lazy_unmount(m.mountpoint)
        wait_for(lambda: not is_mounted(m.mountpoint), 30, f"{m.mountpoint} to be detached")

    def unmount(self, m: Mount, timeout: float = UMOUNT_TIMEOUT) -> list[str]:
        """`meshfs umount` (bounded), then lazy unmount and kill as fallbacks; returns what was forced."""
        problems: list[str] = []
        if is_mounted(m.mountpoint):
            try:
                proc = run_meshfs(
                    "umount", os.fspath(m.mountpoint), "--timeout", str(timeout), timeout=timeout + 30
                )
                if proc.returncode != 0:
                    problems.append(f"umount {m.mountpoint}: {proc.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append(f"umount {m.mountpoint} hung")
        if is_mounted(m.mountpoint):
            problems.append(f"{m.mountpoint} still mounted: lazy unmount")
            lazy_unmount(m.mountpoint)
        if m.pid is not None and pid_alive(m.pid):
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not pid_alive(m.pid or 0), 15, "daemon exit")
            if pid_alive(m.pid):
                problems.append(f"daemon {m.pid} still alive: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.pid, signal.SIGKILL)
        return problems

    def close(self) -> list[str]:
        problems: list[str] = []
        for m in reversed(self.mounts):
            try:
                problems += self.unmount(m)
            except Exception as e:  # keep cleaning the others
                problems.append(f"{m.mountpoint}: {e!r}")
        self.mounts.clear()
        return problems


# ---- the server's view (ocdav) -----------------------------------------------------------------------


class WebDav:
    """One user's files over ocdav (basic auth): what the server stores, independent of meshfs."""

    def __init__(self, http_url: str, username: str, password: str) -> None:
        self.base = f"{http_url.rstrip('/')}/remote.php/dav/files/{username}/"
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def url(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel.strip("/"))

    def _open(
        self, method: str, rel: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        req = urllib.request.Request(
            self.url(rel), data=data, method=method, headers={**self.headers, **(headers or {})}
        )
        return urllib.request.urlopen(req, timeout=120)

    def get(self, rel: str) -> bytes:
        with self._open("GET", rel) as resp:
            data: bytes = resp.read()
            return data

    def sha256(self, rel: str) -> tuple[str, int]:
        """(sha256, size) of the server's content, streamed."""
        h = hashlib.sha256()
        n = 0
        with self._open("GET", rel) as resp:
            while chunk := resp.read(MiB):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    def exists(self, rel: str) -> bool:
        try:
            with self._open("PROPFIND", rel, headers={"Depth": "0"}):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def put(self, rel: str, data: bytes) -> None:
        with self._open("PUT", rel, data=data, headers={"Content-Length": str(len(data))}) as resp:
            assert resp.status in (200, 201, 204), resp.status

    def mkcol(self, rel: str) -> None:
        with self._open("MKCOL", rel) as resp:
            assert resp.status in (200, 201), resp.status

    def delete(self, rel: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError), self._open("DELETE", rel):
            pass

    def purge_trash(self, top_names: set[str]) -> int:
        """Delete for good the trash-bin items whose original location is one of `top_names` (folders
        this session made and deleted): the dev stack keeps deleted data, and these tests write GiBs."""
        if not top_names:
            return 0
        trash = self.base.replace("/remote.php/dav/files/", "/remote.php/dav/trash-bin/")
        req = urllib.request.Request(trash, method="PROPFIND", headers={**self.headers, "Depth": "1"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            tree = ET.fromstring(resp.read())
        origin = urllib.parse.urlparse(trash)
        n = 0
        for item in tree.iter("{DAV:}response"):
            href = item.findtext("{DAV:}href") or ""
            loc = item.findtext(".//{http://owncloud.org/ns}trashbin-original-location") or ""
            if loc.strip("/") in top_names:
                url = f"{origin.scheme}://{origin.netloc}{href}"
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(
                        urllib.request.Request(url, method="DELETE", headers=self.headers), timeout=120
                    ).close()
                    n += 1
        return n

    def names(self, rel: str) -> list[str]:
        """The entry names of a folder (PROPFIND Depth 1)."""
        with self._open("PROPFIND", rel.rstrip("/") + "/", headers={"Depth": "1"}) as resp:
            tree = ET.fromstring(resp.read())
        own = urllib.parse.urlparse(self.url(rel.rstrip("/") + "/")).path.rstrip("/")
        out = []
        for href in tree.iter("{DAV:}href"):
            path = urllib.parse.unquote((href.text or "").rstrip("/"))
            if path and path != urllib.parse.unquote(own):
                out.append(path.rsplit("/", 1)[-1])
        return out


# ---- a private Reva stack (for outages) ---------------------------------------------------------------


@dataclass
class PrivateStack:
    """A revactl instance of our own (REVA_INSTANCE/REVA_PORT_OFFSET): stopped and started at will."""

    instance: str
    offset: int
    env_vars: dict[str, str] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "REVA_INSTANCE": self.instance, "REVA_PORT_OFFSET": str(self.offset)}

    def revactl(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run(
            [os.fspath(REVACTL), *args],
            cwd=REPO,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"revactl {' '.join(args)} ({self.instance}) failed: {proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def up(self) -> None:
        self.revactl("up")
        env: dict[str, str] = {}
        for line in self.revactl("env", timeout=30).splitlines():
            key, sep, raw = line.partition("=")
            if sep:
                values = shlex.split(raw)
                env[key] = values[0] if values else ""
        self.env_vars = env

    def down(self) -> None:
        self.revactl("down", timeout=60)

    @property
    def gateway(self) -> str:
        return self.env_vars["REVA_GATEWAY"]

    @property
    def http_url(self) -> str:
        return self.env_vars["REVA_HTTP_URL"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only); always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", os.fspath(path)], check=True
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", os.fspath(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], capture_output=True, check=False)
