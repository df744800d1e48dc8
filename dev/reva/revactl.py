"""revactl: builds revad and runs meshfs's dev Reva stacks on 127.0.0.1 (build|up|down|reset|status|env).

Owns the dev stack's processes, config files (written from dev/reva/templates/) and var dirs. Standard
library only (it must run from a fresh clone before the venv exists); imports nothing from meshfs.
Settings come from the environment, documented in dev/reva/NOTES.md and by `revactl --help`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import errno
import fcntl
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_DIR = HERE / "build"
TEMPLATES = HERE / "templates"
CACHE = REPO / ".cache"
DEFAULT_BIN = CACHE / "bin" / "revad"
REVA_PKG = "github.com/opencloud-eu/reva/v2/cmd/revad"
MIN_GO = (1, 25)

# Demo users as in templates/main/users.json: (username, password, opaque id).
DEMO_USERS: tuple[tuple[str, str, str], ...] = (
    ("einstein", "relativity", "4c510ada-c86b-4815-8820-42cdf82c3d51"),
    ("marie", "radioactivity", "f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c"),
    ("richard", "superfluidity", "932b4540-8d16-481e-8ef4-588e4b6b151c"),
)

# Port name -> (default port, env var overriding it). REVA_PORT_OFFSET is added to the defaults.
MAIN_PORTS: dict[str, tuple[int, str]] = {
    "gateway": (19000, "REVA_GATEWAY_PORT"),
    "http": (19001, "REVA_HTTP_PORT"),
    "users": (11000, "REVA_USERS_PORT"),
    "users_http": (11001, "REVA_USERS_HTTP_PORT"),
    "shares": (14000, "REVA_SHARES_PORT"),
    "public": (13000, "REVA_PUBLIC_PORT"),
}
# Extra ports of an OCM instance (profile "ocm"): ocmshares auth provider, ocmreceived storage + data.
# All default ports differ by 1 or by >= 999, so stacks whose offsets are distinct multiples of 10 below
# 1000 never collide (the rule REVA_PORT_OFFSET enforces).
OCM_PORTS: dict[str, tuple[int, str]] = {
    "ocm_auth": (16000, "REVA_OCM_AUTH_PORT"),
    "ocm_recv": (17000, "REVA_OCM_RECV_PORT"),
    "ocm_recv_http": (18000, "REVA_OCM_RECV_HTTP_PORT"),
}
# The OCM pair of `revactl --ocm ...`: (instance, domain, port offset added to every default port).
OCM_PAIR: tuple[tuple[str, str, int], ...] = (
    ("ocm-cernbox", "cernbox.local", 100),
    ("ocm-cesnet", "cesnet.local", 200),
)
MAIN_IDP = "http://localhost:20080"
USERS_PROVIDER_ID = "1284d238-aa92-42ce-bdc4-0b0000009157"
MARKER = ".revactl-stack"  # present in every var dir revactl made; `reset` refuses dirs without it
INCLUDES = ("OCM_GATEWAY", "OCM_AUTH_RULE", "OCM_REGISTRY", "OCM_GRPC", "OCM_OCDAV", "OCM_HTTP")


class RevactlError(Exception):
    """A one-line, user-facing failure."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stack:
    """Where one dev Reva instance lives, which ports it takes and what it serves."""

    instance: str
    var_dir: Path
    ports: dict[str, int]
    binary: Path
    log_level: str
    domain: str  # OCM provider domain ("localhost" for the main stack, which has no OCM)
    profile: str  # "main", or "ocm" (main + invites, ocmd, OCM shares, /ocm storage)
    idp: str  # idp of the demo users' ids
    token_expires: int  # lifetime in seconds of the access tokens the gateway mints
    datagateway_advertise: str = ""  # URL the gateway hands out for transfers ("" = the real /data)

    @property
    def conf_dir(self) -> Path:
        return self.var_dir / "conf"

    @property
    def data_dir(self) -> Path:
        return self.var_dir / "data"

    @property
    def state_dir(self) -> Path:
        return self.var_dir / "state"

    @property
    def pidfile(self) -> Path:
        return self.var_dir / "revad.pid"

    @property
    def logfile(self) -> Path:
        return self.var_dir / "revad.log"

    @property
    def stackfile(self) -> Path:
        return self.var_dir / "stack.json"

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def datagateway_url(self) -> str:
        return f"{self.http_base}/data"

    @property
    def datagateway_advertised(self) -> str:
        """The data gateway URL in transfer answers (REVA_DATAGATEWAY_ADVERTISE, else the real one)."""
        return self.datagateway_advertise or self.datagateway_url

    @property
    def webdav_url(self) -> str:
        return f"{self.http_base}/remote.php/webdav/"


