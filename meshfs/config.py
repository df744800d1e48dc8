"""Configuration: every option of meshfs, parsed from a TOML file, `-o` mount options and CLI flags.

Owns the option table (`OPTIONS`, rendered for the README by `options_markdown()`), the value
syntaxes (sizes like 512M/10G, durations like 500ms/2s/5m, booleans), the merge order
TOML file < `-o` options < flags, and validation: any bad key, type or value raises one `ConfigError`
whose message is a single line naming the key and what is allowed. Imports only the standard library
(tomllib); nothing from the rest of meshfs.

Keys are the same everywhere: `cache_size = "10G"` in TOML, `-o cache_size=10G`, `--cache-size 10G`.
The TOML file is flat (no tables). `-o` also accepts the generic mount(8)/fstab options (rw, noauto,
_netdev, nofail, x-systemd.*, ...), which are ignored, and bare booleans (`-o ro,allow_other`).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "OPTIONS",
    "Config",
    "ConfigError",
    "Option",
    "Server",
    "check_secret_file",
    "default_cache_dir",
    "example_toml",
    "format_duration",
    "format_size",
    "load_config",
    "options_markdown",
    "options_text",
    "parse_bool",
    "parse_duration",
    "parse_mount_options",
    "parse_size",
    "parse_source",
]


class ConfigError(ValueError):
    """A bad configuration; str() is one line, e.g. `config: cache_size: expected a size like 10G,
    got 'lots'`."""


# --------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Server:
    """The CS3 gateway parsed from `cs3://USER@HOST:PORT` (port defaults to 443)."""

    user: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"cs3://{self.user}@{host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port for a gRPC channel."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    """Every option, typed: sizes in bytes, durations in seconds (float), paths absolute.

    `server`/`mountpoint` are None only when the caller did not require them (e.g. `meshfs status`);
    `cache_dir` is None only when there is no server to derive the default from.
    """

    server: Server | None
    mountpoint: Path | None
    config_file: Path | None
    tls: bool
    ca_file: Path | None
    password_file: Path | None
    token_file: Path | None
    token_command: str | None
    cache_dir: Path | None
    cache_size: int
    upload_delay: float
    upload_workers: int
    upload_chunk_size: int
    backpressure_timeout: float
    drain_timeout: float
    call_timeout: float
    transfer_timeout: float
    unavailable_timeout: float
    entry_ttl: float
    attr_ttl: float
    negative_ttl: float
    dir_poll_interval: float
    readahead_max: int
    read_ahead_kb: int
    io_threads: int
    allow_other: bool
    default_permissions: bool
    ro: bool
    writeback_cache: bool
    passthrough: bool
    max_background: int
    lock_refresh_interval: float
    lock_expiry: float
    log_level: str
    metrics_port: int | None
    foreground: bool

    def require_server(self) -> Server:
        if self.server is None:
            raise ConfigError("config: source: missing; give cs3://USER@HOST:PORT")
        return self.server

    def require_mountpoint(self) -> Path:
        if self.mountpoint is None:
            raise ConfigError("config: mountpoint: missing")
        return self.mountpoint

    def require_cache_dir(self) -> Path:
        if self.cache_dir is None:
            raise ConfigError("config: cache_dir: missing (no source to derive the default from)")
        return self.cache_dir


# --------------------------------------------------------------------------------------------------
# Value syntaxes (each raises ValueError("expected ...") on bad input; the caller adds key and value)

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like 4096, 512K, 512M, 10G, 1.5T (binary units; KiB/KB alike)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size like 10G")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError("expected a size like 10G")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like 500ms, 2s, 5m, 1h, 1m30s (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 500ms, 2s or 5m")
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise ValueError("expected a duration like 500ms, 2s or 5m")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d))+", text, re.IGNORECASE):
            return sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION_PART.findall(text))
    raise ValueError("expected a duration like 500ms, 2s or 5m")


def parse_bool(value: object) -> bool:
    """A TOML boolean, or true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError("expected true or false")


