"""Unit tests of meshfs.config: syntaxes, merge order, -o parsing, and every validation message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshfs.config import (
    OPTIONS,
    Config,
    ConfigError,
    Server,
    check_secret_file,
    example_toml,
    load_config,
    options_markdown,
    options_text,
    parse_duration,
    parse_mount_options,
    parse_size,
    parse_source,
)

SRC = "cs3://einstein@localhost:19000"


def cfg(**kw: object) -> Config:
    flags = {"source": SRC, "mountpoint": "/mnt/mesh"}
    flags.update(kw.pop("flags", {}))  # type: ignore[arg-type]
    return load_config(flags=flags, **kw)  # type: ignore[arg-type]


def test_defaults_and_source() -> None:
    c = cfg(env={"HOME": "/home/u"})
    assert c.server == Server("einstein", "localhost", 19000)
    assert str(c.server) == SRC and c.server.address == "localhost:19000"
    assert c.mountpoint == Path("/mnt/mesh")
    assert c.cache_size == 10 << 30 and c.upload_delay == 2.0 and c.tls is True
    assert c.metrics_port is None and c.log_level == "info" and not c.allow_other
    assert load_config(flags={"source": SRC}, require=(), env={"XDG_CACHE_HOME": "/xdg"}).cache_dir == Path(
        "/xdg/meshfs/einstein@localhost"
    )
    assert parse_source("cs3://marie@[::1]:443") == Server("marie", "::1", 443)
    assert parse_source("cs3://marie@reva.example.org") == Server("marie", "reva.example.org", 443)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("512K", 512 << 10),
        ("512M", 512 << 20),
        ("10G", 10 << 30),
        ("10GiB", 10 << 30),
        ("1.5g", 3 << 29),
        (1024, 1024),
    ],
)
def test_sizes(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0), ("3", 3.0), (2.5, 2.5)],
)
def test_durations(text: object, value: float) -> None:
    assert parse_duration(text) == value


def test_merge_order_toml_then_o_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "meshfs.toml"
    toml.write_text(
        f'source = "{SRC}"\nmountpoint = "/mnt/a"\ncache_size = "1G"\nupload_delay = "5s"\n'
        "upload_workers = 4\nro = true\n"
    )
    c = load_config(
        config_file=toml, options="upload_delay=1s,upload_workers=3", flags={"upload_workers": "7"}
    )
    assert (c.cache_size, c.upload_delay, c.upload_workers, c.ro) == (1 << 30, 1.0, 7, True)
    assert c.config_file == toml
    c = load_config(config_file=toml, options="rw")
    assert c.ro is False


def test_mount_options_fstab_style() -> None:
    opts = parse_mount_options(
        "rw,_netdev,noauto,x-systemd.automount,nofail,password_file=/etc/meshfs/pw,allow_other,"
        "noforeground,token_command=oidc-token cernbox\\, extra"
    )
    assert opts == {
        "ro": "false",
        "password_file": "/etc/meshfs/pw",
        "allow_other": "true",
        "foreground": "false",
        "token_command": "oidc-token cernbox, extra",
    }
    c = cfg(options=["allow_other", "cache_dir=/var/cache/m"])
    assert c.default_permissions is True and c.cache_dir == Path("/var/cache/m")


# every documented error, with its exact one-line message
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("cache_size=lots", "config: cache_size: expected a size like 10G, got 'lots'"),
        ("cache_size=100K", "config: cache_size: expected a size of at least 1M, got '100K'"),
        ("cach_size=3", "config: unknown option 'cach_size' (did you mean 'cache_size'?)"),
        ("frobnicate=1", "config: unknown option 'frobnicate' (see `meshfs mount --help` for the list)"),
        ("upload_delay=soon", "config: upload_delay: expected a duration like 500ms, 2s or 5m, got 'soon'"),
        ("upload_workers=0", "config: upload_workers: expected an integer from 1 to 64, got '0'"),
        ("upload_workers=two", "config: upload_workers: expected an integer from 1 to 64, got 'two'"),
        ("tls=maybe", "config: tls: expected true or false, got 'maybe'"),
        ("metrics_port=70000", "config: metrics_port: expected a port from 1 to 65535, or off, got '70000'"),
        ("log_level=loud", "config: log_level: expected one of debug, info, warning, error, got 'loud'"),
        ("call_timeout=0s", "config: call_timeout: expected a duration from 100ms to 1h, got '0s'"),
        ("readahead_max=4K", "config: readahead_max: expected a size of at least 128K, got '4K'"),
        ("upload_workers", "config: upload_workers: needs a value (upload_workers=...)"),
        (
            "password_file=/a,token_file=/b",
            "config: password_file: cannot be combined with token_file or token_command; choose one",
        ),
        (
            "allow_other,default_permissions=false",
            "config: default_permissions: must be on when allow_other is on",
        ),
        ("tls=false,ca_file=/etc/ca.pem", "config: ca_file: only meaningful with tls = true"),
        (
            "lock_refresh_interval=2m,lock_expiry=3m",
            "config: lock_refresh_interval: expected at most half of lock_expiry (3m), got 2m",
        ),
        (
            "cache_dir=/mnt/mesh/cache",
            "config: cache_dir: must not be inside the mountpoint, got '/mnt/mesh/cache'",
        ),
    ],
)
def test_validation_messages(options: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(options=options)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_source_and_required_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: source: expected cs3://USER@HOST:PORT, got 'http://x'$"):
        load_config(flags={"source": "http://x", "mountpoint": "/m"})
    with pytest.raises(ConfigError, match=r"^config: source: missing; expected cs3://USER@HOST:PORT$"):
        load_config(flags={"mountpoint": "/m"})
    with pytest.raises(ConfigError, match=r"^config: mountpoint: missing; expected path$"):
        load_config(flags={"source": SRC})
    with pytest.raises(
        ConfigError, match=r"^config: unknown option 'cache_sise' \(did you mean 'cache_size'\?\)$"
    ):
        load_config(flags={"cache_sise": "1G"}, require=())
    c = load_config(require=())
    assert c.server is None and c.cache_dir is None
    with pytest.raises(ConfigError, match="source: missing"):
        c.require_server()


def test_toml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("cache_size = \n")
    with pytest.raises(ConfigError, match=r"^config: .*bad.toml: invalid TOML: "):
        load_config(config_file=bad, require=())
    bad.write_text("[cache]\nsize = 3\n")
    with pytest.raises(ConfigError, match=r"^config: unknown option 'cache'"):
        load_config(config_file=bad, require=())
    bad.write_text("cache_size = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"^config: cache_size: expected a single value"):
        load_config(config_file=bad, require=())
    bad.write_text("cache_size = true\n")
    with pytest.raises(ConfigError, match=r"^config: cache_size: expected a size like 10G, got True$"):
        load_config(config_file=bad, require=())
    with pytest.raises(ConfigError, match=r"^config: cannot read .*missing.toml: No such file"):
        load_config(config_file=tmp_path / "missing.toml", require=())


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("relativity\n")
    pw.chmod(0o644)
    with pytest.raises(
        ConfigError, match=r"^config: password_file: '.*pw' is accessible by others \(mode 0644\)"
    ):
        cfg(flags={"password_file": str(pw)}, check_files=True)
    pw.chmod(0o600)
    assert cfg(flags={"password_file": str(pw)}, check_files=True).password_file == pw
    with pytest.raises(ConfigError, match=r"^config: token_file: cannot read '.*nope'"):
        cfg(flags={"token_file": str(tmp_path / "nope")}, check_files=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_secret_file("token_file", tmp_path)
    if os.geteuid() == 0:
        os.chown(pw, 12345, -1)
        with pytest.raises(ConfigError, match="must be owned by uid 0, not 12345"):
            check_secret_file("password_file", pw)


def test_options_markdown_documents_every_option() -> None:
    table = options_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| option | type | default | meaning |"
    assert len(lines) == 2 + len(OPTIONS)
    for option in OPTIONS:
        assert f"| `{option.name}` |" in table
        assert option.doc
    assert "| `cache_size` | size | 10G |" in table
    assert "| `upload_delay` | duration | 2s |" in table
    # every Config field except the derived ones has an option
    fields = set(Config.__dataclass_fields__) - {"server", "config_file"}
    assert fields == {o.name for o in OPTIONS} - {"source"}


def test_example_toml_and_help_text_cover_every_option(tmp_path: Path) -> None:
    text = example_toml(SRC)
    for option in OPTIONS:
        assert f"{option.name} =" in text
    # uncommenting every default gives the same config as the defaults
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line and "..." not in line else line
        for line in text.splitlines()
    )
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    loaded = load_config(config_file=path, require=(), env={"XDG_CACHE_HOME": "/c"})
    plain = load_config(flags={"source": SRC}, require=(), env={"XDG_CACHE_HOME": "/c"})
    from dataclasses import replace

    assert replace(loaded, config_file=None) == plain
    help_text = options_text()
    for option in OPTIONS:
        assert f"  {option.name}=" in help_text
