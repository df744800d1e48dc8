"""The `meshfs` command: mount, umount, status, sync, doctor, and the share/users/lock forwarders.

Owns: argument parsing and help texts, the mount(8)-helper form (`meshfs SOURCE MOUNTPOINT -o opts`),
stripping of mount(8)-only options, starting the daemon (in the foreground with -f, else as a detached
re-executed child that reports readiness through a pipe), and every client of the control socket.
Must not import: grpc, cs3apis, urllib3 or meshfs.vfs (the daemon owns the filesystem); meshfs.cs3 is
imported only by `doctor`, lazily, to check credentials.

Exit status: 0 success; 1 the operation failed (one line on stderr says why); 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from meshfs import __version__, control

if TYPE_CHECKING:
    pass

PROG: Final = "meshfs"
COMMANDS: Final = ("mount", "umount", "status", "sync", "doctor", "share", "users", "lock")
READY_TIMEOUT: Final = 120.0
"""How long `meshfs mount` waits for the daemon to report the mount live or failed."""

#: Options mount(8), fstab and mount.fuse3 add that mean nothing to meshfs (dropped silently).
MOUNT8_ONLY_OPTIONS: Final = frozenset({
    "_netdev", "auto", "noauto", "defaults", "user", "users", "nouser", "owner", "group", "nofail",
    "rw", "dev", "suid", "exec", "async", "atime", "diratime", "relatime", "norelatime",
    "strictatime", "lazytime", "nolazytime", "iversion", "noiversion", "loud", "silent", "sloppy",
})  # fmt: skip
MOUNT8_ONLY_PREFIXES: Final = ("x-", "X-", "comment=", "helper=")
#: Kernel mount flags: nosuid/nodev are always on for meshfs mounts; the others are not supported.
KERNEL_FLAG_OPTIONS: Final = frozenset({"nosuid", "nodev", "noexec", "noatime", "nodiratime", "sync",
                                        "dirsync", "mand", "nomand"})  # fmt: skip
#: Options that would put a secret in argv (visible to every user in ps / /proc/PID/cmdline).
SECRET_OPTIONS: Final = ("password=", "token=", "secret=", "client_secret=")


class UsageError(Exception):
    """Bad command line or config: exit status 2, one line."""


class Failure(Exception):
    """The operation failed: exit status 1, one line."""


def _die(message: str, status: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(status)


# ======================================================================================= argparse


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, shutil.get_terminal_size().columns))


def _dedent(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


MAIN_DESCRIPTION = _dedent("""
    meshfs mounts a user's CS3 storage (Reva: CERNBox, ScienceMesh sites) as a POSIX directory tree,
    with a write-back disk cache and flock/fcntl locks forwarded as CS3 locks.

      MOUNTPOINT/home/            your personal space
      MOUNTPOINT/shared-with-me/  shares you received (.pending/ holds the ones to accept)
      MOUNTPOINT/shared-by-me/    what you share
      MOUNTPOINT/projects/        project spaces you belong to
""")

MAIN_EPILOG = _dedent("""
    The form `meshfs SOURCE MOUNTPOINT [-o OPTIONS]` is `meshfs mount`; it is what
    `mount -t fuse.meshfs SOURCE MOUNTPOINT -o OPTIONS` and /etc/fstab run:

      # /etc/fstab
      cs3://einstein@reva.example.org:443  /eos/mesh  fuse.meshfs  \\
          _netdev,noauto,x-systemd.automount,password_file=/etc/meshfs/einstein.pw  0 0

    Run `meshfs COMMAND --help` for each command. Exit status: 0 success, 1 failure (one line on
    stderr says why), 2 bad usage or configuration.
