"""CS3 locks against the real dev Reva: one user with two lock ids, and two users on a shared file.
The expected classes are the codes Reva v2.47 really answers (recorded in the report)."""

from __future__ import annotations

import time

import pytest
from cs3_helpers import fd_of  # type: ignore[import-not-found]

from meshfs.cs3 import LockKind, Ref, Role
from meshfs.errors import Aborted, FailedPrecondition, Locked, PermissionDenied

pytestmark = pytest.mark.timeout(120)


async def test_lock_lifecycle_and_two_lock_ids(einstein, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st, tr = einstein.storage, einstein.transfer
    f = workdir.child("locked.txt")
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    with fd_of(src) as fd:
        await tr.upload(f, fd, 3)
        assert await st.get_lock(f) is None
        await st.set_lock(f, "L1", expiration=time.time() + 120)
        lock = await st.get_lock(f)
        assert lock is not None and lock.lock_id == "L1" and lock.kind is LockKind.WRITE
        assert lock.app_name == "meshfs" and lock.user == einstein.gw.user.id
        assert lock.expiration is not None and lock.expiration > time.time() + 60
        assert (await st.stat(f)).lock == lock

        with pytest.raises(FailedPrecondition):  # already locked, whatever the id
            await st.set_lock(f, "L2")
        with pytest.raises(Locked):  # writes without the lock id
            await tr.upload(f, fd, 3)
        with pytest.raises(Aborted):  # ... or with another one (Reva: INTERNAL "aborted: mismatching lock")
            await tr.upload(f, fd, 3, lock_id="L2")
        for mutate in (
            lambda: st.set_mtime(f, 1_600_000_000_000_000_000),
            lambda: st.delete(f),
            lambda: st.move(f, workdir.child("elsewhere.txt")),
        ):
            with pytest.raises(Locked):
                await mutate()
        await tr.upload(f, fd, 3, lock_id="L1")
        await st.set_mtime(f, 1_600_000_000_000_000_000, lock_id="L1")

        with pytest.raises(Aborted):  # refresh with another id
            await st.refresh_lock(f, "L2")
        await st.refresh_lock(f, "L1", expiration=time.time() + 300)
        with pytest.raises(Locked):  # unlock with another id
            await st.unlock(f, "L2")
        await st.unlock(f, "L1")
        assert await st.get_lock(f) is None
        with pytest.raises(Aborted):  # unlock when not locked
            await st.unlock(f, "L1")
        with pytest.raises(FailedPrecondition):  # refresh when not locked
            await st.refresh_lock(f, "L1")
        with pytest.raises(Aborted):  # a lock id on an unlocked file (INTERNAL "aborted: not locked")
            await tr.upload(f, fd, 3, lock_id="L1")


async def test_lock_by_id_reference(einstein, workdir) -> None:  # type: ignore[no-untyped-def]
    st = einstein.storage
    f = workdir.child("byid.txt")
    await st.touch_file(f)
    ref = Ref.to((await st.stat(f)).id)
    await st.set_lock(ref, "ID1")
    assert (await st.get_lock(ref)).lock_id == "ID1"
    await st.unlock(ref, "ID1")


async def test_lock_conflicts_between_two_users(einstein, marie, workdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.write_bytes(b"shared")
    f = workdir.child("both.txt")
    with fd_of(src) as fd:
        await einstein.transfer.upload(f, fd, 6)
        marie_id = (await einstein.shares.find_users("marie@example.org"))[0].id
        share = await einstein.shares.create_share(workdir, marie_id, Role.EDITOR)
        try:
            await marie.shares.accept(share.id)
            mf = Ref(share.resource_id, "./both.txt")
            assert (await marie.storage.stat(mf)).size == 6

            await einstein.storage.set_lock(f, "E1")
            with pytest.raises(FailedPrecondition):
                await marie.storage.set_lock(mf, "M1")
            seen = await marie.storage.get_lock(mf)
            assert seen is not None and seen.lock_id == "E1" and seen.user == einstein.gw.user.id
            with pytest.raises(Locked):
                await marie.transfer.upload(mf, fd, 6)
            with pytest.raises(PermissionDenied):  # Reva: "users of the locks are mismatching"
                await marie.storage.unlock(mf, "E1")
            with pytest.raises(PermissionDenied):
                await marie.storage.refresh_lock(mf, "E1")
            # writes check only the lock id, not who holds it (as Reva documents)
            await marie.transfer.upload(mf, fd, 6, lock_id="E1")
            await einstein.storage.unlock(f, "E1")

            await marie.storage.set_lock(mf, "M1")
            with pytest.raises(Locked):
                await einstein.transfer.upload(f, fd, 6)
            with pytest.raises(PermissionDenied):
                await einstein.storage.unlock(f, "M1")
            await marie.storage.unlock(mf, "M1")
        finally:
            await einstein.shares.remove_share(share.id)


async def test_lock_kinds_expiry_and_id_swap(einstein, marie, workdir) -> None:  # type: ignore[no-untyped-def]
    import trio

    st = einstein.storage
    f = workdir.child("kinds.txt")
    await st.touch_file(f)
    # every kind is exclusive on decomposedfs: even two SHARED locks conflict
    for kind in LockKind:
        await st.set_lock(f, f"K-{kind.value}", kind=kind)
        assert (await st.get_lock(f)).kind is kind
        with pytest.raises(FailedPrecondition):
            await st.set_lock(f, "other", kind=kind)
        await st.unlock(f, f"K-{kind.value}", kind=kind)
    # a lock without expiration stays; refresh can swap the id (existing_lock_id)
    await st.set_lock(f, "OLD")
    assert (await st.get_lock(f)).expiration is None
    await st.refresh_lock(f, "NEW", existing_lock_id="OLD")
    assert (await st.get_lock(f)).lock_id == "NEW"
    await st.unlock(f, "NEW")
    # an expired lock vanishes by itself
    await st.set_lock(f, "SHORT", expiration=time.time() + 1.0)
    with trio.fail_after(15):
        while await st.get_lock(f) is not None:
            await trio.sleep(0.1)
    await st.set_lock(f, "AFTER")  # free again
    await st.unlock(f, "AFTER")
