"""Where a mount's credentials come from, and how they stay fresh while it is mounted.

Owns: the credential source of a mount (`MountCredentials`, a meshfs.cs3 CredentialSource) — a password
file, a bearer/OIDC token file re-read when it changes (inode/size/mtime, before every login and in a
watcher loop), the WLCG bearer token discovery ($BEARER_TOKEN_FILE, then $XDG_RUNTIME_DIR/bt_u<uid>, then
/tmp/bt_u<uid>), and a token command run when the token nears its expiry or is refused; the strict
reading of secret files (a regular file owned by us, mode 0600/0400, checked on the open descriptor
at every read). No secret ever reaches argv, a log line, an exception message or a repr.
Must not import: grpc, cs3apis, urllib3 (the protobuf side of meshfs.cs3), nor vfs/, cache/, fuse/.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshfs.config import Config, ConfigError
from meshfs.cs3 import BasicCredentials, BearerCredentials, Credentials, Secret
from meshfs.cs3.gateway import is_reva_token, jwt_expiry
from meshfs.errors import Unauthenticated

log = logging.getLogger("meshfs.auth")

WATCH_INTERVAL = 5.0  # seconds between two looks at the token/password file while mounted
COMMAND_TIMEOUT = 30.0  # a token command that takes longer is killed
COMMAND_MIN_INTERVAL = 5.0  # never run the token command more often than this
EXPIRY_MARGIN = 60.0  # a token closer than this to its `exp` is "near expiry"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


# ---------------------------------------------------------------------------------- secret files


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What identifies one version of a file without reading it: a rename, rewrite or touch changes it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_version(path: Path) -> FileVersion:
    """The version of `path` (symlinks followed). Raises OSError."""
    st = os.stat(path)
    return FileVersion(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_secret_stat(key: str, path: Path, st: os.stat_result) -> None:
    """A secret file must be a regular file owned by us and readable by nobody else: ConfigError
    (one line naming `key` and what to do) otherwise."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config: {key}: '{path}' is not a regular file")
    if st.st_uid != os.getuid():
        raise ConfigError(f"config: {key}: '{path}' must be owned by uid {os.getuid()}, not {st.st_uid}")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"config: {key}: '{path}' is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run chmod 600 '{path}'"
        )


def read_secret_file(key: str, path: Path) -> tuple[Secret, FileVersion]:
    """The first line of a secret file (whitespace stripped) and the version it was read from.

    The owner/mode check is made on the open descriptor, so the file checked is the file read.
    Raises ConfigError (unsafe, unreadable) with one line naming `key`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"config: {key}: cannot read '{path}': {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        check_secret_stat(key, path, st)
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(64 * 1024)
    except OSError as e:
        raise ConfigError(f"config: {key}: cannot read '{path}': {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config: {key}: '{path}' is not UTF-8 text") from None
    first = text.splitlines()[0].strip() if text.strip() else ""
    version = FileVersion(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return Secret(first), version


# ---------------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class TokenFile:
    """A token file and how it was found ("token_file", "$BEARER_TOKEN_FILE", ...)."""

    path: Path
    found_by: str


def discover_token_file(env: Mapping[str, str] | None = None, uid: int | None = None) -> TokenFile | None:
    """The WLCG bearer token discovery (files only): $BEARER_TOKEN_FILE when set, else
    $XDG_RUNTIME_DIR/bt_u<uid> if it exists, else /tmp/bt_u<uid> if it exists; None when none applies.

    A set $BEARER_TOKEN_FILE is taken even if the file is missing (the login then says so)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    named = env.get("BEARER_TOKEN_FILE")
    if named:
        return TokenFile(Path(named), "$BEARER_TOKEN_FILE")
    candidates = []
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(TokenFile(Path(runtime) / f"bt_u{uid}", "$XDG_RUNTIME_DIR/bt_u<uid>"))
    candidates.append(TokenFile(Path("/tmp") / f"bt_u{uid}", "/tmp/bt_u<uid>"))
    for candidate in candidates:
        if os.path.lexists(candidate.path):
            return candidate
    return None


# ---------------------------------------------------------------------------------- token command


def redact(text: str, *secrets: Secret | None) -> str:
    """`text` on one line with the given secrets and anything looking like a JWT replaced by ***."""
    for s in secrets:
        if s:
            text = text.replace(s.reveal(), "***")
    text = _JWT.sub("***", text)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:299] + "…"


