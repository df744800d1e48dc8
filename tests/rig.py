"""Test plumbing shared by the integration suites (mount, locks, writeback, auth, daemon, shares, metrics).

Owns what every suite that drives the real CLI needs, written once: running `python -m meshfs` with a
bound, bounded waits (never a fixed sleep), "is it mounted / is the daemon alive", lazy unmounts,
`Mounter` (mounts demo users through `meshfs mount` on fresh mountpoints and cache dirs; `close()`
guarantees that no mount and no daemon survives: bounded `meshfs umount`, then a lazy unmount and a
SIGKILL of the daemon), clean-up of a private registry dir, the server's view over WebDAV (ocdav, basic
auth, stdlib only) and private Reva stacks driven through dev/reva/revactl.
Suite-specific fixtures and helpers stay in the suites' own modules, which import from here by plain
name (`from rig import ...`: tests/ is on sys.path through the root conftest).

Imports nothing from meshfs: the product is driven only through its CLI, the kernel and the server.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
REVACTL = REPO / "dev" / "reva" / "revactl"
CLI_TIMEOUT = 120.0
MiB = 1 << 20
T = TypeVar("T")


# ---- bounded waits ---------------------------------------------------------------------------------


def wait_for(
    cond: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.1,
    *,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Poll `cond` until it returns something truthy and return that; AssertionError naming `what` (and
    the last value) after `timeout` s. Polls fast at first, then every `interval` s at most. Exceptions
    of the `retry_on` types count as "not yet" (e.g. EIO while a mount recovers); the last is reported."""
    deadline = time.monotonic() + timeout
    delay = min(0.005, interval)
    last: object = None
    while True:
        try:
            value = cond()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(delay)
        delay = min(delay * 2, interval)


# ---- mounts, processes, the CLI --------------------------------------------------------------------


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f]


def mounted(path: Path | str) -> bool:
    return os.fspath(path) in mount_points()


def lazy_unmount(path: Path | str) -> None:
    """Detach a mount even when its daemon is dead or hung (`umount -l`; fusermount3 -u -z unprivileged)."""
    cmd = ["umount", "-l"] if os.geteuid() == 0 else ["fusermount3", "-u", "-z"]
    subprocess.run([*cmd, os.fspath(path)], capture_output=True, check=False, timeout=30)


def detach_all_below(root: Path) -> list[str]:
    """Lazily unmount everything mounted below `root`; returns what was still mounted."""
    prefix = os.fspath(root).rstrip("/") + "/"
    left = [p for p in mount_points() if p.startswith(prefix)]
    for point in left:
        lazy_unmount(point)
    return [f"{p} still mounted" for p in left]


def pid_alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def end_daemon(pid: int, grace: float = 10.0) -> list[str]:
    """Give daemon `pid` `grace` s to exit, then SIGKILL it (and wait for that); returns what was forced."""
    if not pid_alive(pid):
        return []
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not pid_alive(pid), grace, f"daemon {pid} to exit")
    if not pid_alive(pid):
        return []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not pid_alive(pid), 10, f"daemon {pid} to die")
    return [f"daemon {pid} still alive: killed"]


def registry_entries(runtime_dir: Path) -> list[dict[str, Any]]:
    """The mount registry entries (`MESHFS_RUNTIME_DIR/*.json`) of a private runtime dir."""
    out = []
    for p in sorted(runtime_dir.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(p.read_text()))
    return out


def kill_registered(runtime_dir: Path, *, report_stale: bool = False) -> list[str]:
    """SIGKILL every daemon still registered in `runtime_dir` (a clean umount unregisters it); with
    `report_stale`, an entry whose daemon is gone counts as a problem too (it died unregistered)."""
    problems = []
    for entry in registry_entries(runtime_dir):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            pid = int(entry["pid"])
            if pid_alive(pid):
                problems.append(f"daemon {pid} still running")
                problems += end_daemon(pid, grace=0)
            elif report_stale:
                problems.append(f"daemon {pid} still registered")
    return problems