# ---------------------------------------------------------------------------------------------
# settings


def _port_offset() -> int:
    offset = _env_int("REVA_PORT_OFFSET", 0)
    if offset % 10 or not 0 <= offset <= 700:
        raise RevactlError(
            f"REVA_PORT_OFFSET={offset}: use a multiple of 10 from 0 to 700 (the --ocm pair adds 100 "
            "and 200), so that no two stacks share a port"
        )
    return offset


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise RevactlError(f"{name}={raw!r} is not an integer") from None


def stack_from_env() -> Stack:
    """The main stack the environment describes (REVA_INSTANCE, REVA_VAR_DIR, REVA_PORT_OFFSET, ...)."""
    name = os.environ.get("REVA_INSTANCE", "").strip() or "main"
    var_env = os.environ.get("REVA_VAR_DIR", "").strip()
    var_dir = Path(var_env).resolve() if var_env else CACHE / "reva" / name
    offset = _port_offset()
    ports = {key: _env_int(env, default + offset) for key, (default, env) in MAIN_PORTS.items()}
    return _make_stack(name, var_dir, ports, "main", "localhost", MAIN_IDP)


def ocm_stacks() -> list[Stack]:
    """The two OCM instances of `--ocm` (.cache/reva/ocm-*[-<offset>], ports shifted by REVA_PORT_OFFSET)."""
    base = _port_offset()
    out = []
    for name, domain, offset in OCM_PAIR:
        table = {**MAIN_PORTS, **OCM_PORTS}
        ports = {key: default + base + offset for key, (default, _env) in table.items()}
        inst = name if base == 0 else f"{name}-{base}"  # parallel pairs get their own var dirs
        out.append(_make_stack(inst, CACHE / "reva" / inst, ports, "ocm", domain, f"https://{domain}"))
    return out


def _make_stack(
    name: str, var_dir: Path, ports: dict[str, int], profile: str, domain: str, idp: str
) -> Stack:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise RevactlError(f"instance name {name!r}: use letters, digits, '.', '_' or '-'")
    for key, port in ports.items():
        if not 1 <= port <= 65535:
            raise RevactlError(f"port {key}={port} out of range (check REVA_*_PORT / REVA_PORT_OFFSET)")
    if len(set(ports.values())) != len(ports):
        raise RevactlError(f"two services share a port: {ports}")
    bin_env = os.environ.get("REVA_BIN", "").strip()
    binary = Path(bin_env).resolve() if bin_env else DEFAULT_BIN
    level = os.environ.get("REVA_LOG_LEVEL", "").strip() or "info"
    expires = _env_int("REVA_TOKEN_EXPIRES", 86400)
    if expires < 1:
        raise RevactlError(f"REVA_TOKEN_EXPIRES={expires}: give a lifetime in seconds >= 1")
    advertise = os.environ.get("REVA_DATAGATEWAY_ADVERTISE", "").strip() if profile == "main" else ""
    if advertise and not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?", advertise):
        raise RevactlError(
            f"REVA_DATAGATEWAY_ADVERTISE={advertise!r}: expected an http(s) URL such as "
            "http://127.0.0.1:19501/data"
        )
    return Stack(name, var_dir, ports, binary, level, domain, profile, idp, expires, advertise)