def run_token_command(command: str, *, timeout: float = COMMAND_TIMEOUT) -> Secret:
    """Run `command` (shlex-split, no shell, stdin closed) and return the token it prints (the first
    non-empty line of stdout). Its stderr is logged, token-free. Blocking: call it in a worker thread.
    Raises Unauthenticated with one line (no secret in it) when it fails."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise Unauthenticated(f"cannot parse it: {e}", op="token_command") from None
    if not argv:
        raise Unauthenticated("empty", op="token_command")
    name = os.path.basename(argv[0])
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            close_fds=True,
        )
    except FileNotFoundError:
        raise Unauthenticated(f"'{argv[0]}' not found", op="token_command") from None
    except PermissionError:
        raise Unauthenticated(f"'{argv[0]}' is not executable", op="token_command") from None
    except subprocess.TimeoutExpired:
        raise Unauthenticated(
            f"'{name}' did not finish within {timeout:g} s (killed)", op="token_command"
        ) from None
    out = done.stdout.decode("utf-8", "replace")
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    token = Secret(lines[0]) if lines else None
    err = redact(done.stderr.decode("utf-8", "replace"), token)
    if done.returncode != 0:
        why = f": {err}" if err else ""
        raise Unauthenticated(f"'{name}' exited with status {done.returncode}{why}", op="token_command")
    if err:
        log.info("token_command %s: %s", name, err)
    if token is None or any(c.isspace() for c in token.reveal()):
        raise Unauthenticated(f"'{name}' printed no token", op="token_command")
    return token


# ---------------------------------------------------------------------------------- the source


class MountCredentials:
    """The credentials of one mount; a meshfs.cs3 CredentialSource handed to the Gateway.

    Exactly one of: `password_file` (with `username`: basic login), or bearer tokens from
    `token_file` and/or `token_command`. The files are re-read (strictly, see read_secret_file)
    whenever their version changes: before every login and every `watch_interval` seconds in
    `watch()`, whose changes bump `generation` so the gateway logs in again. The command runs when
    there is no token yet, or when the gateway reports the one in use as expiring or refused and the
    file has nothing newer (at most once per `command_min_interval`). `exchange`: None decides per
    token (a Reva token is used as is, any other token is exchanged with Authenticate "bearer").
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password_file: Path | None = None,
        token_file: TokenFile | None = None,
        token_command: str | None = None,
        exchange: bool | None = None,
        watch_interval: float = WATCH_INTERVAL,
        command_timeout: float = COMMAND_TIMEOUT,
        command_min_interval: float = COMMAND_MIN_INTERVAL,
        expiry_margin: float = EXPIRY_MARGIN,
    ) -> None:
        if password_file is not None and (token_file is not None or token_command is not None):
            raise ValueError("password_file excludes token_file/token_command")
        if password_file is None and token_file is None and token_command is None:
            raise ValueError("no credential given")
        if password_file is not None and not username:
            raise ValueError("password_file needs a username")
        self.username = username
        self.password_file = password_file
        self.token_file = token_file
        self.token_command = token_command
        self.exchange = exchange
        self.watch_interval = watch_interval
        self.command_timeout = command_timeout
        self.command_min_interval = command_min_interval
        self.expiry_margin = expiry_margin
        self._generation = 0
        self._secret: Secret | None = None  # the newest secret known (password or token)
        self._version: FileVersion | None = None  # of the file the secret was last read from
        self._refused_version: FileVersion | None = None  # a version we refused: logged once
        self._command_at: float | None = None  # trio time of the last command run
        self._lock = trio.Lock()
        # for status/metrics
        self.file_reads = 0
        self.command_runs = 0
        self.command_failures = 0
        self.updated_at: float | None = None  # wall time the secret in use was obtained

    def __repr__(self) -> str:
        return f"MountCredentials({self.describe()})"

    def describe(self) -> str:
        """Where the credentials come from, for logs and status (no secret)."""
        parts = []
        if self.password_file is not None:
            parts.append(f"password_file '{self.password_file}' for {self.username}")
        if self.token_file is not None:
            how = "" if self.token_file.found_by == "token_file" else f" (from {self.token_file.found_by})"
            parts.append(f"token file '{self.token_file.path}'{how}")
        if self.token_command is not None:
            argv = self.token_command.split()
            parts.append(f"token_command '{argv[0] if argv else ''}'")
        return ", ".join(parts)

    @property
    def kind(self) -> str:
        return "basic" if self.password_file is not None else "bearer"

    @property
    def generation(self) -> int:
        return self._generation

    def status(self) -> dict[str, Any]:
        """A JSON-able report (no secret): kind, source, token expiry, counters."""
        exp = jwt_expiry(self._secret.reveal()) if self._secret and self.kind == "bearer" else None
        return {
            "kind": self.kind,
            "source": self.describe(),
            "token_expires": exp,
            "updated": self.updated_at,
            "file_reads": self.file_reads,
            "command_runs": self.command_runs,
            "command_failures": self.command_failures,
        }

    # -- reading -------------------------------------------------------------------------------

    def _file(self) -> tuple[str, Path] | None:
        if self.password_file is not None:
            return "password_file", self.password_file
        if self.token_file is not None:
            found_by = self.token_file.found_by
            key = "token_file" if found_by == "token_file" else f"token_file (from {found_by})"
            return key, self.token_file.path
        return None

    def _reread(self) -> bool:
        """Read the file again if its version changed (blocking: runs in a worker thread).

        True when that gave a new secret. The first read raises ConfigError; later failures (an
        unsafe mode, a file missing for a moment during a rotation, an empty file being written) are
        logged once per file version and the secret in use is kept."""
        found = self._file()
        if found is None:
            return False
        key, path = found
        try:
            version = file_version(path)
        except OSError as e:
            if self._secret is None:
                raise ConfigError(f"config: {key}: cannot read '{path}': {e.strerror or e}") from None
            log.debug("%s '%s' not readable now (%s): keeping the current secret", key, path, e.strerror)
            return False
        if version == self._version or version == self._refused_version:
            return False
        try:
            secret, version = read_secret_file(key, path)
        except ConfigError as e:
            if self._secret is None:
                raise
            self._refused_version = version
            log.error("%s (keeping the credentials read before)", e)
            return False
        self.file_reads += 1
        if not secret:
            if self._secret is None:
                raise ConfigError(f"config: {key}: '{path}' is empty")
            return False  # being written: look again next time
        self._version = version
        if secret == self._secret:
            return False
        self._secret = secret
        self.updated_at = time.time()
        if self.file_reads > 1:
            what = "password" if self.password_file is not None else "token"
            log.info("%s '%s' changed: using the new %s", key, path, what)
        return True

    def _expiring(self, token: Secret) -> bool:
        exp = jwt_expiry(token.reveal())
        return exp is not None and exp - time.time() < self.expiry_margin

    async def _run_command(self) -> bool:
        """Run the token command (rate-limited). True when it gave a new token."""
        assert self.token_command is not None
        now = trio.current_time()
        if (
            self._secret is not None
            and self._command_at is not None
            and now - self._command_at < self.command_min_interval
        ):
            return False
        self._command_at = now
        self.command_runs += 1
        try:
            token = await trio.to_thread.run_sync(
                lambda: run_token_command(self.token_command or "", timeout=self.command_timeout),
                abandon_on_cancel=False,
            )
        except Unauthenticated as e:
            self.command_failures += 1
            if self._secret is None:
                raise
            log.warning("%s (keeping the current token)", e)
            return False
        if token == self._secret:
            return False
        self._secret = token
        self.updated_at = time.time()
        log.info("token_command gave a new token")
        return True

    async def credentials(self, stale: Secret | None = None) -> Credentials:
        """The credentials to log in with now (see meshfs.cs3.CredentialSource)."""
        async with self._lock:
            if self._file() is not None:
                await trio.to_thread.run_sync(self._reread)
            if self.password_file is not None:
                assert self._secret is not None and self.username is not None
                return BasicCredentials(self.username, self._secret)
            if self.token_command is not None and (
                self._secret is None
                or (stale is not None and stale == self._secret)
                or self._expiring(self._secret)
            ):
                await self._run_command()
            token = self._secret
            if token is None:
                raise Unauthenticated("no bearer token available", op="authenticate")
            exchange = self.exchange if self.exchange is not None else not is_reva_token(token.reveal())
            return BearerCredentials(token, exchange=exchange)

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look at the credential file every `watch_interval` seconds; a new secret bumps
        `generation` (the gateway logs in with it before its next call). Runs until cancelled."""
        task_status.started()
        if self._file() is None:
            return
        while True:
            await trio.sleep(self.watch_interval)
            async with self._lock:
                try:
                    changed = await trio.to_thread.run_sync(self._reread)
                except ConfigError as e:  # only before the first successful read
                    log.error("%s", e)
                    changed = False
            if changed:
                self._generation += 1


def credential_source(config: Config, env: Mapping[str, str] | None = None) -> MountCredentials:
    """The credential source `config` asks for: password_file, or token_file and/or token_command,
    or (none of them given) a token file found by the WLCG discovery. ConfigError (one line) when
    there is nothing to log in with, or a discovered token file is unsafe."""
    server = config.require_server()
    if config.password_file is not None:
        return MountCredentials(username=server.user, password_file=config.password_file)
    token_file = TokenFile(config.token_file, "token_file") if config.token_file is not None else None
    if token_file is None and config.token_command is None:
        token_file = discover_token_file(env)
        if token_file is None:
            raise ConfigError(
                "config: password_file, token_file or token_command: one is needed to log in "
                "(no $BEARER_TOKEN_FILE, $XDG_RUNTIME_DIR/bt_u<uid> or /tmp/bt_u<uid> found)"
            )
        try:
            st = os.stat(token_file.path)
        except OSError as e:
            raise ConfigError(
                f"config: token_file: {token_file.found_by} names '{token_file.path}': {e.strerror or e}"
            ) from None
        check_secret_stat(f"token_file (from {token_file.found_by})", token_file.path, st)
        log.info("using the bearer token in '%s' (found by %s)", token_file.path, token_file.found_by)
    return MountCredentials(token_file=token_file, token_command=config.token_command)
