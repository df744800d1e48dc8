"""Sharing against the real dev Reva: share to marie, list, accept, read as marie; viewer vs editor
(file and folder editor permission sets); decline; remove; FindUsers; OCM received list."""

from __future__ import annotations

import pytest
from cs3_helpers import fd_of, sha256_file  # type: ignore[import-not-found]

from meshfs.cs3 import Perm, Ref, Role, ShareState
from meshfs.errors import InvalidArgument, NotFound, PermissionDenied

pytestmark = pytest.mark.timeout(120)


async def test_find_users(einstein) -> None:  # type: ignore[no-untyped-def]
    by_part = await einstein.shares.find_users("mar")
    assert [u.username for u in by_part] == ["marie"]
    assert by_part[0].display_name == "Marie Curie" and by_part[0].mail == "marie@example.org"
    assert [u.username for u in await einstein.shares.find_users("CURIE")] == ["marie"]
    assert [u.username for u in await einstein.shares.find_users("richard@example.org")] == ["richard"]
    assert await einstein.shares.find_users("no-such-person-xyz") == []


async def test_share_folder_to_marie_viewer(einstein, marie, workdir, make_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = make_file(200_000)
    with fd_of(src) as fd:
        await einstein.transfer.upload(workdir.child("data.bin"), fd, 200_000)
    marie_id = (await einstein.shares.find_users("marie"))[0].id
    share = await einstein.shares.create_share(workdir, marie_id, Role.VIEWER)
    try:
        assert share.role is Role.VIEWER and share.grantee == marie_id
        assert Perm.UPLOAD not in share.permissions and Perm.DOWNLOAD in share.permissions
        folder_id = (await einstein.storage.stat(workdir)).id
        assert share.resource_id == folder_id
        mine = await einstein.shares.list_shares(folder_id)
        assert [s.id for s in mine] == [share.id]
        assert share.id in {s.id for s in await einstein.shares.list_shares()}

        received = {r.id: r for r in await marie.shares.list_received_shares()}
        assert received[share.id].state is ShareState.PENDING
        assert received[share.id].sharer == einstein.gw.user.id
        assert received[share.id].resource_id == folder_id
        pending = await marie.shares.list_received_shares(ShareState.PENDING)
        assert share.id in {r.id for r in pending}

        accepted = await marie.shares.accept(share.id)
        assert accepted.state is ShareState.ACCEPTED
        assert {r.id: r for r in await marie.shares.list_received_shares()}[
            share.id
        ].state is ShareState.ACCEPTED

        # marie reads through the resource id
        root = Ref.to(share.resource_id)
        assert [e.name for e in await marie.storage.list_container(root)] == ["data.bin"]
        info = await marie.storage.stat(root.child("data.bin"))
        assert Perm.UPLOAD not in info.permissions
        dst = tmp_path / "as-marie"
        with fd_of(dst, write=True) as fd:
            assert await marie.transfer.download(root.child("data.bin"), fd) == 200_000
        assert sha256_file(dst) == sha256_file(src)
        # ... and cannot write
        with fd_of(src) as fd, pytest.raises(PermissionDenied):
            await marie.transfer.upload(root.child("new.bin"), fd, 10)
        with pytest.raises(PermissionDenied):
            await marie.storage.create_container(root.child("sub"))

        declined = await marie.shares.decline(share.id)
        assert declined.state is ShareState.REJECTED
    finally:
        await einstein.shares.remove_share(share.id)
    assert share.id not in {s.id for s in await einstein.shares.list_shares()}
    assert share.id not in {r.id for r in await marie.shares.list_received_shares()}
    with pytest.raises(NotFound):
        await marie.storage.stat(Ref.to(share.resource_id))


async def test_file_and_folder_editor(einstein, marie, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marie_id = (await einstein.shares.find_users("marie"))[0].id
    src = tmp_path / "s"
    src.write_bytes(b"0123456789")
    f = workdir.child("doc.txt")
    sub = workdir.child("team")
    await einstein.storage.create_container(sub)
    with fd_of(src) as fd:
        await einstein.transfer.upload(f, fd, 10)
        file_share = await einstein.shares.create_share(f, marie_id, Role.EDITOR)
        dir_share = await einstein.shares.create_share(sub, marie_id, Role.EDITOR)
        try:
            assert file_share.role is Role.EDITOR and dir_share.role is Role.EDITOR
            # file editor: upload but no move/delete/mkdir; folder editor: everything
            assert Perm.UPLOAD in file_share.permissions
            assert not (Perm.DELETE | Perm.MOVE | Perm.CREATE_CONTAINER) & file_share.permissions
            assert Perm.DELETE | Perm.MOVE | Perm.CREATE_CONTAINER | Perm.UPLOAD in dir_share.permissions
            await marie.shares.accept(file_share.id)
            await marie.shares.accept(dir_share.id)

            mf = Ref.to(file_share.resource_id)
            res = await marie.transfer.upload(mf, fd, 4)
            assert (await einstein.storage.stat(f)).etag == res.etag
            assert (await einstein.storage.stat(f)).size == 4

            md = Ref.to(dir_share.resource_id)
            await marie.storage.create_container(md.child("by-marie"))
            await marie.transfer.upload(md.child("by-marie").child("n.txt"), fd, 10)
            assert (await einstein.storage.stat(sub.child("by-marie").child("n.txt"))).size == 10
            await marie.storage.delete(md.child("by-marie"))
        finally:
            await einstein.shares.remove_share(file_share.id)
            await einstein.shares.remove_share(dir_share.id)


async def test_ocm_received_shares_empty_on_one_server(einstein) -> None:  # type: ignore[no-untyped-def]
    assert await einstein.shares.list_received_ocm_shares() == []


async def test_accept_with_mount_point(einstein, marie, workdir) -> None:  # type: ignore[no-untyped-def]
    marie_id = (await einstein.shares.find_users("marie"))[0].id
    share = await einstein.shares.create_share(workdir, marie_id, Role.VIEWER)
    try:
        got = await marie.shares.update_received_share(
            share.id, ShareState.ACCEPTED, mount_point="From Albert"
        )
        assert got.state is ShareState.ACCEPTED and got.mount_point == "From Albert"
        listed = {r.id: r for r in await marie.shares.list_received_shares()}[share.id]
        assert listed.mount_point == "From Albert"
        with pytest.raises(InvalidArgument):
            await marie.shares.update_received_share(share.id, ShareState.INVALID)
    finally:
        await einstein.shares.remove_share(share.id)
