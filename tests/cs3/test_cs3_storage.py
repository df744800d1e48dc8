"""Storage calls against the real dev Reva: home, stat, list, mkdir, touch, move, delete, metadata,
mtime, quota, spaces, trash — and the CS3 codes Reva really answers, as MeshError classes."""

from __future__ import annotations

import pytest

from meshfs.cs3 import Kind, Perm, Ref
from meshfs.errors import AlreadyExists, FailedPrecondition, NotFound

pytestmark = pytest.mark.timeout(120)


async def test_home_and_stat(einstein) -> None:  # type: ignore[no-untyped-def]
    home = einstein.home
    assert home.resource_id is None and home.path == f"/users/{einstein.gw.user.id.opaque_id}"
    info = await einstein.storage.stat(home)
    assert info.kind is Kind.DIR
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert Perm.UPLOAD | Perm.CREATE_CONTAINER | Perm.DELETE in info.permissions
    # the same resource by id
    again = await einstein.storage.stat(Ref.to(info.id))
    assert again.id == info.id


async def test_mkdir_touch_list_move_delete(einstein, workdir) -> None:  # type: ignore[no-untyped-def]
    st = einstein.storage
    sub = workdir.child("sub")
    await st.create_container(sub)
    with pytest.raises(AlreadyExists):
        await st.create_container(sub)
    with pytest.raises(FailedPrecondition):  # parent missing
        await st.create_container(workdir.child("nope").child("x"))

    f = sub.child("empty.txt")
    await st.touch_file(f)
    with pytest.raises(AlreadyExists):
        await st.touch_file(f)
    info = await st.stat(f)
    assert info.kind is Kind.FILE and info.size == 0 and info.name == "empty.txt"
    dinfo = await st.stat(sub)
    assert info.parent_id == dinfo.id

    names = {r.name: r for r in await st.list_container(sub)}
    assert set(names) == {"empty.txt"}
    assert names["empty.txt"].id == info.id

    # move by path and by id-relative reference; onto an existing name → AlreadyExists
    g = sub.child("g.txt")
    await st.touch_file(g)
    with pytest.raises(AlreadyExists):
        await st.move(f, g)
    renamed = Ref(dinfo.id, "./renamed.txt")
    await st.move(f, renamed)
    assert (await st.stat(renamed)).id == info.id  # ids survive renames
    with pytest.raises(NotFound):
        await st.stat(f)

    await st.delete(renamed)
    with pytest.raises(NotFound):
        await st.stat(renamed)
    with pytest.raises(NotFound):
        await st.delete(renamed)
    with pytest.raises(NotFound):
        await st.list_container(workdir.child("missing"))


async def test_metadata_and_mtime(einstein, workdir) -> None:  # type: ignore[no-untyped-def]
    st = einstein.storage
    f = workdir.child("meta.txt")
    await st.touch_file(f)
    await st.set_metadata(f, {"meshfs.test": "hello", "other": "x y"})
    info = await st.stat(f)
    assert info.metadata["meshfs.test"] == "hello" and info.metadata["other"] == "x y"
    await st.unset_metadata(f, ["other"])
    info = await st.stat(f)
    assert "other" not in info.metadata and info.metadata["meshfs.test"] == "hello"

    mtime_ns = 1_600_000_000_123_456_789
    await st.set_mtime(f, mtime_ns)
    assert (await st.stat(f)).mtime_ns == mtime_ns


async def test_quota_and_spaces(einstein) -> None:  # type: ignore[no-untyped-def]
    q = await einstein.storage.get_quota(einstein.home)
    assert q.used >= 0 and q.total >= 0
    spaces = await einstein.storage.list_spaces()
    personal = [s for s in spaces if s.kind == "personal"]
    assert len(personal) == 1
    home = await einstein.storage.stat(einstein.home)
    assert personal[0].root == home.id
    only = await einstein.storage.list_spaces("personal")
    assert [s.id for s in only] == [personal[0].id]


async def test_trash_list_and_restore(einstein, workdir) -> None:  # type: ignore[no-untyped-def]
    st = einstein.storage
    f = workdir.child("trashme.txt")
    await st.touch_file(f)
    await st.delete(f)
    space_root = Ref.to((await st.stat(einstein.home)).id)
    where = f"/{workdir.path.rpartition('/')[2]}/trashme.txt"  # trash paths are relative to the space
    items = [it for it in await st.list_recycle(space_root) if it.path == where]
    assert items, "deleted file not in the trash"
    await st.restore_recycle_item(space_root, items[-1])
    assert (await st.stat(f)).kind is Kind.FILE
