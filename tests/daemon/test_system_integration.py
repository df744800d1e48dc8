"""systemd units (`systemd-analyze verify`) and `mount -t fuse.meshfs` through mount(8).

The units name /usr/local/bin/meshfs; verify insists that ExecStart exists, so each unit is
verified in a copy whose ExecStart names this checkout's `meshfs` instead (nothing else changed).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rigs import REPO, SOURCE, Rig, mounted, pid_alive, wait_for

UNITS = REPO / "systemd"
HELPER = REPO / "dev" / "mount.meshfs"
MESHFS_BIN = Path(sys.executable).parent / "meshfs"
INSTALLED = "/usr/local/bin/meshfs"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _copy(unit: Path, dest_dir: Path, name: str | None = None) -> Path:
    text = unit.read_text()
    assert INSTALLED in text or unit.suffix != ".service", f"{unit} should run {INSTALLED}"
    dest = dest_dir / (name or unit.name)
    dest.write_text(text.replace(INSTALLED, os.fspath(MESHFS_BIN)))
    return dest


def _verify(*units: Path, user: bool = False, env: dict[str, str] | None = None) -> None:
    cmd = [_analyze(), *(["--user"] if user else []), "verify", *map(os.fspath, units)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _service(unit: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(unit.read_text())
    return parser


def test_system_template_unit_verifies(tmp_path: Path) -> None:
    unit = _copy(UNITS / "meshfs@.service", tmp_path, "meshfs@cernbox.service")
    _verify(unit)
    svc = _service(UNITS / "meshfs@.service")["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"].endswith("--config /etc/meshfs/%i.toml --foreground")
    assert svc["Restart"] == "on-failure"
    assert svc["TimeoutStopSec"] == "20min"  # longer than the daemon's default drain bound (15 min)


def test_user_unit_verifies(tmp_path: Path) -> None:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    unit = _copy(UNITS / "user" / "meshfs@.service", tmp_path, "meshfs@cernbox.service")
    # the user manager needs a runtime dir; this container has no login session providing one
    _verify(unit, user=True, env={"XDG_RUNTIME_DIR": os.fspath(runtime)})
    svc = _service(UNITS / "user" / "meshfs@.service")["Service"]
    assert svc["Type"] == "notify" and "%E/meshfs/%i.toml" in svc["ExecStart"]


def test_example_mount_units_verify(tmp_path: Path) -> None:
    mount = _copy(UNITS / "eos-mesh.mount", tmp_path)
    automount = _copy(UNITS / "eos-mesh.automount", tmp_path)
    _verify(mount, automount)
    m = _service(UNITS / "eos-mesh.mount")["Mount"]
    assert m["Type"] == "fuse.meshfs" and m["Where"] == "/eos/mesh"
    escaped = subprocess.run(
        ["systemd-escape", "-p", "--suffix=mount", m["Where"]],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    assert escaped == "eos-mesh.mount"


@pytest.mark.fuse
def test_mount_t_fuse_meshfs_through_mount8(rig: Rig) -> None:
    """`mount -t fuse.meshfs` with fstab-style options, through /sbin/mount.fuse.meshfs."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: installing the mount(8) helper in /sbin needs root")
    target = Path("/sbin/mount.fuse.meshfs")
    if target.exists() or target.is_symlink():
        if not (target.is_symlink() and os.readlink(target) == os.fspath(HELPER)):
            pytest.skip(
                f"SKIPPED LOUDLY: {target} exists and is not this checkout's helper; not replacing it"
            )
    else:
        target.symlink_to(HELPER)
    try:
        opts = (
            f"_netdev,noauto,x-systemd.automount,password_file={rig.password_file},"
            f"cache_dir={rig.cache_dir},tls=false"
        )
        env = {**rig.env, "MESHFS_BIN": os.fspath(MESHFS_BIN)}
        done = subprocess.run(
            ["mount", "-t", "fuse.meshfs", "-o", opts, SOURCE, os.fspath(rig.mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert mounted(rig.mountpoint)
        assert (rig.mountpoint / "hello").read_bytes().startswith(b"hello")
        pid = int(rig.entry()["pid"])
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            line = next(x for x in f if x.split()[4] == os.fspath(rig.mountpoint))
        assert " - fuse.meshfs " + SOURCE + " " in line
        # umount(8) unmounts; the daemon notices, drains and exits
        subprocess.run(["umount", os.fspath(rig.mountpoint)], check=True, timeout=30)
        wait_for(lambda: not pid_alive(pid), 30, "the daemon to exit after umount(8)")
        assert "drain-end" in rig.events()

        # the same through an fstab line (mount --fstab reads another file than /etc/fstab)
        fstab = rig.root / "fstab"
        fstab.write_text(f"# test\n{SOURCE}  {rig.mountpoint}  fuse.meshfs  {opts}  0 0\n")
        done = subprocess.run(
            ["mount", "--fstab", os.fspath(fstab), os.fspath(rig.mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert (rig.mountpoint / "hello").exists()
        done = rig.meshfs("umount", os.fspath(rig.mountpoint))
        assert done.returncode == 0, done.stderr
        assert not mounted(rig.mountpoint)
    finally:
        if target.is_symlink() and os.readlink(target) == os.fspath(HELPER):
            target.unlink()


def test_helper_script_arguments(tmp_path: Path) -> None:
    """The helper drops what mount(8) adds and hands `SOURCE MOUNTPOINT -o OPTIONS` to meshfs."""
    fake = tmp_path / "meshfs"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"MESHFS_BIN": os.fspath(fake)}
    args = ["cs3://u@h:1", "/mnt/x", "-s", "-n", "-o", "rw,_netdev", "-o", "ro", "-t", "fuse.meshfs"]
    done = subprocess.run(
        [os.fspath(HELPER), *args], capture_output=True, text=True, env=env, timeout=10, check=True
    )
    assert done.stdout.splitlines() == ["cs3://u@h:1", "/mnt/x", "-o", "rw,_netdev,ro"]
    done = subprocess.run(
        [os.fspath(HELPER), "cs3://u@h:1", "/mnt/x", "-f"],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=True,
    )
    assert done.stdout == ""  # mount -f: fake, nothing run
    done = subprocess.run(
        [os.fspath(HELPER), "cs3://u@h:1"], capture_output=True, text=True, env=env, timeout=10, check=False
    )
    assert done.returncode == 1 and "usage" in done.stderr
    if not any(
        os.path.exists(p) for p in ("/usr/local/bin/meshfs", "/usr/bin/meshfs", "/opt/meshfs/bin/meshfs")
    ):
        done = subprocess.run(
            [os.fspath(HELPER), "a", "b"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"MESHFS_BIN": os.fspath(tmp_path / "missing")},
        )
        assert done.returncode == 1 and "not installed" in done.stderr