""")

MOUNT_DESCRIPTION = _dedent("""
    Mount SOURCE (cs3://USER@HOST:PORT, the CS3 gateway's gRPC address) on MOUNTPOINT.
    Plain gRPC servers (the dev Reva on 127.0.0.1) need -o tls=false: TLS is on by default.

    Without -f, meshfs starts a background daemon and returns only once the mount is live
    (exit 0) or has failed (exit 1 with one line saying why); the daemon logs to
    CACHE_DIR/daemon.log. With -f it stays in the foreground and logs to stderr (that is how the
    systemd units run it). One daemon per cache dir: a second mount with the same cache dir is
    refused. Two mounts of the same user with two cache dirs behave like two separate machines.

    Credentials come from a file, never from the command line: --password-file (basic
    authentication) or --token-file (an OIDC/bearer token, re-read when it changes). The file
    must be a regular file owned by you with mode 0600, else the mount is refused.
""")

MOUNT_EPILOG_HEAD = _dedent("""
    SOURCE and MOUNTPOINT may instead come from the config file (keys `source`, `mountpoint`).
    Every option below can be set in the TOML config file (KEY = VALUE), as a mount option
    (-o KEY=VALUE, a boolean as -o KEY or -o noKEY) or, for some, a flag; the flag wins over -o,
    -o over the file. mount(8)/fstab options (_netdev, noauto, defaults, rw, user, nofail,
    x-systemd.*, nosuid, nodev, noexec, noatime, ...) are accepted and ignored (FUSE mounts are
    always nosuid,nodev). Secrets are only ever read from files: -o password=... is refused.
""")

MOUNT_EPILOG_TAIL = _dedent("""
    examples:
      meshfs mount cs3://einstein@localhost:19000 ~/cernbox -o tls=false --password-file ~/.config/meshfs/pw
      meshfs mount cs3://einstein@reva.example.org:443 /eos/mesh -o token_file=$XDG_RUNTIME_DIR/bt_u1000
      meshfs mount --config ~/.config/meshfs/cernbox.toml
      mount -t fuse.meshfs cs3://einstein@reva.example.org:443 /eos/mesh -o password_file=/etc/meshfs/pw

    See also: meshfs umount, meshfs status, meshfs doctor; systemd/meshfs@.service (one mount per
    /etc/meshfs/NAME.toml), systemd/user/meshfs@.service, dev/mount.meshfs (the mount(8) helper).
""")


def _mount_epilog() -> str:
    """The option reference, rendered by meshfs.config from its option table (one source of truth)."""
    from meshfs import config as cfgmod

    width = min(100, shutil.get_terminal_size().columns) - 6
    text = cfgmod.options_text(width)
    return "\n".join([MOUNT_EPILOG_HEAD, "", "options:", text, MOUNT_EPILOG_TAIL])


UMOUNT_DESCRIPTION = _dedent("""
    Unmount MOUNTPOINT cleanly: the daemon finishes pending uploads (bounded by the config's drain
    timeout; what is left stays in the cache and resumes at the next mount), releases its CS3 locks,
    unmounts and exits. meshfs umount returns after the daemon has exited.

    --lazy detaches the mountpoint at once (processes inside keep their open files until they
    close them) and then stops the daemon as above. --force is for a dead server or a hung
    daemon: the daemon is told to stop without draining (pending uploads stay in the cache), the
    FUSE connection is aborted (processes inside get ENOTCONN), the mount detached and a daemon
    that does not exit within a few seconds is killed.
""")

STATUS_DESCRIPTION = _dedent("""
    Show the running meshfs mounts of this user (or the one at MOUNTPOINT): source, daemon pid,
    cache dir, and what the filesystem reports: server, user, cache use, pending uploads, locks
    held, recent errors.
""")

STATUS_EPILOG = _dedent("""
    --json prints one object:
      {"mounts": [{"mountpoint": str, "source": str, "pid": int | null, "cache_dir": str | null,
                   "started": float (unix time) | null,
                   "state": "running" | "stopping" | "unreachable" | "dead",
                   "fs": {...} (the filesystem's own report) | null, "error": str | null}]}
    "unreachable": the daemon runs but did not answer; "dead": a meshfs mount of yours that no
    daemon serves any more (killed): clear it with meshfs umount --lazy MOUNTPOINT.
    Exit status 1 if MOUNTPOINT is not a meshfs mount, or if any mount is unreachable or dead.
""")

SYNC_DESCRIPTION = _dedent("""
    Wait until every pending upload under PATH (a file or directory inside a meshfs mount; default:
    the current directory) is stored on the server. Prints each failed upload on stderr and exits 1
    if there was any; a conflict (the server's copy changed meanwhile) keeps both versions.
""")

DOCTOR_DESCRIPTION = _dedent("""
    Check what meshfs needs and say, one line per check, what is wrong and how to fix it: the fuse
    kernel module and /dev/fuse, fusermount3 and mount.fuse3, the runtime directory, and, when a
    SOURCE or a config file is given, the server (reachable?), the credentials (accepted?) and the
    cache dir (usable? in use by a daemon?). Exit status 1 if a check failed.
""")

FORWARD_DESCRIPTION = _dedent("""
    Forwarded to the running daemon of the mount that contains the current directory (or --mount).
    ARGS are passed as they are; the filesystem interprets them.
""")


SHARE_DESCRIPTION = _dedent("""
    Share files and folders of a meshfs mount, and accept or decline what others share with you.
    The running daemon of the mount does the work (the mount containing PATH, else --mount, else
    the mount containing the current directory, else the only one).

      meshfs share add PATH WHO --role viewer|editor   share PATH (inside the mount) with WHO
      meshfs share ls [PATH]                           shares of PATH, or all shares by and with you
      meshfs share rm PATH WHO                         stop sharing PATH with WHO
      meshfs share pending                             shares waiting in shared-with-me/.pending/
      meshfs share accept NAME                         accept .pending/NAME (same as mv it out)
      meshfs share decline NAME                        decline a pending or accepted share

    WHO is a username, an email or a unique part of a name (see `meshfs users`); an unknown or
    ambiguous WHO lists the candidates and changes nothing. NAME is an entry of
    shared-with-me/.pending/ (or shared-with-me/), a path to one, or a share id.
""")

USERS_DESCRIPTION = _dedent("""
    Find users to share with: QUERY is part of a first or last name, or a username or email.
""")


def _share_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    default: Any = None if top else argparse.SUPPRESS
    p.add_argument(
        "--mount", metavar="MOUNTPOINT", default=default, help="the mount to ask (default: see above)"
    )
    p.add_argument(
        "--json", action="store_true", default=False if top else argparse.SUPPRESS, help="print JSON"
    )


def _add_share_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "share",
        help="share files, accept shares",
        description=SHARE_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    _share_common(p, top=True)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="share PATH with WHO", formatter_class=_HelpFormatter)
    a.add_argument("path", metavar="PATH")
    a.add_argument("who", metavar="WHO", help="username, email or a unique part of a name")
    a.add_argument("--role", required=True, metavar="viewer|editor", help="what WHO may do")
    _share_common(a, top=False)
    a = actions.add_parser("ls", help="list shares", formatter_class=_HelpFormatter)
    a.add_argument("path", metavar="PATH", nargs="?")
    _share_common(a, top=False)
    a = actions.add_parser("rm", help="stop sharing PATH with WHO", formatter_class=_HelpFormatter)
    a.add_argument("path", metavar="PATH")
    a.add_argument("who", metavar="WHO")
    _share_common(a, top=False)
    for name, text in (("accept", "accept a pending share"), ("decline", "decline a share")):
        a = actions.add_parser(name, help=text, formatter_class=_HelpFormatter)
        a.add_argument("name", metavar="NAME")
        _share_common(a, top=False)
    a = actions.add_parser("pending", help="list pending shares", formatter_class=_HelpFormatter)
    _share_common(a, top=False)

    p = sub.add_parser(
        "users",
        help="find users to share with",
        description=USERS_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("query", metavar="QUERY")
    _share_common(p, top=True)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be rendered only when help is shown (`epilog_from`):
    the mount option reference needs meshfs.config, which `meshfs sync` and friends never load."""

    def __init__(self, *args: Any, epilog_from: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epilog_from = epilog_from

    def format_help(self) -> str:
        if self._epilog_from is not None:
            self.epilog, self._epilog_from = self._epilog_from(), None
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"meshfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "mount",
        help="mount a CS3 storage",
        description=MOUNT_DESCRIPTION,
        epilog_from=_mount_epilog,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "source", metavar="SOURCE", nargs="?", help="cs3://USER@HOST:PORT (the gateway's gRPC address)"
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an existing empty directory")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options (see below); may be repeated",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML config file (every option documented in the README)"
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="F", help="file with the password (mode 0600)")
    secret.add_argument("--token-file", metavar="F", help="file with an OIDC/bearer access token (mode 0600)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default ~/.cache/meshfs/USER@HOST)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # what mount(8) helpers are given; accepted and ignored
    p.add_argument("-t", dest="fstype", help=argparse.SUPPRESS)
    p.add_argument("-n", dest="no_mtab", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-s", dest="sloppy", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount after finishing pending uploads",
        description=UMOUNT_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-l", "--lazy", action="store_true", help="detach now, then stop the daemon")
    how.add_argument("--force", action="store_true", help="for a dead server or daemon: abort, detach, kill")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting for the daemon to exit after SECONDS (default: wait)",
    )

    p = sub.add_parser(
        "status",
        help="show mounts, uploads, locks, errors",
        description=STATUS_DESCRIPTION,
        epilog=STATUS_EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema below)")

    p = sub.add_parser(
        "sync",
        help="wait until pending uploads are stored",
        description=SYNC_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("path", metavar="PATH", nargs="?", default=".")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (default: wait)")

    p = sub.add_parser(
        "doctor",
        help="check the setup and say what is wrong",
        description=DOCTOR_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", nargs="?", help="cs3://USER@HOST:PORT to check")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]")
    p.add_argument("--config", metavar="FILE")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="F")
    secret.add_argument("--token-file", metavar="F")
    p.add_argument("--cache-dir", metavar="DIR")

    _add_share_parsers(sub)
    for name, text in (("lock", "show or manage CS3 locks (forwarded to the daemon)"),):
        p = sub.add_parser(name, help=text, description=FORWARD_DESCRIPTION, formatter_class=_HelpFormatter)
        p.add_argument(
            "--mount", metavar="MOUNTPOINT", help="the mount to ask (default: the one containing .)"
        )
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
        p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def normalize_argv(argv: Sequence[str], prog_name: str = PROG) -> list[str]:
    """Turn the mount-helper forms into `mount ...`.

    `meshfs SOURCE MOUNTPOINT ...` (what mount.fuse3 runs) and a program named mount.meshfs /
    mount.fuse.meshfs (a symlink installed for mount(8)) both mean `meshfs mount SOURCE MOUNTPOINT`.
    """
    args = list(argv)
    base = os.path.basename(prog_name)
    if base.startswith("mount."):
        # mount(8) passes -f for a fake mount (do nothing) and -v for verbose
        if "-f" in args:
            raise SystemExit(0)
        return ["mount", *args]
    if args and not args[0].startswith("-") and args[0] not in (*COMMANDS, "unmount"):
        return ["mount", *args]
    return args


# ==================================================================================== the Config


@dataclass(frozen=True, slots=True)
class LoadedMount:
    """The validated Config and where a background daemon logs."""

    config: Any
    source: str
    cache_dir: Path
    log_level: str
    log_file: Path


def load_mount(ns: argparse.Namespace, *, for_doctor: bool = False) -> LoadedMount:
    """Config from the config file < -o options < flags; UsageError (one line) when bad.

    meshfs.config validates everything (unknown keys, values, the mode and owner of credential
    files) and drops the mount(8)-only options (_netdev, noauto, x-systemd.*, ...).
    """
    from meshfs import config as cfgmod

    flags: dict[str, Any] = {
        "source": ns.source,
        "password_file": ns.password_file,
        "token_file": ns.token_file,
        "cache_dir": ns.cache_dir,
    }
    if not for_doctor:
        flags["mountpoint"] = ns.mountpoint
    if getattr(ns, "verbose", False):
        flags["log_level"] = "debug"
    try:
        config = cfgmod.load_config(
            config_file=ns.config,
            options=list(ns.options),
            flags=flags,
            require=("source",) if for_doctor else ("source", "mountpoint"),
            check_files=not for_doctor,
        )
        cache_dir = config.require_cache_dir()
        source = str(config.require_server())
    except cfgmod.ConfigError as e:
        raise UsageError(str(e)) from None
    return LoadedMount(config, source, cache_dir, config.log_level, cache_dir / "daemon.log")


# ========================================================================================== mount


def cmd_mount(ns: argparse.Namespace, argv: Sequence[str]) -> int:
    loaded = load_mount(ns)
    if ns.foreground or loaded.config.foreground:
        return run_foreground(loaded)
    return start_background(loaded, argv)


def run_foreground(loaded: LoadedMount) -> int:
    from meshfs import daemon
    from meshfs.logsetup import setup_logging

    setup_logging(loaded.log_level)
    plan = daemon.plan_from_config(loaded.config)
    d = daemon.Daemon(loaded.config, plan, readiness=daemon.Readiness.from_environ())
    return d.run()


def _cache_dir_in_use(cache_dir: Path) -> bool:
    """Whether a daemon holds the cache dir's lock (see daemon.CacheDirLock); a peek, not a lock."""
    try:
        fd = os.open(cache_dir / "daemon.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _open_log(path: Path) -> int:
    """Open the background daemon's log (the previous one kept as .1); fd, or /dev/null's.

    The log of a daemon still running on this cache dir is never rotated away: this mount will be
    refused, and its one line goes to the same log."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > 0 and not _cache_dir_in_use(path.parent):
                os.replace(path, path.with_name(path.name + ".1"))
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def start_background(loaded: LoadedMount, argv: Sequence[str]) -> int:
    """Re-execute `meshfs mount ... -f` as a detached child; return once it is live or failed."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    log_fd = _open_log(loaded.log_file)
    env = dict(os.environ, **{control.READY_FD_ENV: str(write_end)})
    cmd = [sys.executable, "-m", "meshfs", *argv, "--foreground"]
    try:
        child = subprocess.Popen(
            cmd,
            env=env,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        os.close(read_end)
        os.close(write_end)
        os.close(log_fd)
        raise Failure(f"cannot start the daemon: {e.strerror}") from None
    os.close(write_end)
    os.close(log_fd)
    try:
        line = _read_ready_line(read_end, READY_TIMEOUT)
    except KeyboardInterrupt:
        # the user gave up waiting: do not leave a half-started daemon behind
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        _reap(child, 30.0)
        raise
    finally:
        os.close(read_end)
    if line.startswith("READY"):
        return 0
    if line.startswith("ERROR "):
        _reap(child, 10.0)
        raise Failure(line[len("ERROR ") :])
    if line == "":
        # the pipe closed without a word: the daemon died (crash, killed); say where to look
        status = _reap(child, 10.0)
        how = f"status {status}" if status is not None and status >= 0 else f"signal {-(status or 0)}"
        raise Failure(f"the daemon exited ({how}) before the mount was live; see {loaded.log_file}")
    # timeout: stop the child so that nothing half-started stays behind
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    if _reap(child, 30.0) is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        _reap(child, 10.0)
    raise Failure(f"the mount was not live within {READY_TIMEOUT:g} s; gave up (see {loaded.log_file})")


def _read_ready_line(fd: int, timeout: float) -> str:
    """The first line the daemon writes to the readiness pipe; "" on EOF, "TIMEOUT" on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "TIMEOUT"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _reap(child: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# ========================================================================================= umount


def _resolve_mountpoint(path: str, entries: list[control.MountEntry], mounts: dict[str, Any]) -> str:
    """The mountpoint as registered/mounted: the lexical absolute path when that is known (never
    stat a mountpoint whose daemon may hang), else the real path."""
    lexical = os.path.abspath(path)
    if lexical in mounts or any(e.mountpoint == lexical for e in entries):
        return lexical
    return os.path.realpath(lexical)


def cmd_umount(ns: argparse.Namespace) -> int:
    entries = control.list_entries()
    mounts = control.mounted_filesystems()
    point = _resolve_mountpoint(ns.mountpoint, entries, mounts)
    entry = next((e for e in entries if e.mountpoint == point), None)
    is_mounted = point in mounts
    if entry is None:
        if not is_mounted:
            raise Failure(f"{point} is not mounted")
        fstype = mounts[point].fstype
        if not (ns.lazy or ns.force):
            raise Failure(
                f"no meshfs daemon serves {point} ({fstype}; the daemon died?); "
                f"use: meshfs umount --lazy {point}  (or --force)"
            )
        # the daemon is gone, so is the kernel connection's other end: detaching is enough
        return _detach_or_fail(point)

    if ns.force:
        return _umount_force(entry, is_mounted)
    if ns.lazy and is_mounted:
        failure = control.detach_mount(entry.mountpoint, lazy=True)
        if failure:
            raise Failure(f"cannot detach {entry.mountpoint}: {failure}")
    deadline = None if ns.timeout is None else time.monotonic() + ns.timeout
    try:
        with control.ControlClient(entry.socket, timeout=10.0) as client:
            # one request, answered once the drain is over: the daemon owes this reply before it
            # exits (a separate "drained" request could arrive after it had already gone)
            client.send("umount", wait_drained=True)
            drained = _wait_drained(client, entry, deadline, op="umount")
    except control.DaemonGone:
        drained = None  # exited already (or died): the pid wait below tells
    except control.ControlTimeout:
        raise Failure(
            f"the daemon of {entry.mountpoint} (pid {entry.pid}) is still draining after {ns.timeout:g} s; "
            f"wait, or: meshfs umount --force {entry.mountpoint}"
        ) from None
    except control.ControlError as e:
        raise Failure(f"{entry.mountpoint}: {e}; try: meshfs umount --force {entry.mountpoint}") from None
    if drained is False:
        print(
            f"{PROG}: warning: {entry.mountpoint}: pending uploads did not all finish; they stay in "
            f"{entry.cache_dir} and resume at the next mount with that cache dir",
            file=sys.stderr,
        )
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    # after the drain the daemon only unmounts; allow it that much even past --timeout
    if not control.wait_pid_exit(entry.pid, entry.pid_start, None if left is None else left + 30):
        raise Failure(
            f"the daemon of {entry.mountpoint} (pid {entry.pid}) did not exit after draining; "
            f"use: meshfs umount --force {entry.mountpoint}"
        )
    if entry.mountpoint in control.mounted_filesystems():
        raise Failure(
            f"the daemon of {entry.mountpoint} exited but the mount is still there; "
            f"use: meshfs umount --lazy {entry.mountpoint}"
        )
    return 0


def _wait_drained(
    client: control.ControlClient, entry: control.MountEntry, deadline: float | None, op: str = "drained"
) -> bool | None:
    """Wait for the reply to `op` (sent already) saying whether the drain finished; on a terminal,
    say so when it takes a while."""
    first = 2.0 if deadline is None else max(0.001, min(2.0, deadline - time.monotonic()))
    try:
        answer = client.receive(op, timeout=first)
    except control.ControlTimeout:
        if deadline is not None and time.monotonic() >= deadline:
            raise
        if sys.stderr.isatty():
            print(
                f"{PROG}: {entry.mountpoint}: waiting for pending uploads to finish "
                "(Ctrl-C stops waiting, not the daemon)",
                file=sys.stderr,
            )
        rest = None if deadline is None else max(0.001, deadline - time.monotonic())
        answer = client.receive(op, timeout=rest)
    return bool(answer.get("drained")) if isinstance(answer, dict) else None


def _umount_force(entry: control.MountEntry, is_mounted: bool) -> int:
    """Stop without draining (pending uploads stay in the cache); abort and kill what does not stop."""
    with contextlib.suppress(control.ControlError), control.ControlClient(entry.socket, 2.0) as client:
        client.request("umount", drain=False)
    if not control.wait_pid_exit(entry.pid, entry.pid_start, 3.0):
        # hung (or stopped): cut the kernel connection so that nothing waits on it, then kill
        abort_problem = control.abort_connection(entry.mountpoint) if is_mounted else None
        if control.process_start_time(entry.pid) == entry.pid_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry.pid, signal.SIGKILL)
        if not control.wait_pid_exit(entry.pid, entry.pid_start, 10.0):
            raise Failure(
                f"the daemon of {entry.mountpoint} (pid {entry.pid}) does not die even of SIGKILL "
                f"(stuck in the kernel?){'; ' + abort_problem if abort_problem else ''}"
            )
        control.unregister(entry)
    if entry.mountpoint in control.mounted_filesystems():
        return _detach_or_fail(entry.mountpoint)
    return 0


def _detach_or_fail(mountpoint: str) -> int:
    failure = control.detach_mount(mountpoint, lazy=True)
    if failure:
        raise Failure(f"cannot detach {mountpoint}: {failure}")
    return 0


# ========================================================================================= status


def _query_status(entry: control.MountEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "mountpoint": entry.mountpoint, "source": entry.source, "pid": entry.pid,
        "cache_dir": entry.cache_dir, "started": entry.started, "state": "unreachable",
        "fs": None, "error": None,
    }  # fmt: skip
    try:
        with control.ControlClient(entry.socket, timeout=10.0) as client:
            answer = client.request("status")
    except control.ControlError as e:
        row["error"] = str(e)
        return row
    if isinstance(answer, dict):
        row["state"] = answer.get("state", "running")
        row["fs"] = answer.get("fs")
    return row


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items()) if value else "none"
    return str(value)


def _ago(started: float) -> str:
    seconds = max(0, int(time.time() - started))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _connection_dead(mountpoint: str) -> bool:
    """True when the FUSE mount answers ENOTCONN (its daemon is gone). Probed in a thread with a
    bound: a mount whose daemon is alive but hung must not hang `meshfs status`."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
            result.append(False)
        except OSError as e:
            result.append(e.errno in (errno.ENOTCONN, errno.ECONNABORTED))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(1.0)
    return bool(result and result[0])


def cmd_status(ns: argparse.Namespace) -> int:
    entries = control.list_entries()
    served = {e.mountpoint for e in entries}
    dead = [
        {"mountpoint": point, "source": info.source, "pid": None, "cache_dir": None, "started": None,
         "state": "dead", "fs": None,
         "error": f"no meshfs daemon serves this mount any more; run: meshfs umount --lazy {point}"}
        for point, info in control.mounted_filesystems().items()
        if info.fstype == "fuse.meshfs" and info.owner == os.getuid() and point not in served
        and _connection_dead(point)
    ]  # fmt: skip
    if ns.mountpoint is not None:
        entry = control.find_entry(ns.mountpoint)
        if entry is None:
            lexical = os.path.abspath(ns.mountpoint)
            dead = [d for d in dead if d["mountpoint"] in (lexical, os.path.realpath(lexical))]
            if not dead:
                raise Failure(f"{ns.mountpoint} is not a meshfs mount of yours")
        entries = [entry] if entry is not None else []
        if entry is not None:
            dead = []
    rows = [_query_status(e) for e in entries] + dead
    if ns.json:
        print(json.dumps({"mounts": rows}, indent=2, default=str))
    elif not rows:
        print("no meshfs mounts")
    else:
        for row in rows:
            if row["state"] == "dead":
                print(f"{row['mountpoint']}  {row['source']}  dead")
                print(f"  error: {row['error']}")
                continue
            print(
                f"{row['mountpoint']}  {row['source']}  pid {row['pid']}  {row['state']}  "
                f"up {_ago(row['started'])}"
            )
            print(f"  cache dir: {row['cache_dir']}")
            if row["error"]:
                print(f"  error: {row['error']}")
            for key, value in (row["fs"] or {}).items():
                print(f"  {key}: {_fmt_value(value)}")
    return 1 if any(r["error"] for r in rows) else 0


# =========================================================================================== sync


def cmd_sync(ns: argparse.Namespace) -> int:
    entry = control.find_entry(ns.path)
    if entry is None:
        raise Failure(f"{os.path.abspath(ns.path)} is not inside a meshfs mount of yours")
    rel = control.relative_to_mount(ns.path, entry)
    try:
        with control.ControlClient(entry.socket, timeout=10.0) as client:
            answer = client.request("sync", path=None if rel == "/" else rel, timeout=ns.timeout)
    except control.ControlTimeout:
        raise Failure(f"sync {rel}: uploads still pending after {ns.timeout:g} s") from None
    except control.ControlError as e:
        raise Failure(f"sync {rel}: {e}") from None
    failures = list((answer or {}).get("failures", []))
    for failure in failures:
        print(f"{PROG}: sync: {failure}", file=sys.stderr)
    return 1 if failures else 0


# ====================================================================================== forwarders


def cmd_forward(ns: argparse.Namespace) -> int:
    if ns.mount:
        entry = control.find_entry(ns.mount)
        if entry is None:
            raise Failure(f"{ns.mount} is not a meshfs mount of yours")
    else:
        entry = control.find_entry(".")
        if entry is None:
            entries = control.list_entries()
            if len(entries) != 1:
                raise Failure(
                    "no meshfs mount contains the current directory; say which with --mount MOUNTPOINT"
                    if entries
                    else "no meshfs mount is running"
                )
            entry = entries[0]
    args: dict[str, Any] = {"argv": list(ns.args)}
    with contextlib.suppress(control.ControlError):
        args["cwd"] = control.relative_to_mount(".", entry)
    try:
        with control.ControlClient(entry.socket, timeout=None) as client:
            answer = client.request("command", name=ns.command, args=args)
    except control.ControlError as e:
        raise Failure(f"{ns.command}: {e}") from None
    if ns.json or not isinstance(answer, dict):
        print(json.dumps(answer, indent=2, default=str))
    else:
        for key, value in answer.items():
            print(f"{key}: {_fmt_value(value)}")
    return 0


# ===================================================================================== share/users


def _share_entry(ns: argparse.Namespace, path: str | None) -> control.MountEntry:
    """The daemon to ask: the mount containing PATH, else --mount, else the one containing ., else
    the only one. A PATH outside the chosen mount is an error."""
    chosen = None
    if ns.mount:
        chosen = control.find_entry(ns.mount)
        if chosen is None:
            raise Failure(f"{ns.mount} is not a meshfs mount of yours")
    if path is not None:
        entry = control.find_entry(path)
        if entry is None or (chosen is not None and entry.mountpoint != chosen.mountpoint):
            where = chosen.mountpoint if chosen else "a meshfs mount of yours"
            raise Failure(
                f"{os.path.abspath(path)} is not inside {where}: only paths in the mount can be shared"
            )
        return entry
    if chosen is not None:
        return chosen
    entry = control.find_entry(".")
    if entry is not None:
        return entry
    entries = control.list_entries()
    if len(entries) == 1:
        return entries[0]
    raise Failure(
        "no meshfs mount contains the current directory; say which with --mount MOUNTPOINT"
        if entries
        else "no meshfs mount is running"
    )


def _share_name(ns: argparse.Namespace) -> tuple[control.MountEntry, str]:
    """accept/decline NAME: a path inside a mount becomes mount-relative; else a plain name."""
    name: str = ns.name
    if "/" in name or os.path.lexists(name):
        entry = control.find_entry(name)
        if entry is not None and (not ns.mount or control.find_entry(ns.mount) == entry):
            return entry, control.relative_to_mount(name, entry).lstrip("/")
    return _share_entry(ns, None), name


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[str(r.get(key, "")) or "-" for key, _ in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title) in enumerate(columns)]
    print("  ".join(t.ljust(w) for (_, t), w in zip(columns, widths, strict=True)).rstrip())
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


_SHARE_COLUMNS = (
    ("direction", "DIR"), ("path", "PATH"), ("user", "USER"), ("role", "ROLE"), ("state", "STATE"),
    ("id", "ID"),
)  # fmt: skip


def cmd_share(ns: argparse.Namespace) -> int:
    """`meshfs share ACTION ...` and `meshfs users QUERY`: ask the daemon, print a table or JSON."""
    if ns.command == "users":
        entry, name, args = _share_entry(ns, None), "users", {"query": ns.query}
    else:
        name, args = "share", {"action": ns.action}
        if ns.action in ("add", "rm", "ls") and getattr(ns, "path", None):
            entry = _share_entry(ns, ns.path)
            args["path"] = control.relative_to_mount(ns.path, entry).lstrip("/")
        elif ns.action in ("accept", "decline"):
            entry, args["name"] = _share_name(ns)
        else:
            entry = _share_entry(ns, None)
        if ns.action in ("add", "rm"):
            args["who"] = ns.who
        if ns.action == "add":
            role = ns.role.strip().lower()
            if role not in ("viewer", "editor"):
                raise UsageError(f"share add: unknown role {ns.role!r}: use --role viewer or --role editor")
            args["role"] = role
    what = ns.command if ns.command == "users" else f"share {ns.action}"
    try:
        with control.ControlClient(entry.socket, timeout=None) as client:
            answer = client.request("command", name=name, args=args)
    except control.ControlError as e:
        raise Failure(f"{what}: {e}") from None
    if not isinstance(answer, dict):
        raise Failure(f"{what}: the daemon gave an unexpected answer: {answer!r}")
    if ns.json:
        print(json.dumps(answer, indent=2, default=str))
    elif "users" in answer:
        cols = (("username", "USERNAME"), ("display_name", "NAME"), ("mail", "EMAIL"), ("idp", "IDP"))
        _table(list(answer["users"]), cols, "no users found")
    elif ns.action == "add":
        s = answer["share"]
        print(f"shared {s['path']} with {s['user']} as {s['role']} (share {s['id']})")
    elif ns.action == "rm":
        for s in answer["removed"]:
            print(f"stopped sharing {s['path']} with {s['user']} (share {s['id']})")
    elif ns.action == "accept":
        s = answer["share"]
        print(f"accepted: {s['path'] or s['id']} (from {s['user']}, {s['role']})")
    elif ns.action == "decline":
        s = answer["share"]
        print(f"declined share {s['id']} from {s['user']}")
    else:
        _table(
            list(answer["shares"]), _SHARE_COLUMNS, "no shares" if ns.action == "ls" else "no pending shares"
        )
    return 0


# ========================================================================================= doctor


@dataclass(slots=True)
class _Checks:
    failed: int = 0

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def warn(self, what: str) -> None:
        print(f"warn  {what}")

    def fail(self, what: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}")


def cmd_doctor(ns: argparse.Namespace) -> int:
    c = _Checks()
    _doctor_local(c)
    if ns.source is None and ns.config is None:
        c.warn("no SOURCE or --config given: server, credentials and cache dir not checked")
        return 1 if c.failed else 0
    try:
        loaded = load_mount(ns, for_doctor=True)
    except UsageError as e:
        c.fail(f"configuration: {e}")
        return 1
    c.ok(f"configuration: {loaded.source}")
    _doctor_cache(c, loaded.cache_dir)
    _doctor_mount_options(c, loaded.config)
    from meshfs.config import ConfigError, check_secret_file

    secrets_ok = True
    for key in ("password_file", "token_file"):
        path = getattr(loaded.config, key)
        if path is None:
            continue
        try:
            check_secret_file(key, path)
            c.ok(f"{key} {path}: a regular file, yours, not readable by others")
        except ConfigError as e:
            secrets_ok = False
            c.fail(str(e))
    reachable = _doctor_server(c, loaded.config)
    if reachable and secrets_ok:
        _doctor_credentials(c, loaded.config)
    return 1 if c.failed else 0


def _doctor_mount_options(c: _Checks, config: Any) -> None:
    if config.allow_other and os.getuid() != 0:
        try:
            fuse_conf = Path("/etc/fuse.conf").read_text()
        except OSError:
            fuse_conf = ""
        if not any(line.strip() == "user_allow_other" for line in fuse_conf.splitlines()):
            c.fail("allow_other is set but /etc/fuse.conf has no user_allow_other line: add it (as root)")
    mountpoint = config.mountpoint
    if mountpoint is None:
        return
    point = os.fspath(mountpoint)
    entry = next((e for e in control.list_entries() if e.mountpoint == point), None)
    mounted = control.mounted_filesystems().get(point)
    if entry is not None:
        c.ok(f"mountpoint {point}: mounted by meshfs (pid {entry.pid})")
    elif mounted is not None:
        c.fail(f"mountpoint {point}: already a mountpoint ({mounted.fstype}) with no meshfs daemon of yours")
    elif not os.path.isdir(point):
        c.fail(f"mountpoint {point} does not exist or is not a directory (mkdir it)")
    elif os.listdir(point):
        c.fail(f"mountpoint {point} is not empty")
    else:
        c.ok(f"mountpoint {point}: an empty directory")


def _doctor_local(c: _Checks) -> None:
    filesystems = Path("/proc/filesystems").read_text() if Path("/proc/filesystems").exists() else ""
    if "\tfuse\n" in filesystems or Path("/sys/fs/fuse").exists():
        c.ok("the fuse kernel module is loaded")
    else:
        c.fail("the fuse kernel module is not loaded: run (as root) modprobe fuse")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        c.ok("/dev/fuse can be opened")
    except FileNotFoundError:
        c.fail(
            "/dev/fuse is missing: load the fuse module (modprobe fuse); "
            "in a container pass --device /dev/fuse"
        )
    except PermissionError:
        c.fail(
            "/dev/fuse is not accessible to you: check its mode (crw-rw-rw-) or your container's device rules"
        )
    except OSError as e:
        c.fail(f"/dev/fuse: {e.strerror}")
    fusermount = shutil.which("fusermount3")
    if fusermount:
        mode = os.stat(fusermount).st_mode
        if os.getuid() != 0 and not mode & 0o4000:
            c.fail(f"{fusermount} is not setuid root: reinstall the fuse3 package")
        else:
            c.ok(f"fusermount3: {fusermount}")
    elif os.getuid() == 0:
        c.warn("fusermount3 is missing (root mounts work without it; install fuse3 for user mounts)")
    else:
        c.fail("fusermount3 is missing: install the fuse3 package (apt-get install fuse3)")
    helper = next(
        (p for p in ("/sbin/mount.fuse.meshfs", "/usr/sbin/mount.fuse.meshfs") if os.path.exists(p)), None
    )
    on_default_path = next(
        (
            d
            for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
            if os.access(os.path.join(d, "meshfs"), os.X_OK)
        ),
        None,
    )
    if helper:
        c.ok(f"mount -t fuse.meshfs uses {helper}")
    elif on_default_path and (shutil.which("mount.fuse3") or os.path.exists("/sbin/mount.fuse3")):
        c.ok(f"mount -t fuse.meshfs runs mount.fuse3 -> {on_default_path}/meshfs")
    else:
        c.warn(
            "mount -t fuse.meshfs / fstab will not find meshfs: mount(8) runs helpers without PATH; "
            "install dev/mount.meshfs as /sbin/mount.fuse.meshfs or link meshfs into /usr/local/bin"
        )
    try:
        path = control.ensure_runtime_dir()
        c.ok(f"runtime directory {path}")
    except control.ControlError as e:
        c.fail(str(e))
    for entry in control.list_entries():
        c.ok(f"running: {entry.mountpoint} ({entry.source}, pid {entry.pid})")


def _doctor_cache(c: _Checks, cache_dir: Path) -> None:
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not cache_dir.exists():
        if os.access(probe, os.W_OK):
            c.ok(f"cache dir {cache_dir} will be created")
        else:
            c.fail(f"cache dir {cache_dir} cannot be created: {probe} is not writable by you")
        return
    st = cache_dir.stat()
    if st.st_uid != os.getuid():
        c.fail(f"cache dir {cache_dir} belongs to uid {st.st_uid}, not to you")
        return
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        c.fail(f"cache dir {cache_dir} is not writable by you")
        return
    from meshfs import daemon

    free = shutil.disk_usage(cache_dir).free
    lock = daemon.CacheDirLock(cache_dir)
    try:
        lock.acquire("(meshfs doctor)", "")
        lock.release()
        c.ok(f"cache dir {cache_dir}: {free / 2**30:.1f} GiB free, not in use")
    except daemon.StartupError as e:
        c.warn(str(e))
    if st.st_mode & 0o077:
        c.warn(
            f"cache dir {cache_dir} is readable by others (mode {st.st_mode & 0o777:04o}); "
            "the daemon sets 0700"
        )


def _doctor_server(c: _Checks, config: Any) -> bool:
    host, port = config.server.host, int(config.server.port)
    try:
        with socket.create_connection((host, port), timeout=5.0):
            pass
    except socket.gaierror as e:
        c.fail(f"server {host}: name does not resolve ({e.strerror})")
        return False
    except OSError as e:
        c.fail(f"server {host}:{port} is not reachable: {e.strerror or 'timed out'}")
        return False
    c.ok(f"server {host}:{port} accepts connections")
    return True


def _doctor_credentials(c: _Checks, config: Any) -> None:
    """Authenticate once against the gateway (the only use of meshfs.cs3 outside the daemon)."""
    import trio

    from meshfs.cs3.gateway import Gateway
    from meshfs.cs3.types import BasicCredentials, BearerCredentials, Secret

    server = config.require_server()
    token_file = config.token_file or os.environ.get("BEARER_TOKEN_FILE")
    if token_file is None and os.environ.get("XDG_RUNTIME_DIR"):
        candidate = Path(os.environ["XDG_RUNTIME_DIR"]) / f"bt_u{os.getuid()}"
        token_file = candidate if candidate.exists() else None
    try:
        if config.password_file is not None:
            creds: Any = BasicCredentials(server.user, Secret.from_file(os.fspath(config.password_file)))
        elif token_file is not None:
            creds = BearerCredentials(Secret.from_file(os.fspath(token_file)))
        else:
            c.warn("no credentials configured (password_file, token_file, $BEARER_TOKEN_FILE): not checked")
            return
    except OSError as e:
        c.fail(f"cannot read the credentials: {e.strerror}")
        return

    async def login() -> str:
        with trio.fail_after(config.call_timeout + 5):
            async with Gateway(
                server.address,
                creds,
                tls=config.tls,
                ca_file=os.fspath(config.ca_file) if config.ca_file else None,
                retries=0,
                call_timeout=config.call_timeout,
            ) as gw:
                return str(gw.user.username)

    try:
        who = trio.run(login)
    except trio.TooSlowError:
        c.fail(
            f"the gateway {server.address} did not answer within {config.call_timeout + 5:g} s"
            + (" (tls is on: is the server plain gRPC? use -o tls=false)" if config.tls else "")
        )
        return
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "UNAVAILABLE" in first and config.tls:
            first += " (tls is on: if the gateway speaks plain gRPC, use -o tls=false)"
        c.fail(f"the gateway refused the login: {first}")
        return
    c.ok(f"credentials accepted by {server.address}: authenticated as {who}")


# =========================================================================================== main


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core logs TLS handshake details to stderr at INFO; our errors say it in one line
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = normalize_argv(raw, sys.argv[0] if argv is None else PROG)
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.command == "unmount":
        ns.command = "umount"
    try:
        if ns.command == "mount":
            # the child gets the normalized arguments, with no -f duplicate
            child_args = [a for a in args if a not in ("-f", "--foreground")]
            return cmd_mount(ns, child_args)
        if ns.command == "umount":
            return cmd_umount(ns)
        if ns.command == "status":
            return cmd_status(ns)
        if ns.command == "sync":
            return cmd_sync(ns)
        if ns.command == "doctor":
            return cmd_doctor(ns)
        if ns.command in ("share", "users"):
            return cmd_share(ns)
        return cmd_forward(ns)
    except UsageError as e:
        _die(str(e), 2)
    except (Failure, control.ControlError) as e:
        _die(str(e), 1)
    except KeyboardInterrupt:
        _die("interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