def recorded_stack(stack: Stack) -> Stack:
    """The stack as it was started (ports recorded in stack.json), else as the environment says."""
    try:
        rec = json.loads(stack.stackfile.read_text())
        ports = {str(k): int(v) for k, v in rec["ports"].items()}
        return dataclasses.replace(
            stack,
            ports=ports,
            domain=str(rec.get("domain", stack.domain)),
            profile=str(rec.get("profile", stack.profile)),
            idp=str(rec.get("idp", stack.idp)),
            datagateway_advertise=str(rec.get("datagateway_advertise", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return stack


# ---------------------------------------------------------------------------------------------
# build


def _go_version(go: str) -> tuple[int, int]:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    m = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if out.returncode != 0 or not m:
        raise RevactlError(f"cannot tell the Go version of {go}: {out.stderr.strip() or out.stdout.strip()}")
    return int(m.group(1)), int(m.group(2))


def _build_inputs() -> list[Path]:
    files = [BUILD_DIR / "go.mod", BUILD_DIR / "go.sum", BUILD_DIR / "tools.go"]
    files += sorted(p for p in (BUILD_DIR / "inotifywait-standin").rglob("*") if p.is_file())
    return [p for p in files if p.exists()]


def build(binary: Path = DEFAULT_BIN, *, quiet: bool = False) -> Path:
    """Build revad into .cache/bin/revad unless it is newer than the wrapper module's files.

    A REVA_BIN binary (anything but the default path) is never built or overwritten: it must exist.
    """
    if binary != DEFAULT_BIN:
        if not binary.is_file():
            raise RevactlError(f"REVA_BIN={binary} does not exist (revactl only builds {DEFAULT_BIN})")
        if not quiet:
            print(f"revactl: REVA_BIN is set, not building; using {binary}")
        return binary
    inputs = _build_inputs()
    newest = max(p.stat().st_mtime for p in inputs)
    if binary.exists() and binary.stat().st_mtime > newest:
        if not quiet:
            print(f"revactl: revad is up to date ({binary})")
        return binary
    go = shutil.which("go")
    if go is None:
        raise RevactlError(
            "Go >= 1.25 is needed to build revad and is not on PATH: install it from https://go.dev/dl/ "
            "(or apt-get install golang-go if that is >= 1.25)"
        )
    if _go_version(go) < MIN_GO:
        raise RevactlError(
            f"Go >= 1.25 is needed to build revad, {go} is go{'.'.join(map(str, _go_version(go)))}"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    gocache = CACHE / "go"
    env = dict(os.environ)
    env.update(
        GOPATH=str(gocache),
        GOMODCACHE=str(gocache / "mod"),
        GOCACHE=str(gocache / "build"),
        GOFLAGS="-modcacherw",
        GOTOOLCHAIN="local",
        GOSUMDB="off",
        CGO_ENABLED="0",
    )
    with _locked(binary.parent / ".revad-build.lock"):
        if binary.exists() and binary.stat().st_mtime > newest:  # another build finished meanwhile
            return binary
        tmp = binary.with_name(f".{binary.name}.{os.getpid()}.tmp")
        print(f"revactl: building revad (cold builds take a few minutes) -> {binary}", flush=True)
        t0 = time.monotonic()
        cmd = [go, "build", "-mod=mod", "-o", str(tmp), REVA_PKG]
        proc = subprocess.run(cmd, cwd=BUILD_DIR, env=env, check=False)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RevactlError(f"go build failed (exit {proc.returncode}); see the output above")
        os.replace(tmp, binary)
        print(f"revactl: built revad in {time.monotonic() - t0:.0f} s", flush=True)
    return binary


# ---------------------------------------------------------------------------------------------
# processes and locks


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pid(stack: Stack) -> int | None:
    try:
        pid = int(stack.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_revad(pid, stack) else None


def _is_our_revad(pid: int, stack: Stack) -> bool:
    """True if pid is alive and is a revad running this stack's conf dir (guards against pid reuse)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # zombie: exited, not yet reaped
        return False
    # exactly how up() starts it: <binary> -dev-dir <this stack's conf dir> (the binary may be REVA_BIN)
    args = raw.split(b"\0")
    return args[1:3] == [b"-dev-dir", str(stack.conf_dir).encode()]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # revad's console log is coloured


def _log_tail(stack: Stack, lines: int = 40) -> str:
    try:
        text = stack.logfile.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(ANSI.sub("", line) for line in text[-lines:])


# ---------------------------------------------------------------------------------------------
# config


def _secrets(stack: Stack) -> dict[str, str]:
    path = stack.var_dir / "secrets.json"
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("jwt", "transfer")):
            return {k: str(v) for k, v in data.items()}
    except (OSError, ValueError):
        pass
    data = {"jwt": secrets.token_urlsafe(24), "transfer": secrets.token_urlsafe(24)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data


def _substitute(text: str, values: dict[str, str], origin: str) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise RevactlError(f"template {origin}: unknown placeholder @@{key}@@")
        return values[key]

    return re.sub(r"@@([A-Z0-9_]+)@@", repl, text)


def template_values(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Placeholder -> value for the templates of `stack` (ports as <NAME>_PORT, dirs, secrets, includes)."""
    sec = _secrets(stack)
    values = {
        "INSTANCE": stack.instance,
        "JWT_SECRET": sec["jwt"],
        "TRANSFER_SECRET": sec["transfer"],
        "LOG_LEVEL": stack.log_level,
        "CONF_DIR": str(stack.conf_dir),
        "DATA_DIR": str(stack.data_dir),
        "STATE_DIR": str(stack.state_dir),
        "USERS_PROVIDER_ID": USERS_PROVIDER_ID,
        "DOMAIN": stack.domain,
        "IDP": stack.idp,
        "DATAGATEWAY_ADVERTISE": stack.datagateway_advertised,
    }
    # Reva's default token lifetime is 86400 s; only a different REVA_TOKEN_EXPIRES adds the block.
    values["TOKEN_LIFETIME"] = (
        f"\n[grpc.services.gateway.token_managers.jwt]\nexpires = {stack.token_expires}\n"
        if stack.token_expires != 86400
        else ""
    )
    values.update({f"{k.upper()}_PORT": str(v) for k, v in stack.ports.items()})
    values.update(extra or {})
    # The @@OCM_*@@ blocks of templates/main/10-main.toml come from ocm-*.inc in templates/<profile>/, else
    # in templates/main/, else they stay empty. (Files of the profile's dir override main's of the same name.)
    for key in INCLUDES:
        name = f"{key.lower().replace('_', '-')}.inc"
        found = [d / name for d in (TEMPLATES / stack.profile, TEMPLATES / "main") if (d / name).exists()]
        values[key] = _substitute(found[0].read_text(), values, name) if found else ""
    values["SHARED"] = _substitute((TEMPLATES / "main" / "shared.inc").read_text(), values, "shared.inc")
    return values


def render_config(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    """File name -> content of the instance's config, from templates/main/ (+ its profile's dir)."""
    dirs = [TEMPLATES / "main"] + ([TEMPLATES / stack.profile] if stack.profile != "main" else [])
    for d in dirs:
        if not d.is_dir():
            raise RevactlError(f"no templates for profile {stack.profile!r} in {TEMPLATES}")
    values = template_values(stack, extra)
    files: dict[str, str] = {}
    for d in dirs:
        for tpl in sorted(d.iterdir()):
            if tpl.suffix in (".toml", ".json"):
                files[tpl.name] = _substitute(tpl.read_text(), values, tpl.name)
    return files


def write_config(stack: Stack, extra: dict[str, str] | None = None) -> None:
    """Write the instance's *.toml and *.json into its conf dir (replacing what was there)."""
    files = render_config(stack, extra)
    stack.conf_dir.mkdir(parents=True, exist_ok=True)
    for old in stack.conf_dir.iterdir():
        old.unlink()
    for name, text in files.items():
        (stack.conf_dir / name).write_text(text)


def stale_config(stack: Stack, extra: dict[str, str] | None = None) -> list[str]:
    """Names of config files whose running version differs from what the templates give now."""
    want = render_config(stack, extra)
    have = {p.name: p.read_text() for p in stack.conf_dir.glob("*") if p.suffix in (".toml", ".json")}
    return sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))


def ocm_extra(stacks: list[Stack]) -> dict[str, str]:
    """Values the OCM providers list needs: every pair member's HTTP port as <DOMAIN LABEL>_HTTP_PORT."""
    return {f"{s.domain.split('.')[0].upper()}_HTTP_PORT": str(s.ports["http"]) for s in stacks}


# ---------------------------------------------------------------------------------------------
# readiness: basic-auth PROPFIND through ocdav (ocdav -> gateway Authenticate -> storage provider)


def _propfind_status(stack: Stack, user: str, password: str, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["http"], timeout=timeout)
    try:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}", "Depth": "0"}
        conn.request("PROPFIND", "/remote.php/webdav/", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def purge_trash(stack: Stack, timeout: float = 120.0) -> None:
    """Empty every demo user's trash bin (WebDAV DELETE on /remote.php/dav/trash-bin/<user>/, which
    purges all items): decomposedfs keeps each deleted file, so a long test run grows the var dir."""
    if _read_pid(stack) is None:
        raise RevactlError(f"revad [{stack.instance}] is not running: `up` first (or `reset` to wipe all)")
    running = recorded_stack(stack)
    for user, password, _ in DEMO_USERS:
        conn = http.client.HTTPConnection("127.0.0.1", running.ports["http"], timeout=timeout)
        try:
            auth = base64.b64encode(f"{user}:{password}".encode()).decode()
            conn.request(
                "DELETE", f"/remote.php/dav/trash-bin/{user}/", headers={"Authorization": f"Basic {auth}"}
            )
            resp = conn.getresponse()
            resp.read()
        except OSError as exc:
            raise RevactlError(f"purging {user}'s trash: {exc}") from None
        finally:
            conn.close()
        if resp.status not in (200, 204):
            raise RevactlError(f"purging {user}'s trash: DELETE answered {resp.status}")
    print(f"revad [{stack.instance}] trash bins emptied ({', '.join(u for u, _, _ in DEMO_USERS)})")


def wait_ready(stack: Stack, gone: Callable[[], str | None], timeout: float) -> None:
    """Wait until every demo user can log in and see its home (the first login creates it).

    `gone()` returns why revad is no longer running, or None while it runs.
    """
    deadline = time.monotonic() + timeout
    pending = list(DEMO_USERS)
    last = "no answer yet"
    while pending:
        why = gone()
        if why is not None:
            raise RevactlError(
                f"revad {why} during start-up; log tail ({stack.logfile}):\n{_log_tail(stack)}"
            )
        user, password, _ = pending[0]
        try:
            status = _propfind_status(stack, user, password)
            if status == 207:
                pending.pop(0)
                continue
            last = f"PROPFIND as {user} answered {status}"
        except OSError as exc:
            last = f"PROPFIND as {user}: {exc}"
        if time.monotonic() > deadline:
            raise RevactlError(
                f"revad not ready after {timeout:.0f} s ({last}); "
                f"log tail ({stack.logfile}):\n{_log_tail(stack)}"
            )
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# commands


def _describe(stack: Stack, pid: int) -> str:
    ocm = f", OCM domain {stack.domain} (ocmd {stack.http_base}/ocm/)" if stack.profile == "ocm" else ""
    return (
        f"revad [{stack.instance}] is up (pid {pid}): gateway {stack.gateway}, "
        f"data gateway {stack.datagateway_url}{ocm}\n"
        f"  var dir  {stack.var_dir}\n"
        f"  log      {stack.logfile}\n"
        f"  WebDAV   {stack.webdav_url}  (einstein's files; basic auth einstein/relativity)"
    )


def _check_ours(stack: Stack) -> None:
    """Refuse to touch an existing non-empty var dir that revactl did not make (a mistyped REVA_VAR_DIR?)."""
    d = stack.var_dir
    if d.exists() and not (d / MARKER).exists() and (not d.is_dir() or any(d.iterdir())):
        raise RevactlError(f"{d} was not made by revactl (no {MARKER}); not touching it (check REVA_VAR_DIR)")


def up(stack: Stack, *, timeout: float = 90.0, extra: dict[str, str] | None = None) -> int:
    """Start the stack unless it is running; returns revad's pid."""
    _check_ours(stack)
    stack.var_dir.mkdir(parents=True, exist_ok=True)
    (stack.var_dir / MARKER).touch()
    with _locked(stack.var_dir / ".lock"):
        pid = _read_pid(stack)
        if pid is not None:
            running = recorded_stack(stack)
            if running.ports != stack.ports:
                raise RevactlError(
                    f"instance {stack.instance} already runs on other ports {running.ports}; "
                    "use `revactl down` first or another REVA_INSTANCE"
                )
            if running.datagateway_advertised != stack.datagateway_advertised:
                raise RevactlError(
                    f"instance {stack.instance} already runs advertising the data gateway "
                    f"{running.datagateway_advertised}, not {stack.datagateway_advertised}; "
                    "use `revactl down` first"
                )
            running_pid = pid
            wait_ready(stack, lambda: None if _is_our_revad(running_pid, stack) else "exited", timeout)
            print(_describe(stack, pid))
            _warn_if_stale(stack, extra)
            return pid
        if not stack.binary.exists():
            raise RevactlError(f"no revad at {stack.binary}: run `dev/reva/revactl build`")
        busy = [f"{k}={p}" for k, p in stack.ports.items() if _port_in_use(p)]
        if busy:
            raise RevactlError(
                f"port(s) already in use on 127.0.0.1: {', '.join(busy)} "
                "(another Reva? pick free ports with REVA_PORT_OFFSET=<n> and a distinct REVA_INSTANCE)"
            )
        for d in (stack.data_dir, stack.state_dir, stack.state_dir / "tmp", stack.var_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        write_config(stack, extra)
        record = {
            "instance": stack.instance,
            "profile": stack.profile,
            "ports": stack.ports,
            "domain": stack.domain,
            "idp": stack.idp,
            "datagateway_advertise": stack.datagateway_advertise,
        }
        stack.stackfile.write_text(json.dumps(record))
        _rotate_log(stack)
        env = dict(os.environ)
        env["TMPDIR"] = str(stack.var_dir / "tmp")  # revad drops one pid file per config there
        with open(stack.logfile, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.write(f"\n==== revactl up {stamp} ====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [str(stack.binary), "-dev-dir", str(stack.conf_dir)],
                cwd=stack.var_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.pidfile.write_text(f"{proc.pid}\n")
        try:
            wait_ready(
                stack,
                lambda: None if proc.poll() is None else f"exited with status {proc.returncode}",
                timeout,
            )
        except BaseException:
            _stop_child(proc)
            stack.pidfile.unlink(missing_ok=True)
            raise
        print(_describe(stack, proc.pid))
        return proc.pid


def _rotate_log(stack: Stack, limit: int = 64 << 20) -> None:
    """Keep one old log: at start-up a log above `limit` bytes becomes revad.log.1."""
    with contextlib.suppress(FileNotFoundError):
        if stack.logfile.stat().st_size > limit:
            os.replace(stack.logfile, stack.logfile.with_name(stack.logfile.name + ".1"))


def _warn_if_stale(stack: Stack, extra: dict[str, str] | None) -> None:
    changed = stale_config(stack, extra)
    if changed:
        print(
            f"revactl: warning: [{stack.instance}] runs an older config than dev/reva/templates "
            f"({', '.join(changed)} changed): `revactl down` then `revactl up` applies it "
            "(memory shares are lost on restart)",
            file=sys.stderr,
        )


def _stop_child(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a revad this process started (SIGTERM, bounded wait, SIGKILL) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)


def _stop_pid(stack: Stack, pid: int, grace: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _is_our_revad(pid, stack) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _is_our_revad(pid, stack):
        print(f"revactl: revad {pid} ignored SIGTERM for {grace:.0f} s, sending SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _is_our_revad(pid, stack) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _is_our_revad(pid, stack):
            raise RevactlError(f"revad {pid} survived SIGKILL")
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def down(stack: Stack) -> bool:
    """Stop the stack; True if it was running."""
    _check_ours(stack)
    if not stack.var_dir.exists():
        print(f"revad [{stack.instance}] is not running")
        return False
    with _locked(stack.var_dir / ".lock"):
        pid = _read_pid(stack)
        if pid is None:
            stack.pidfile.unlink(missing_ok=True)
            print(f"revad [{stack.instance}] is not running")
            return False
        _stop_pid(stack, pid)
        stack.pidfile.unlink(missing_ok=True)
        print(f"revad [{stack.instance}] stopped (pid {pid})")
        return True


def reset(stack: Stack) -> None:
    """Stop the stack and delete its var dir (data, state, config, log)."""
    down(stack)  # refuses foreign dirs
    if not stack.var_dir.exists():
        return
    shutil.rmtree(stack.var_dir)
    print(f"revad [{stack.instance}] data wiped ({stack.var_dir})")


def status(stack: Stack, extra: dict[str, str] | None = None) -> bool:
    pid = _read_pid(stack)
    if pid is None:
        print(f"revad [{stack.instance}] is not running (var dir {stack.var_dir})")
        return False
    running = recorded_stack(stack)
    print(_describe(running, pid))
    _warn_if_stale(running, extra)
    return True


def env_values(stack: Stack, prefix: str = "REVA_") -> dict[str, str]:
    s = recorded_stack(stack)
    return {
        f"{prefix}INSTANCE": s.instance,
        f"{prefix}GATEWAY": s.gateway,
        f"{prefix}DATAGATEWAY_URL": s.datagateway_url,
        f"{prefix}DATAGATEWAY_ADVERTISED": s.datagateway_advertised,
        f"{prefix}WEBDAV_URL": s.webdav_url,
        f"{prefix}HTTP_URL": s.http_base,
        f"{prefix}VAR_DIR": str(s.var_dir),
        f"{prefix}LOG": str(s.logfile),
        f"{prefix}DOMAIN": s.domain,
        f"{prefix}IDP": s.idp,
    }


def env_lines(stacks: list[Stack], ocm: bool) -> list[str]:
    values: dict[str, str] = {}
    for s in stacks:
        prefix = f"REVA_{s.domain.split('.')[0].upper()}_" if ocm else "REVA_"
        values.update(env_values(s, prefix))
    return [f"{k}={shlex.quote(v)}" for k, v in values.items()]


EPILOG = """\
environment (main stack):
  REVA_INSTANCE     instance name (default main)
  REVA_VAR_DIR      data/state/conf/log dir (default <repo>/.cache/reva/<instance>)
  REVA_PORT_OFFSET  added to every default port (also shifts the --ocm pair)
  REVA_GATEWAY_PORT (19000) REVA_HTTP_PORT (19001) REVA_USERS_PORT (11000) REVA_USERS_HTTP_PORT (11001)
  REVA_SHARES_PORT (14000) REVA_PUBLIC_PORT (13000)
  REVA_BIN (.cache/bin/revad)  REVA_LOG_LEVEL (info)  REVA_UP_TIMEOUT (90 s)
  REVA_TOKEN_EXPIRES (86400 s: lifetime of the access tokens the gateway mints)
  REVA_DATAGATEWAY_ADVERTISE (the real http://127.0.0.1:<http port>/data: the data gateway URL the
                    gateway hands out for transfers, e.g. a fault proxy's; main stack only)
--ocm: the two OCM instances ocm-cernbox (domain cernbox.local, ports +100) and ocm-cesnet (cesnet.local,
ports +200); `env --ocm` prints REVA_CERNBOX_* and REVA_CESNET_*. See dev/reva/NOTES.md.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="revactl",
        description="meshfs's dev Reva on 127.0.0.1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    helps = {
        "build": "build revad into .cache/bin/revad (skipped when up to date)",
        "up": "start (idempotent) and wait until every demo user can log in",
        "down": "stop",
        "reset": "stop and wipe the data",
        "status": "say whether it runs (exit 0) or not (exit 3)",
        "env": "print shell-sourceable REVA_* variables",
        "purge-trash": "empty every demo user's trash bin (the stack keeps running)",
    }
    for name, text in helps.items():
        cmd = sub.add_parser(name, help=text)
        if name != "build":
            cmd.add_argument("--ocm", action="store_true", help="the OCM pair (cernbox.local + cesnet.local)")
    args = parser.parse_args(argv)
    try:
        ocm = bool(getattr(args, "ocm", False))
        stacks = ocm_stacks() if ocm else [stack_from_env()]
        extra = ocm_extra(stacks) if ocm else None
        timeout = float(_env_int("REVA_UP_TIMEOUT", 90))
        if args.cmd == "build":
            build(stacks[0].binary)
        elif args.cmd == "up":
            build(stacks[0].binary, quiet=True)
            started: list[Stack] = []  # of this call: stopped again if a later one fails (--ocm)
            try:
                for s in stacks:
                    was_running = _read_pid(s) is not None
                    up(s, timeout=timeout, extra=extra)
                    if not was_running:
                        started.append(s)
            except BaseException:
                for s in started:
                    down(s)
                raise
        elif args.cmd == "down":
            for s in stacks:
                down(s)
        elif args.cmd == "reset":
            for s in stacks:
                reset(s)
        elif args.cmd == "status":
            running = [status(s, extra) for s in stacks]
            return 0 if all(running) else 3
        elif args.cmd == "purge-trash":
            for s in stacks:
                purge_trash(s)
        elif args.cmd == "env":
            print("\n".join(env_lines(stacks, ocm)))
    except RevactlError as exc:
        print(f"revactl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("revactl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `revactl status | head -1`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