def cli_env(
    runtime_dir: Path | None = None,
    *,
    filesystem: str | None = None,
    pythonpath: Iterable[Path] = (),
    drop: Iterable[str] = (),
    **extra: str,
) -> dict[str, str]:
    """The environment of `meshfs` commands of one test: a private registry (MESHFS_RUNTIME_DIR), an
    optional MESHFS_FILESYSTEM factory (found on `pythonpath`, then the repo), never the caller's
    NOTIFY_SOCKET; the variables in `drop` removed, `extra` added."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MESHFS_FILESYSTEM", *drop)}
    if runtime_dir is not None:
        env["MESHFS_RUNTIME_DIR"] = os.fspath(runtime_dir)
    if filesystem is not None:
        env["MESHFS_FILESYSTEM"] = filesystem
    env["PYTHONPATH"] = os.pathsep.join([*map(os.fspath, pythonpath), os.fspath(REPO)])
    env.update(extra)
    return env


def run_meshfs(
    *args: str,
    timeout: float = CLI_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = REPO,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m meshfs ARGS` with a bounded run time; with check=True a failure raises with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "meshfs", *args],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`meshfs {' '.join(args)}` failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
        )
    return proc


def one_line(stderr: str) -> str:
    """A failed command's stderr must be exactly one non-empty `meshfs: ...` line; return it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("meshfs: "), lines[0]
    return lines[0]


