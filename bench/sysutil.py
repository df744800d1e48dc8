"""System plumbing for the benchmarks: running commands with timeouts, installing missing tools,
reading process CPU/IO counters, finding and force-detaching FUSE mounts.

Owns: everything that touches the host (apt, /proc, /sys/fs/fuse) on behalf of bench/.
Must not import: meshfs (the benchmark drives the product only through its CLI and the mount).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# tool binary -> Debian package
TOOLS = {
    "fio": "fio",
    "hyperfine": "hyperfine",
    "rclone": "rclone",
    "mount.davfs": "davfs2",
    "curl": "curl",
    "git": "git",
    "fusermount3": "fuse3",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step of the benchmark failed; the message is one line saying what."""


@dataclass(frozen=True, slots=True)
class Done:
    rc: int
    out: str
    err: str
    seconds: float


def run(
    cmd: list[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdout_null: bool = False,
) -> Done:
    """Run cmd, wall-timed, bounded by timeout (the process group is killed on expiry)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout_null else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.communicate(timeout=10)
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)[:200]}") from None
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        last = (err or out or "").strip().splitlines()
        raise BenchError(f"exit {p.returncode}: {' '.join(cmd)[:160]}: {last[-1] if last else ''}")
    return Done(p.returncode, out or "", err or "", dt)


def ensure_tools(names: list[str]) -> None:
    """Install the Debian packages of missing tools (as root), saying so."""
    missing = sorted({TOOLS[n] for n in names if shutil.which(n) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing tools, install as root: apt-get install {' '.join(missing)}")
    log(f"installing missing packages with apt-get: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "install", "-y", "-q", *missing], timeout=900, check=False, env=env)
    if r.rc != 0:
        run(["apt-get", "update", "-q"], timeout=600, env=env)
        run(["apt-get", "install", "-y", "-q", *missing], timeout=900, env=env)
    still = [n for n in names if shutil.which(n) is None]
    if still:
        raise BenchError(f"tools still missing after apt-get: {' '.join(still)}")


def ensure_py_spy(venv_python: str) -> str | None:
    """Path of py-spy (pip-installed into the venv when missing, saying so), None if unavailable."""
    here = Path(venv_python).parent / "py-spy"
    found = shutil.which("py-spy") or (str(here) if here.exists() else None)
    if found:
        return found
    log("installing py-spy from PyPI into the venv (for --profile)")
    r = run([venv_python, "-m", "pip", "install", "-q", "py-spy"], timeout=600, check=False)
    if r.rc != 0 or not here.exists():
        log("py-spy could not be installed; profiling is off")
        return None
    return str(here)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the ")" the fields start at index 3 (state); utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def io_wchar(pid: int) -> int:
    """Bytes a process wrote with write-like syscalls (sockets included); 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, "major:minor") of the mount at mountpoint, from /proc/self/mountinfo, or None."""
    mp = os.path.realpath(mountpoint)
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        target = parts[4].replace("\\040", " ")
        if target == mp:
            sep = parts.index("-")
            found = (parts[sep + 1], parts[2])
    return found


def is_mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


def wait_until(cond: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll cond() until true; BenchError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def force_detach(mountpoint: str) -> None:
    """Last resort: abort the FUSE connection and lazily unmount. Never blocks on the mount."""
    ent = mount_entry(mountpoint)
    if ent is None:
        return
    fstype, dev = ent
    if fstype.startswith("fuse"):
        minor = dev.split(":")[1]
        abort = Path(f"/sys/fs/fuse/connections/{minor}/abort")
        try:
            abort.write_text("1")
            log(f"aborted FUSE connection {minor} of {mountpoint}")
        except OSError as e:
            log(f"could not abort FUSE connection {minor}: {e}")
    for cmd in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if not is_mounted(mountpoint):
            break
        if shutil.which(cmd[0]):
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
    if is_mounted(mountpoint):
        log(f"WARNING: {mountpoint} is still mounted")


def kill_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, bounded wait, SIGKILL — only this pid."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def drop_page_cache(paths: list[Path]) -> None:
    """Evict files' pages (posix_fadvise DONTNEED after fsync) without touching the rest of the host."""
    for p in paths:
        files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_dentries() -> None:
    """Drop the host's dentry/inode caches (for cold `ls` on local disk); needs root."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("2")
    except OSError as e:
        log(f"could not drop dentry caches: {e}")
