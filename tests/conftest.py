"""Shared pytest fixtures: the dev Reva stack (`reva`), password files, and the FUSE availability check.

Owns how tests reach the real Reva started by dev/reva/revactl and how FUSE-less machines are reported.
Imports nothing from meshfs (fixtures describe the environment, not the product).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REVACTL = REPO / "dev" / "reva" / "revactl"
BUILD_TIMEOUT_S = 30 * 60  # a cold revad build takes minutes on 2 cores
UP_TIMEOUT_S = 180


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A demo account of the dev stack (dev/reva/templates/main/users.json)."""

    username: str
    password: str
    display_name: str
    mail: str


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("einstein", "relativity", "Albert Einstein", "einstein@example.org"),
    DemoUser("marie", "radioactivity", "Marie Curie", "marie@example.org"),
    DemoUser("richard", "superfluidity", "Richard Feynman", "richard@example.org"),
)


@dataclass(frozen=True, slots=True)
class RevaStack:
    """Where the running dev Reva answers (all on 127.0.0.1)."""

    gateway: str  # host:port of the CS3 gateway (gRPC, plaintext)
    datagateway_url: str  # e.g. http://127.0.0.1:19001/data
    webdav_url: str  # einstein's files over ocdav, basic auth
    http_url: str  # base of the HTTP server (ocdav + data gateway)
    var_dir: Path
    log: Path
    users: tuple[DemoUser, ...]
    domain: str = "localhost"  # OCM provider domain of this instance

    def user(self, username: str) -> DemoUser:
        for u in self.users:
            if u.username == username:
                return u
        raise KeyError(f"no demo user {username!r}")

    @property
    def einstein(self) -> DemoUser:
        return self.user("einstein")

    @property
    def marie(self) -> DemoUser:
        return self.user("marie")

    @property
    def richard(self) -> DemoUser:
        return self.user("richard")


def _revactl(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(REVACTL), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`revactl {' '.join(args)}` did not finish within {timeout:.0f} s: {exc.stderr!r}")


def _revactl_ok(*args: str, timeout: float) -> str:
    proc = _revactl(*args, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"`dev/reva/revactl {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    for line in proc.stderr.splitlines():
        if "warning" in line:  # e.g. the running stack predates the templates: show it in the summary
            warnings.warn(line, stacklevel=1)
    return proc.stdout


@dataclass(frozen=True, slots=True)
class RevaOcmPair:
    """Two dev Reva instances federated through OCM (`revactl up --ocm`): cernbox.local and cesnet.local."""

    cernbox: RevaStack
    cesnet: RevaStack


def _parse_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep:
            values = shlex.split(raw)
            out[key] = values[0] if values else ""
    return out


@pytest.fixture(scope="session")
def reva() -> Iterator[RevaStack]:
    """The dev Reva (builds revad once, starts the stack if needed, stops it again only if it started it).

    Honours REVA_INSTANCE / REVA_PORT_OFFSET / REVA_VAR_DIR (see dev/reva/NOTES.md). Never skips: a missing
    Go toolchain or a stack that does not come up fails the tests that need it, with revactl's message.
    """
    _revactl_ok("build", timeout=BUILD_TIMEOUT_S)
    started = _revactl("status", timeout=30).returncode != 0
    _revactl_ok("up", timeout=UP_TIMEOUT_S)
    try:
        yield _stack_from_env(_parse_env(_revactl_ok("env", timeout=30)), "REVA_")
    finally:
        if started:
            _revactl("down", timeout=60)


@pytest.fixture(scope="session")
def reva_ocm() -> Iterator[RevaOcmPair]:
    """The OCM pair of dev Revas (`revactl up --ocm`); stopped at the end only if this session started it."""
    _revactl_ok("build", timeout=BUILD_TIMEOUT_S)
    started = _revactl("status", "--ocm", timeout=30).returncode != 0
    _revactl_ok("up", "--ocm", timeout=2 * UP_TIMEOUT_S)
    try:
        env = _parse_env(_revactl_ok("env", "--ocm", timeout=30))
        yield RevaOcmPair(_stack_from_env(env, "REVA_CERNBOX_"), _stack_from_env(env, "REVA_CESNET_"))
    finally:
        if started:
            _revactl("down", "--ocm", timeout=60)


def _stack_from_env(env: dict[str, str], prefix: str) -> RevaStack:
    return RevaStack(
        gateway=env[f"{prefix}GATEWAY"],
        datagateway_url=env[f"{prefix}DATAGATEWAY_URL"],
        webdav_url=env[f"{prefix}WEBDAV_URL"],
        http_url=env[f"{prefix}HTTP_URL"],
        var_dir=Path(env[f"{prefix}VAR_DIR"]),
        log=Path(env[f"{prefix}LOG"]),
        users=DEMO_USERS,
        domain=env[f"{prefix}DOMAIN"],
    )


def write_password_file(directory: Path, password: str, name: str = "password") -> Path:
    """Write `password` (no newline) to directory/name with mode 0600 and return the path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[DemoUser | str], Path]:
    """Factory: password_file(user_or_password) -> a 0600 file in tmp_path holding that password."""

    def make(who: DemoUser | str) -> Path:
        if isinstance(who, DemoUser):
            return write_password_file(tmp_path, who.password, f"{who.username}.password")
        return write_password_file(tmp_path, who, f"password-{len(list(tmp_path.glob('password-*')))}")

    return make


def fuse_unavailable_reason() -> str | None:
    """Why this machine cannot mount FUSE file systems, or None when it can."""
    dev = Path("/dev/fuse")
    try:
        st = dev.stat()
    except OSError as exc:
        return f"/dev/fuse is missing ({exc.strerror}): load the fuse module or pass --device /dev/fuse"
    if not stat.S_ISCHR(st.st_mode):
        return "/dev/fuse is not a character device"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse cannot be opened read-write ({exc.strerror})"
    os.close(fd)
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and fusermount3 is not installed (apt-get install fuse3)"
    return None


@pytest.fixture(scope="session")
def fuse_available() -> None:
    """Skip (loudly, with the reason) when FUSE is unusable; fail instead when MESHFS_REQUIRE_FUSE=1.

    Same check as marking a test `@pytest.mark.fuse`.
    """
    _require_fuse()


def _require_fuse() -> None:
    reason = fuse_unavailable_reason()
    if reason is not None:
        if os.environ.get("MESHFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"FUSE required (MESHFS_REQUIRE_FUSE=1) but unavailable: {reason}", pytrace=False)
        pytest.skip(f"FUSE unavailable on this machine: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests using the `reva` fixture get the `reva` mark (so `-m "not reva"` deselects them)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("reva" in names or "reva_ocm" in names) and item.get_closest_marker("reva") is None:
            item.add_marker(pytest.mark.reva)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `fuse` are skipped with the reason (or fail under MESHFS_REQUIRE_FUSE=1) without FUSE."""
    if item.get_closest_marker("fuse") is not None:
        _require_fuse()


def pytest_report_header(config: pytest.Config) -> str:
    reason = fuse_unavailable_reason()
    if reason is None:
        return "fuse: available"
    return f"fuse: UNAVAILABLE, `fuse` tests will be skipped: {reason}"
