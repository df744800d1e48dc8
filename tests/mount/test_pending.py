"""Namespace changes while uploads are still pending (write-back): the server must end up with the
final tree, whatever happened to a file between its last close and its upload.

Each test uses its own mount with a long upload_delay, so every upload happens only at `meshfs sync`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounthelp import WebDav, sync, tree_snapshot

pytestmark = [pytest.mark.reva, pytest.mark.fuse]


@pytest.fixture
def slow(
    mount_factory: Callable[..., Path], webdav: WebDav, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A fresh dir on a mount that uploads only when asked (upload_delay=10m); removed on the server after."""
    mnt = mount_factory("einstein", "upload_delay=10m")
    name = f"mt-pending-{request.node.name[5:40]}-{os.urandom(3).hex()}"
    d = mnt / "home" / name
    d.mkdir()
    try:
        yield d
    finally:
        try:
            webdav.delete(name)
        except Exception:  # best effort: the test may have failed half-way
            pass


def fresh_view(mount_factory: Callable[..., Path], d: Path) -> Path:
    return mount_factory() / "home" / d.name


def test_rename_of_a_pending_file(slow: Path, webdav: WebDav, mount_factory: Callable[..., Path]) -> None:
    (slow / "a").write_bytes(b"pending content")
    os.rename(slow / "a", slow / "b")
    sync(slow)
    assert webdav.get(f"{slow.name}/b") == b"pending content"
    assert not webdav.exists(f"{slow.name}/a")
    assert sorted(os.listdir(fresh_view(mount_factory, slow))) == ["b"]


def test_rename_of_the_parent_of_a_pending_file(
    slow: Path, webdav: WebDav, mount_factory: Callable[..., Path]
) -> None:
    (slow / "d").mkdir()
    (slow / "d" / "f").write_bytes(b"inside")
    os.rename(slow / "d", slow / "e")
    with open(slow / "e" / "f", "ab") as f:
        f.write(b" and more")
    sync(slow)
    assert webdav.get(f"{slow.name}/e/f") == b"inside and more"
    assert not webdav.exists(f"{slow.name}/d")
    view = fresh_view(mount_factory, slow)
    assert sorted(os.listdir(view)) == ["e"]
    assert (view / "e" / "f").read_bytes() == b"inside and more"


def test_unlink_of_a_pending_file_uploads_nothing(slow: Path, webdav: WebDav) -> None:
    (slow / "gone").write_bytes(b"never stored")
    (slow / "kept").write_bytes(b"kept")
    os.unlink(slow / "gone")
    sync(slow)
    assert not webdav.exists(f"{slow.name}/gone")
    assert webdav.get(f"{slow.name}/kept") == b"kept"


def test_pending_file_replaced_by_rename_over(slow: Path, webdav: WebDav) -> None:
    (slow / "target").write_bytes(b"old")
    sync(slow)
    (slow / "tmp").write_bytes(b"new version")
    os.replace(slow / "tmp", slow / "target")
    sync(slow)
    assert webdav.get(f"{slow.name}/target") == b"new version"
    assert not webdav.exists(f"{slow.name}/tmp")


def test_rmdir_after_moving_pending_files_out(slow: Path, webdav: WebDav) -> None:
    (slow / "d").mkdir()
    for n in "abc":
        (slow / "d" / n).write_bytes(n.encode() * 10)
    for n in "abc":
        os.rename(slow / "d" / n, slow / n)
    os.rmdir(slow / "d")
    sync(slow)
    assert not webdav.exists(f"{slow.name}/d")
    for n in "abc":
        assert webdav.get(f"{slow.name}/{n}") == n.encode() * 10


def test_many_changes_to_one_pending_file(
    slow: Path, webdav: WebDav, mount_factory: Callable[..., Path]
) -> None:
    p = slow / "f"
    p.write_bytes(b"1" * 100_000)
    os.truncate(p, 10)
    with open(p, "ab") as f:
        f.write(b"tail")
    with open(p, "r+b") as f:
        f.seek(2)
        f.write(b"XY")
    os.rename(p, slow / "g")
    os.truncate(slow / "g", 20)
    expected = b"11XY111111tail" + b"\0" * 6
    assert (slow / "g").read_bytes() == expected
    sync(slow)
    assert webdav.get(f"{slow.name}/g") == expected
    view = fresh_view(mount_factory, slow)
    assert tree_snapshot(view) == tree_snapshot(slow)


def test_deep_tree_created_and_removed(slow: Path, webdav: WebDav) -> None:
    deep = slow.joinpath(*[f"l{i}" for i in range(12)])
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"leaf")
    sync(slow)
    assert webdav.get("/".join([slow.name, *[f"l{i}" for i in range(12)], "leaf"])) == b"leaf"
    shutil.rmtree(slow / "l0")
    assert os.listdir(slow) == []
    assert not webdav.exists(f"{slow.name}/l0")