def parse_source(value: object) -> Server:
    """`cs3://USER@HOST[:PORT]` → Server (port 443 when omitted; IPv6 hosts in brackets)."""
    expected = "expected cs3://USER@HOST:PORT"
    if not isinstance(value, str):
        raise ValueError(expected)
    m = re.fullmatch(r"cs3://([^@/:\s]+)@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?", value.strip())
    if not m:
        raise ValueError(expected)
    user, host, port_text = m.group(1), m.group(2).strip("[]"), m.group(3)
    port = int(port_text) if port_text else 443
    if not 1 <= port <= 65535:
        raise ValueError("expected cs3://USER@HOST:PORT with a port in 1-65535")
    return Server(user, host, port)


def format_size(n: int) -> str:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


# --------------------------------------------------------------------------------------------------
# The option table


def _path(value: object) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ValueError("expected a path")
    return Path(os.path.abspath(os.path.expanduser(str(value))))


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _int_in(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return value

    return parse


def _size_at_least(lo: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = parse_size(value)
        if n < lo:
            raise ValueError(f"expected a size of at least {format_size(lo)}")
        return n

    return parse


def _duration_in(lo: float, hi: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        d = parse_duration(value)
        if not lo <= d <= hi:
            raise ValueError(f"expected a duration from {format_duration(lo)} to {format_duration(hi)}")
        return d

    return parse


def _port_or_off(value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "", "none")):
        return None
    if value == 0 or value == "0":
        return None
    try:
        return _int_in(1, 65535)(value)
    except ValueError:
        raise ValueError("expected a port from 1 to 65535, or off") from None


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in _LOG_LEVELS:
        return value.strip().lower()
    raise ValueError("expected one of " + ", ".join(_LOG_LEVELS))


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its key, type name (for docs), default (None = unset), meaning and parser."""

    name: str
    type: str
    default: object
    doc: str
    parse: Callable[[object], object]
    default_doc: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _o(
    name: str,
    type_: str,
    default: object,
    doc: str,
    parse: Callable[[object], object],
    default_doc: str | None = None,
) -> Option:
    return Option(name, type_, default, doc, parse, default_doc)


_KiB = 1 << 10
_MiB = 1 << 20
_GiB = 1 << 30

OPTIONS: tuple[Option, ...] = (
    _o(
        "source",
        "cs3 URL",
        None,
        "The CS3 gateway and user: `cs3://USER@HOST:PORT` (port 443 if omitted).",
        parse_source,
        "required",
    ),
    _o("mountpoint", "path", None, "Where to mount.", _path, "required for mount"),
    _o("tls", "bool", True, "TLS to the gateway and data gateway, with server name checks.", parse_bool),
    _o(
        "ca_file",
        "path",
        None,
        "CA bundle (PEM) for TLS instead of the system CA store.",
        _path,
        "system CAs",
    ),
    _o(
        "password_file",
        "path",
        None,
        "File holding the password (basic auth); must be 0600 and ours.",
        _path,
        "unset",
    ),
    _o(
        "token_file",
        "path",
        None,
        "File holding a bearer/OIDC access token, re-read when it changes; must be 0600 and ours. "
        "Without any credential option: $BEARER_TOKEN_FILE, then $XDG_RUNTIME_DIR/bt_u<uid>.",
        _path,
        "unset",
    ),
    _o(
        "token_command",
        "string",
        None,
        "Command printing a fresh access token (e.g. `oidc-token cernbox`), run when the token nears expiry.",
        _text,
        "unset",
    ),
    _o(
        "cache_dir",
        "path",
        None,
        "Cache directory (mode 0700); one daemon per cache dir.",
        _path,
        "`$XDG_CACHE_HOME/meshfs/USER@HOST` (~/.cache if unset)",
    ),
    _o(
        "cache_size",
        "size",
        10 * _GiB,
        "Cache size limit; clean data is evicted least-recently-used, dirty data never.",
        _size_at_least(1 * _MiB),
    ),
    _o(
        "upload_delay",
        "duration",
        2.0,
        "Quiet time after the last close before a modified file is uploaded.",
        _duration_in(0.0, 86400.0),
    ),
    _o("upload_workers", "int", 2, "Parallel uploads.", _int_in(1, 64)),
    _o(
        "upload_chunk_size",
        "size",
        64 * _MiB,
        "Chunk size of resumable (tus) uploads.",
        _size_at_least(256 * _KiB),
    ),
    _o(
        "backpressure_timeout",
        "duration",
        120.0,
        "How long a writer waits for cache space held by pending uploads before getting ENOSPC.",
        _duration_in(0.0, 86400.0),
    ),
    _o(
        "drain_timeout",
        "duration",
        900.0,
        "At unmount/stop, how long to wait for pending uploads; what is left stays in the cache journal "
        "and resumes at the next mount (keep systemd's TimeoutStopSec longer).",
        _duration_in(0.0, 7 * 86400.0),
    ),
    _o(
        "call_timeout",
        "duration",
        30.0,
        "Timeout of one metadata call to the gateway.",
        _duration_in(0.1, 3600.0),
    ),
    _o(
        "transfer_timeout",
        "duration",
        120.0,
        "A data transfer making no progress for this long is aborted (and retried).",
        _duration_in(1.0, 86400.0),
    ),
    _o(
        "unavailable_timeout",
        "duration",
        30.0,
        "How long an operation retries while the server is unreachable before failing with EIO.",
        _duration_in(0.0, 86400.0),
    ),
    _o("entry_ttl", "duration", 1.0, "Kernel cache time of name lookups.", _duration_in(0.0, 3600.0)),
    _o(
        "attr_ttl",
        "duration",
        1.0,
        "Kernel and meshfs cache time of file attributes.",
        _duration_in(0.0, 3600.0),
    ),
    _o("negative_ttl", "duration", 1.0, "Cache time of 'no such file' answers.", _duration_in(0.0, 3600.0)),
    _o(
        "dir_poll_interval",
        "duration",
        10.0,
        "Interval of the remote-change poller (directory etags); 0 disables it.",
        _duration_in(0.0, 86400.0),
    ),
    _o(
        "readahead_max",
        "size",
        64 * _MiB,
        "Largest sequential readahead window (at most a quarter of `cache_size`).",
        _size_at_least(128 * _KiB),
    ),
    _o(
        "read_ahead_kb",
        "int",
        1024,
        "Kernel readahead of the mount in KiB (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), set by the "
        "daemon once the mount is live when it may (root; otherwise it logs one line and keeps the "
        "kernel's 128). 1024 lets sequential reads arrive as 1 MiB requests instead of 128 KiB ones; "
        "0 leaves the kernel default.",
        _int_in(0, 65536),
    ),
    _o(
        "io_threads",
        "int",
        16,
        "Worker threads for blocking calls (gRPC, HTTP, cache file I/O).",
        _int_in(2, 256),
    ),
    _o(
        "allow_other",
        "bool",
        False,
        "Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root); "
        "implies default_permissions.",
        parse_bool,
    ),
    _o(
        "default_permissions",
        "bool",
        False,
        "Let the kernel check mode bits.",
        parse_bool,
        "off (on with allow_other)",
    ),
    _o("ro", "bool", False, "Read-only mount.", parse_bool),
    _o(
        "writeback_cache",
        "bool",
        False,
        "Kernel write-back cache (FUSE_WRITEBACK_CACHE): faster small writes; the kernel then owns "
        "mtime and size, so a size changed on the server is not seen while the kernel caches the file "
        "(kernel 6.18). Large writes were not faster with it.",
        parse_bool,
    ),
    _o(
        "passthrough",
        "bool",
        True,
        "FUSE passthrough for files opened for writing that start empty (new, or O_TRUNC): the "
        "kernel writes the cache file itself, at local-disk speed (kernel >= 6.9, daemon as root; "
        "otherwise unused). Used only while at least half the cache (and 256 MiB of its disk) is free "
        "of dirty data: such writes are not held back by cache_size while the file is open.",
        parse_bool,
    ),
    _o(
        "max_background",
        "int",
        64,
        "Kernel limit of outstanding background requests (readahead, async writes).",
        _int_in(1, 65535),
    ),
    _o(
        "lock_refresh_interval",
        "duration",
        30.0,
        "How often held CS3 locks are refreshed.",
        _duration_in(1.0, 86400.0),
    ),
    _o(
        "lock_expiry",
        "duration",
        120.0,
        "Expiration of the CS3 locks we take (a crashed node's locks lapse after this).",
        _duration_in(2.0, 7 * 86400.0),
    ),
    _o("log_level", "choice", "info", "debug, info, warning or error.", _log_level),
    _o(
        "metrics_port",
        "port",
        None,
        "Serve Prometheus metrics on 127.0.0.1:PORT; off by default.",
        _port_or_off,
        "off",
    ),
    _o("foreground", "bool", False, "Stay in the foreground (`-f`).", parse_bool),
)

_BY_NAME = {o.name: o for o in OPTIONS}

# Generic mount(8)/fstab options that reach a FUSE helper and mean nothing to meshfs.
_IGNORED_MOUNT_OPTIONS = frozenset(
    {
        *("defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev"),
        *("nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "silent"),
        *("atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime", "loud"),
        *("lazytime", "nolazytime", "diratime", "nodiratime", "rw"),
    }
)
_IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")


def _default_doc(o: Option) -> str:
    if o.default_doc is not None:
        return o.default_doc
    if o.type == "size" and isinstance(o.default, int):
        return format_size(o.default)
    if o.type == "duration" and isinstance(o.default, float):
        return format_duration(o.default)
    if isinstance(o.default, bool):
        return "true" if o.default else "false"
    return str(o.default)


def options_markdown() -> str:
    """The option reference as a markdown table (name, type, default, meaning) for the README."""
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        rows.append(f"| `{o.name}` | {o.type} | {_default_doc(o)} | {o.doc} |")
    return "\n".join(rows) + "\n"


def options_text(width: int = 100) -> str:
    """The option reference as plain text for `--help`: `  name=TYPE (default: X)` then the meaning."""
    out = []
    for o in OPTIONS:
        out.append(f"  {o.name}={o.type.upper().replace(' ', '_')}  (default: {_default_doc(o)})")
        out.extend(
            textwrap.wrap(o.doc.replace("`", ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(out) + "\n"


def example_toml(source: str = "cs3://USER@HOST:443") -> str:
    """A config file with every option at its default, commented, e.g. for /etc/meshfs/NAME.toml."""
    lines = ["# meshfs configuration: every option, at its default (uncomment to change)", ""]
    for o in OPTIONS:
        lines.extend(textwrap.wrap(o.doc.replace("`", ""), 98, initial_indent="# ", subsequent_indent="# "))
        if o.name == "source":
            lines.append(f'source = "{source}"')
        elif o.default is None:
            lines.append(f"# {o.name} = ...  ({_default_doc(o)})")
        elif isinstance(o.default, bool):
            lines.append(f"# {o.name} = {'true' if o.default else 'false'}")
        elif isinstance(o.default, int | float) and o.type in ("size", "duration"):
            lines.append(f'# {o.name} = "{_default_doc(o)}"')
        elif isinstance(o.default, str):
            lines.append(f'# {o.name} = "{o.default}"')
        else:
            lines.append(f"# {o.name} = {o.default}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Loading and merging


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_BY_NAME), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see `meshfs mount --help` for the list)"
    return ConfigError(f"config: unknown option '{key}'{hint}")


def parse_mount_options(options: str | Iterable[str]) -> dict[str, str]:
    """`-o` strings (comma-separated; `\\,` for a literal comma) → {key: raw value}; a bare key is
    'true'; `noKEY` for a boolean KEY is 'false'; generic mount options are dropped; `rw` is ro=false.
    Unknown keys raise ConfigError."""
    items: list[str] = []
    for chunk in [options] if isinstance(options, str) else options:
        items.extend(p.replace("\0", ",") for p in chunk.replace("\\,", "\0").split(","))
    out: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key == "rw" and not sep:
            out["ro"] = "false"
            continue
        if key in _IGNORED_MOUNT_OPTIONS or item.startswith(_IGNORED_PREFIXES):
            continue
        if key not in _BY_NAME:
            base = key[2:] if key.startswith("no") else ""
            if not sep and base in _BY_NAME and _BY_NAME[base].type == "bool":
                out[base] = "false"
                continue
            raise _unknown(key)
        if not sep:
            if _BY_NAME[key].type != "bool":
                raise ConfigError(f"config: {key}: needs a value ({key}=...)")
            value = "true"
        out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from None
    for key, value in data.items():
        if key not in _BY_NAME:
            raise _unknown(key)
        if isinstance(value, dict | list):
            raise ConfigError(f"config: {key}: expected a single value, got a TOML table or array")
    return data


def _convert(key: str, raw: object) -> object:
    option = _BY_NAME.get(key)
    if option is None:
        raise _unknown(key)
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"config: {key}: {exc}, got {raw!r}") from None


def default_cache_dir(server: Server, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/meshfs/USER@HOST` (XDG_CACHE_HOME defaults to ~/.cache)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(base)) / "meshfs" / f"{server.user}@{server.host}"


def load_config(
    *,
    config_file: str | os.PathLike[str] | None = None,
    options: str | Iterable[str] = (),
    flags: Mapping[str, object] | None = None,
    require: Iterable[str] = ("source", "mountpoint"),
    check_files: bool = False,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge TOML `config_file` < `-o` `options` < `flags` into a validated Config.

    `flags` maps option names to values (strings as typed on the command line, or typed values);
    None values are ignored, so a CLI can pass every flag it defines. `require` lists the options
    that must be set (ConfigError otherwise). With `check_files`, credential files must exist, be
    regular files owned by this user and not readable by group/others (see check_secret_file), and
    ca_file must be readable. `env` (default os.environ) is used for the default cache dir.
    """
    raw: dict[str, object] = {}
    cfg_path = _path(os.fspath(config_file)) if config_file is not None else None
    if cfg_path is not None:
        raw.update(_read_toml(cfg_path))
    raw.update(parse_mount_options(options))
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in _BY_NAME:
            raise _unknown(key)
        raw[key] = value

    values: dict[str, object] = {o.name: o.default for o in OPTIONS}
    for key, value in raw.items():
        values[key] = _convert(key, value)

    for key in require:
        if values.get(key) is None:
            option = _BY_NAME[key]
            what = "cs3://USER@HOST:PORT" if key == "source" else option.type
            raise ConfigError(f"config: {key}: missing; expected {what}")

    server = values.pop("source")
    assert server is None or isinstance(server, Server)
    if values["cache_dir"] is None and server is not None:
        values["cache_dir"] = default_cache_dir(server, env)

    # Cross-option rules.
    if values["password_file"] is not None and (
        values["token_file"] is not None or values["token_command"] is not None
    ):
        raise ConfigError(
            "config: password_file: cannot be combined with token_file or token_command; choose one"
        )
    if values["allow_other"]:
        if "default_permissions" in raw and not values["default_permissions"]:
            raise ConfigError("config: default_permissions: must be on when allow_other is on")
        values["default_permissions"] = True
    if values["ca_file"] is not None and not values["tls"]:
        raise ConfigError("config: ca_file: only meaningful with tls = true")
    refresh, expiry = values["lock_refresh_interval"], values["lock_expiry"]
    assert isinstance(refresh, float) and isinstance(expiry, float)
    if refresh * 2 > expiry:
        raise ConfigError(
            f"config: lock_refresh_interval: expected at most half of lock_expiry "
            f"({format_duration(expiry)}), got {format_duration(refresh)}"
        )
    mp, cache_dir = values["mountpoint"], values["cache_dir"]
    if isinstance(mp, Path) and isinstance(cache_dir, Path) and (cache_dir == mp or mp in cache_dir.parents):
        raise ConfigError(f"config: cache_dir: must not be inside the mountpoint, got '{cache_dir}'")

    if check_files:
        for key in ("password_file", "token_file"):
            p = values[key]
            if isinstance(p, Path):
                check_secret_file(key, p)
        ca = values["ca_file"]
        if isinstance(ca, Path) and not os.access(ca, os.R_OK):
            raise ConfigError(f"config: ca_file: cannot read '{ca}'")

    names = {f.name for f in fields(Config)}
    assert set(values) | {"server", "config_file"} == names, set(values) ^ names
    return Config(server=server, config_file=cfg_path, **values)  # type: ignore[arg-type]


def check_secret_file(key: str, path: Path) -> None:
    """A credential file must be a regular file owned by us, readable by nobody else (0600/0400)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"config: {key}: cannot read '{path}': {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config: {key}: '{path}' is not a regular file")
    if st.st_uid != os.getuid():
        raise ConfigError(f"config: {key}: '{path}' must be owned by uid {os.getuid()}, not {st.st_uid}")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"config: {key}: '{path}' is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run chmod 600 '{path}'"
        )