def write_private(path: Path, text: str) -> Path:
    """Write `text` to a file created 0600 (a password file: never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


# ---- the kernel's view of a mount, the daemon's metrics -------------------------------------------


def devno(mountpoint: Path | str) -> str:
    """MAJOR:MINOR of the mount at `mountpoint` from /proc/self/mountinfo (= its st_dev; root cannot
    stat somebody else's FUSE mount without allow_other, so no stat here)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        found = [line.split()[2] for line in f if line.split()[4] == os.fspath(mountpoint)]
    assert found, f"{mountpoint} is not mounted"
    return found[-1]


def bdi_read_ahead(mountpoint: Path | str) -> int:
    """The mount's kernel readahead in KiB (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb)."""
    return int(Path(f"/sys/class/bdi/{devno(mountpoint)}/read_ahead_kb").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests_answered(port: int, op: str) -> int:
    """meshfs_requests_total{op=OP,errno="OK"} of the daemon serving metrics on 127.0.0.1:PORT."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    m = re.search(rf'^meshfs_requests_total\{{op="{op}",errno="OK"\}} (\S+)$', text, re.MULTILINE)
    return int(float(m.group(1))) if m else 0


# ---- data ------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


# ---- mounts through the real CLI -------------------------------------------------------------------


@dataclass
class Mount:
    """One running `meshfs mount`: its mountpoint, cache dir, user and daemon pid."""

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

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        """This mount's row of `meshfs status MOUNTPOINT --json`."""
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


def daemon_pid_for(cache_dir: Path) -> int | None:
    """The pid of a foreground daemon serving `cache_dir`, found in /proc (a mount whose registration
    or status query failed)."""
    needle = os.fsencode(os.fspath(cache_dir))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"meshfs" in cmdline and needle in cmdline and b"--foreground" in cmdline:
            return int(proc.name)
    return None


@dataclass
class Mounter:
    """Mounts demo users through `meshfs mount` below `root` (mnt-USER-N, cache-USER-N: every mount a
    separate node unless a cache dir is given); `close()` removes every mount and daemon it made.

    `options` go to every mount (after tls=false), `umount_timeout` bounds each `meshfs umount`.
    """

    gateway: str  # host:port the mounts talk to
    passwords: dict[str, str]
    root: Path
    options: tuple[str, ...] = ()
    umount_timeout: float = 60.0
    mount_class: type[Mount] = Mount
    mounts: list[Any] = field(default_factory=list)

    def mount(
        self, user: str = "einstein", *options: str, cache_dir: Path | None = None, gateway: str | None = None
    ) -> Any:
        """Mount `user` (gateway: host:port instead of the default one, e.g. a proxy); returns the
        `mount_class` instance, registered before the mount so a half-made one is cleaned up too."""
        n = len(self.mounts)
        mp = self.root / f"mnt-{user}-{n}"
        mp.mkdir(parents=True)
        cache = cache_dir or self.root / f"cache-{user}-{n}"
        pw = write_private(self.root / f"{user}.password", self.passwords[user])
        m = self.mount_class(mp, cache, user)
        self.mounts.append(m)
        proc = run_meshfs(
            "mount", f"cs3://{user}@{gateway or self.gateway}", os.fspath(mp),
            "--password-file", os.fspath(pw), "--cache-dir", os.fspath(cache),
            "-o", ",".join(("tls=false", *self.options, *options)),
            timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"meshfs mount failed ({proc.returncode}): {proc.stderr.strip()}")
        m.pid = int(m.status()["pid"])
        assert mounted(mp), f"{mp} not in /proc/self/mountinfo after a successful mount"
        return m

    def kill(self, m: Mount, *, detach: bool = False) -> None:
        """kill -9 the daemon; with `detach`, then lazily unmount the dead mount (as an admin would)."""
        assert m.pid is not None
        os.kill(m.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(m.pid or 0), 30, f"daemon {m.pid} to die")
        if detach:
            lazy_unmount(m.mountpoint)
            wait_for(lambda: not mounted(m.mountpoint), 30, f"{m.mountpoint} to be detached")

    def unmount(self, m: Mount, timeout: float | None = None) -> list[str]:
        """`meshfs umount` (bounded), then lazy unmount and kill as fallbacks; returns what was forced."""
        problems: list[str] = []
        bound = self.umount_timeout if timeout is None else timeout
        if m.pid is None:
            m.pid = daemon_pid_for(m.cache_dir)
        if mounted(m.mountpoint):
            try:
                proc = run_meshfs(
                    "umount", os.fspath(m.mountpoint), "--timeout", str(bound), timeout=bound + 30
                )
                if proc.returncode != 0:
                    problems.append(f"umount {m.mountpoint}: {proc.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append(f"umount {m.mountpoint} hung")
        if mounted(m.mountpoint):
            problems.append(f"{m.mountpoint} still mounted: lazy unmount")
            lazy_unmount(m.mountpoint)
        if m.pid is not None:
            problems += end_daemon(m.pid, grace=15)
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


# ---- the server's view (ocdav) ---------------------------------------------------------------------


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

    def request(self, method: str, rel: str, data: bytes | None = None) -> tuple[int, bytes]:
        """(HTTP status, body) of any request; an error status is returned, not raised."""
        try:
            with self._open(method, rel, data=data) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, b""

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
        with self._open("DELETE", rel) as resp:
            assert resp.status in (200, 204), resp.status

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

    def purge_trash(self, top_names: set[str]) -> int:
        """Delete for good the trash-bin items whose original location is one of `top_names` (folders
        a session made and deleted): the dev stack keeps deleted data."""
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


# ---- private Reva stacks -----------------------------------------------------------------------------

#: revactl's default gateway and HTTP (ocdav + /data) ports; an instance adds its REVA_PORT_OFFSET
GATEWAY_PORT, HTTP_PORT = 19000, 19001


def parse_env(text: str) -> dict[str, str]:
    """KEY=value lines (values shell-quoted, as `revactl env` prints them) → dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep:
            values = shlex.split(raw)
            out[key] = values[0] if values else ""
    return out


@dataclass
class PrivateStack:
    """A revactl instance of a suite's own (REVA_INSTANCE/REVA_PORT_OFFSET, plus `extra` variables such
    as REVA_TOKEN_EXPIRES): started, stopped and reset at will. Never one of another engineer's: the
    suites that use one run under `flock /tmp/meshfs-private-stacks.lock`."""

    instance: str
    offset: int
    extra: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REVA_INSTANCE": self.instance,
            "REVA_PORT_OFFSET": str(self.offset),
            **self.extra,
        }

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [os.fspath(REVACTL), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def revactl(self, *args: str, timeout: float = 180) -> str:
        """`revactl ARGS` for this instance; AssertionError with its output when it fails."""
        proc = self.run(*args, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"revactl {' '.join(args)} ({self.instance}) failed: {proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def is_up(self) -> bool:
        return self.run("status", timeout=30).returncode == 0

    def up(self) -> None:
        self.revactl("up")
        self.env_vars = parse_env(self.revactl("env", timeout=30))

    def down(self) -> None:
        self.revactl("down", timeout=60)

    @property
    def gateway_port(self) -> int:
        """The gateway's port, known before the stack is up (to put a proxy in front of it)."""
        return GATEWAY_PORT + self.offset

    @property
    def http_port(self) -> int:
        """The HTTP port (ocdav and the data gateway), known before the stack is up."""
        return HTTP_PORT + self.offset

    @property
    def gateway(self) -> str:
        return self.env_vars["REVA_GATEWAY"]

    @property
    def http_url(self) -> str:
        return self.env_vars["REVA_HTTP_URL"]

    @property
    def webdav_url(self) -> str:
        return self.env_vars["REVA_WEBDAV_URL"]
