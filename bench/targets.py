"""The things benchmarked side by side: meshfs, rclone mount (WebDAV, --vfs-cache-mode full),
davfs2, the local disk (limit) and raw curl against the data gateway (limit).

Owns: mounting/unmounting each peer (bounded, with force-detach fallbacks), where its copy of the
benchmark data lives, its daemon pid (for CPU), how to wait until its writes are durable and how
many bytes it says it fetched.
Must not import: meshfs (the product is driven through its CLI only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from .server import PASSWORD, USER, Reva
from .sysutil import BenchError, force_detach, is_mounted, kill_pid, log, run, wait_until

VPY = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python")
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 300.0  # includes draining pending uploads


class Target:
    """One side of the comparison. `root` is where the benchmark tree (data/, scratch dirs) appears."""

    name = "?"
    kind = "peer"  # "subject" (meshfs), "peer" (rclone, davfs2), "limit" (local, curl)
    is_mount = True

    def __init__(self, work: Path, reva: Reva) -> None:
        self.work = work / self.name
        self.reva = reva
        self.mp = self.work / "mnt"
        self.cache = self.work / "cache"
        self.work.mkdir(parents=True, exist_ok=True)
        self.mp.mkdir(exist_ok=True)
        self.mounted = False

    @property
    def root(self) -> Path:
        return self.mp / "bench"

    def mount(self) -> None:
        """Mount with an empty cache (cold)."""
        raise NotImplementedError

    def unmount(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return []

    def wait_durable(self, rel: str, size: int | None, timeout: float) -> None:
        """Wait until `rel` (relative to root) is stored on the server with `size` bytes (None: gone)."""
        wait_until(
            lambda: self.reva.size("bench/" + rel) == size, timeout, f"{self.name}: {rel} on the server", 0.02
        )

    def fetched(self) -> int | None:
        """Bytes the client says it downloaded so far (cumulative), None if it cannot tell."""
        return None

    def _fresh_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir(parents=True)
        os.chmod(self.cache, 0o700)


class Meshfs(Target):
    name = "meshfs"
    kind = "subject"

    def __init__(
        self, work: Path, reva: Reva, options: str = "", profile: Path | None = None, spy: str | None = None
    ) -> None:
        super().__init__(work, reva)
        self.options = options
        self.profile = profile if spy else None  # directory for py-spy profiles of the daemon, one per mount
        self.spy = spy
        self.profile_name = "mount"
        self._spy: subprocess.Popen[bytes] | None = None
        self.pwfile = self.work / "password"
        self.pwfile.write_text(PASSWORD)
        os.chmod(self.pwfile, 0o600)
        self._pid = 0

    @property
    def root(self) -> Path:
        return self.mp / "home" / "bench"

    def _cli(self, *args: str, timeout: float, check: bool = True) -> str:
        return run([VPY, "-m", "meshfs", *args], timeout=timeout, check=check).out

    def mount(self) -> None:
        self._fresh_cache()
        opts = "tls=false,upload_delay=0" + (f",{self.options}" if self.options else "")
        self._cli(
            "mount", f"cs3://{USER}@{self.reva.gateway}", str(self.mp),
            "--password-file", str(self.pwfile), "--cache-dir", str(self.cache), "-o", opts,
            timeout=MOUNT_TIMEOUT,
        )  # fmt: skip
        self.mounted = True
        pid = self.status()["pid"]
        self._pid = pid if isinstance(pid, int) else 0
        if self.profile is not None and self._pid:
            self._start_spy()

    def _start_spy(self) -> None:
        """py-spy samples the daemon until it exits (raw collapsed stacks, idle threads left out)."""
        assert self.profile is not None
        self.profile.mkdir(parents=True, exist_ok=True)
        assert self.spy is not None
        out = self.profile / f"{self.profile_name}.txt"
        self._spy = subprocess.Popen(
            [
                self.spy,
                "record",
                "--nonblocking",
                "-f",
                "raw",
                "-r",
                "100",
                "-p",
                str(self._pid),
                "-o",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def status(self) -> dict[str, object]:
        st = json.loads(self._cli("status", "--json", str(self.mp), timeout=30))
        m: dict[str, object] = st["mounts"][0]
        return m

    def pids(self) -> list[int]:
        return [self._pid] if self._pid else []

    def wait_durable(self, rel: str, size: int | None, timeout: float) -> None:
        self._cli("sync", "--timeout", str(int(timeout)), str(self.root), timeout=timeout + 30)

    def fetched(self) -> int | None:
        fs = self.status().get("fs")
        return int(fs["bytes_down"]) if isinstance(fs, dict) else None

    def unmount(self) -> None:
        if not self.mounted:
            return
        try:
            self._cli("umount", str(self.mp), timeout=UMOUNT_TIMEOUT)
        except BenchError as e:
            log(f"meshfs umount failed ({e}); forcing")
            force_detach(str(self.mp))
        if self._pid:
            wait_until_gone(self._pid, 30)
            kill_pid(self._pid)
        if self._spy is not None:
            try:
                self._spy.wait(timeout=30)  # py-spy writes its file once the daemon is gone
            except subprocess.TimeoutExpired:
                kill_pid(self._spy.pid)
            self._spy = None
        self.mounted = False
        self._pid = 0


def wait_until_gone(pid: int, timeout: float) -> None:
    try:
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout, f"pid {pid} to exit")
    except BenchError:
        pass


class Rclone(Target):
    name = "rclone"
    RC_PORT = 5592

    def __init__(self, work: Path, reva: Reva) -> None:
        super().__init__(work, reva)
        self.conf = self.work / "rclone.conf"
        obscured = run(["rclone", "obscure", PASSWORD], timeout=30).out.strip()
        self.conf.write_text(
            f"[reva]\ntype = webdav\nurl = {reva.webdav}\nvendor = owncloud\n"
            f"user = {USER}\npass = {obscured}\n"
        )
        os.chmod(self.conf, 0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.rc = f"http://127.0.0.1:{self.RC_PORT}/"

    def mount(self) -> None:
        self._fresh_cache()
        logf = open(self.work / "rclone.log", "ab")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(
            [
                "rclone", "mount", "reva:", str(self.mp), "--config", str(self.conf),
                "--vfs-cache-mode", "full", "--cache-dir", str(self.cache), "--vfs-write-back", "0s",
                "--rc", "--rc-addr", f"127.0.0.1:{self.RC_PORT}", "--rc-no-auth",
            ],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
        )  # fmt: skip
        logf.close()
        self.mounted = True
        proc = self.proc
        wait_until(lambda: is_mounted(str(self.mp)) or proc.poll() is not None, MOUNT_TIMEOUT, "rclone mount")
        if proc.poll() is not None:
            self.mounted = False
            raise BenchError(f"rclone mount exited with {proc.returncode} (see {self.work / 'rclone.log'})")
        wait_until(lambda: self._rc_ok(), 30, "rclone rc")

    def _rc(self, method: str) -> dict[str, object]:
        req = urllib.request.Request(
            self.rc + method, data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            out: dict[str, object] = json.loads(r.read())
            return out

    def _rc_ok(self) -> bool:
        try:
            self._rc("core/version")
            return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def uploads_pending(self) -> int:
        dc = self._rc("vfs/stats").get("diskCache", {})
        assert isinstance(dc, dict)
        return int(dc.get("uploadsInProgress", 0)) + int(dc.get("uploadsQueued", 0))

    def wait_durable(self, rel: str, size: int | None, timeout: float) -> None:
        # rclone's own view first (its upload queue), then confirm on the server
        wait_until(lambda: self.uploads_pending() == 0, timeout, "rclone uploads", 0.02)
        super().wait_durable(rel, size, timeout)

    def wait_durable_all(self, timeout: float) -> None:
        wait_until(lambda: self.uploads_pending() == 0, timeout, "rclone uploads", 0.02)

    def fetched(self) -> int | None:
        n = self._rc("core/stats").get("bytes", 0)
        return n if isinstance(n, int) else None

    def unmount(self) -> None:
        if not self.mounted:
            return
        try:
            if self.proc and self.proc.poll() is None:
                try:
                    wait_until(
                        lambda: self.uploads_pending() == 0, UMOUNT_TIMEOUT, "rclone uploads before unmount"
                    )
                except (BenchError, OSError) as e:
                    log(f"rclone: {e}")
            run(["fusermount3", "-u", str(self.mp)], timeout=60, check=False)
            if self.proc:
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kill_pid(self.proc.pid)
                    self.proc.wait(timeout=10)
        finally:
            if is_mounted(str(self.mp)):
                force_detach(str(self.mp))
            if self.proc and self.proc.poll() is None:
                kill_pid(self.proc.pid)
            self.mounted = False
            self.proc = None


class Davfs(Target):
    name = "davfs2"

    def __init__(self, work: Path, reva: Reva) -> None:
        super().__init__(work, reva)
        self.secrets = self.work / "secrets"
        self.secrets.write_text(f"{reva.webdav} {USER} {PASSWORD}\n")
        os.chmod(self.secrets, 0o600)
        self.conf = self.work / "davfs2.conf"
        self._pid = 0

    def mount(self) -> None:
        self._fresh_cache()
        shutil.chown(self.cache, "root", "davfs2")  # mount.davfs (as root) needs the davfs2 group on it
        os.chmod(self.cache, 0o775)
        # buf_size 64: davfs2 1.6.1 fails on kernel >= 6.16 without it; delay_upload 0 to upload at once
        self.conf.write_text(
            f"buf_size 64\ncache_dir {self.cache}\nsecrets {self.secrets}\ndelay_upload 0\nask_auth 0\n"
        )
        run(
            ["mount", "-t", "davfs", self.reva.webdav, str(self.mp), "-o", f"conf={self.conf}"],
            timeout=MOUNT_TIMEOUT,
        )
        self.mounted = True
        self._pid = self._find_pid()

    def _find_pid(self) -> int:
        piddir = Path("/var/run/mount.davfs")
        for f in piddir.glob("*.pid") if piddir.exists() else []:
            if f.name.startswith(str(self.mp).strip("/").replace("/", "-")):
                try:
                    return int(f.read_text().strip())
                except (OSError, ValueError):
                    pass
        return 0

    def pids(self) -> list[int]:
        if not self._pid and self.mounted:  # mount.davfs writes its pid file a moment after mount returns
            self._pid = self._find_pid()
        return [self._pid] if self._pid else []

    def unmount(self) -> None:
        if not self.mounted:
            return
        try:
            run(["umount", str(self.mp)], timeout=UMOUNT_TIMEOUT)
        except BenchError as e:
            log(f"davfs2 umount failed ({e}); forcing")
            force_detach(str(self.mp))
        if self._pid:
            wait_until_gone(self._pid, 60)
            kill_pid(self._pid)
        self.mounted = False
        self._pid = 0


class Local(Target):
    """The local disk (same filesystem as the caches): the upper limit of a mount."""

    name = "local"
    kind = "limit"
    is_mount = False

    def __init__(self, work: Path, reva: Reva, data: Path) -> None:
        super().__init__(work, reva)
        self.data = data  # the local copy of the data set (the upload source)
        self.tree = self.work / "tree"

    @property
    def root(self) -> Path:
        return self.tree

    def mount(self) -> None:
        self.tree.mkdir(exist_ok=True)
        link = self.tree / "data"
        if not link.exists():
            link.symlink_to(self.data)
        self.mounted = True

    def unmount(self) -> None:
        self.mounted = False

    def wait_durable(self, rel: str, size: int | None, timeout: float) -> None:
        t = self.tree / rel
        if t.exists():
            fd = os.open(t, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class Curl(Target):
    """Raw curl against the data gateway (tickets via CS3): the network limit. Only some rows."""

    name = "curl"
    kind = "limit"
    is_mount = False

    def mount(self) -> None:
        self.mounted = True

    def unmount(self) -> None:
        self.mounted = False


def make_targets(
    names: list[str],
    work: Path,
    reva: Reva,
    data: Path,
    meshfs_opts: str,
    profile: Path | None = None,
    spy: str | None = None,
) -> list[Target]:
    out: list[Target] = []
    for n in names:
        if n == "meshfs":
            out.append(Meshfs(work, reva, meshfs_opts, profile, spy))
        elif n == "rclone":
            out.append(Rclone(work, reva))
        elif n == "davfs2":
            out.append(Davfs(work, reva))
        elif n == "local":
            out.append(Local(work, reva, data))
        elif n == "curl":
            out.append(Curl(work, reva))
        else:
            raise BenchError(f"unknown target {n!r} (meshfs, rclone, davfs2, local, curl)")
    return out


def settle(seconds: float = 0.0) -> None:
    if seconds:
        time.sleep(seconds)
