"""Fast unit tests (no server) of the protobuf → Resource conversion: the memoised fast path must give
exactly what a plain field-by-field conversion gives, for any permission set, metadata, owner and
parent, including when the memo tables overflow and are cleared."""

from __future__ import annotations

from types import MappingProxyType

from cs3.identity.user.v1beta1 import resources_pb2 as user_pb
from cs3.storage.provider.v1beta1 import resources_pb2 as res_pb
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfs.cs3 import Checksum, Kind, Perm, Resource, ResourceId, UserId
from meshfs.cs3 import _convert as conv
from meshfs.cs3.storage import _THREAD_CONVERT_MIN, _convert_many

FIELDS = list(conv.PERM_FIELDS)


def reference(ri: res_pb.ResourceInfo) -> Resource:
    """The obvious conversion, written without any shortcut."""
    perms = Perm.NONE
    for name, flag in conv.PERM_FIELDS.items():
        if getattr(ri.permission_set, name):
            perms |= flag
    rid = ResourceId(ri.id.storage_id, ri.id.space_id, ri.id.opaque_id)
    return Resource(
        id=rid,
        parent_id=ResourceId(ri.parent_id.storage_id, ri.parent_id.space_id, ri.parent_id.opaque_id)
        if ri.parent_id.opaque_id
        else None,
        name=ri.name or ri.path.rstrip("/").rpartition("/")[2],
        path=ri.path,
        kind={res_pb.RESOURCE_TYPE_FILE: Kind.FILE, res_pb.RESOURCE_TYPE_CONTAINER: Kind.DIR}[ri.type],
        size=ri.size,
        mtime_ns=ri.mtime.seconds * 10**9 + ri.mtime.nanos,
        etag=ri.etag,
        mime=ri.mime_type,
        permissions=perms,
        lock=None,
        metadata=MappingProxyType(dict(ri.arbitrary_metadata.metadata)),
        checksum=Checksum("sha1", ri.checksum.sum) if ri.checksum.sum else None,
        owner=UserId(ri.owner.idp, ri.owner.opaque_id, "USER_TYPE_PRIMARY") if ri.owner.opaque_id else None,
        space_id=rid.space_id,
    )


ids = st.text(alphabet="abc-0123", min_size=1, max_size=6)


@st.composite
def infos(draw: st.DrawFn) -> res_pb.ResourceInfo:
    ri = res_pb.ResourceInfo(
        type=draw(st.sampled_from([res_pb.RESOURCE_TYPE_FILE, res_pb.RESOURCE_TYPE_CONTAINER])),
        id=res_pb.ResourceId(storage_id=draw(ids), space_id=draw(ids), opaque_id=draw(ids)),
        etag=draw(st.text(max_size=8)),
        mime_type=draw(st.sampled_from(["", "text/plain"])),
        size=draw(st.integers(0, 2**40)),
        path=draw(st.sampled_from(["", "a", "./d/b/"])),
        name=draw(st.sampled_from(["", "x", "ü ñ"])),
        permission_set=res_pb.ResourcePermissions(
            **{f: True for f in draw(st.sets(st.sampled_from(FIELDS)))}
        ),
    )
    ri.mtime.seconds = draw(st.integers(0, 2**33))
    ri.mtime.nanos = draw(st.integers(0, 999_999_999))
    if draw(st.booleans()):
        ri.parent_id.CopyFrom(res_pb.ResourceId(storage_id=draw(ids), space_id="s", opaque_id=draw(ids)))
    if draw(st.booleans()):
        ri.owner.CopyFrom(user_pb.UserId(idp=draw(ids), opaque_id=draw(ids), type=user_pb.USER_TYPE_PRIMARY))
    md = draw(st.dictionaries(ids, st.text(max_size=5), max_size=3))
    if md or draw(st.booleans()):  # Reva sends an empty arbitrary_metadata message too
        ri.arbitrary_metadata.SetInParent()
        ri.arbitrary_metadata.metadata.update(md)
    if draw(st.booleans()):
        ri.checksum.CopyFrom(res_pb.ResourceChecksum(type=res_pb.RESOURCE_CHECKSUM_TYPE_SHA1, sum=draw(ids)))
    return ri


@settings(max_examples=300, deadline=None)
@given(st.lists(infos(), min_size=1, max_size=4))
def test_fast_conversion_equals_the_plain_one(batch: list[res_pb.ResourceInfo]) -> None:
    for ri in batch:
        got, want = conv.resource_from_pb(ri), reference(ri)
        assert got == want
        assert dict(got.metadata) == dict(want.metadata)


def test_every_permission_set_of_two_fields_and_memo_overflow() -> None:
    """More distinct sets than the memo holds: each still maps to its own flags."""
    for a in FIELDS:
        for b in FIELDS:
            for _ in range(2):  # second time from the memo (unless it was just cleared)
                p = res_pb.ResourcePermissions(**{a: True, b: True})
                assert conv.perms_from_pb(p) == conv.PERM_FIELDS[a] | conv.PERM_FIELDS[b]
    assert conv.perms_from_pb(res_pb.ResourcePermissions()) is Perm.NONE


def test_repeated_owner_and_parent_are_shared_values() -> None:
    ri = res_pb.ResourceInfo(
        id=res_pb.ResourceId(storage_id="st", space_id="sp", opaque_id="o1"),
        parent_id=res_pb.ResourceId(storage_id="st", space_id="sp", opaque_id="par"),
        owner=user_pb.UserId(idp="idp", opaque_id="u", type=user_pb.USER_TYPE_LIGHTWEIGHT),
    )
    one, two = conv.resource_from_pb(ri), conv.resource_from_pb(ri)
    assert one.owner == two.owner == UserId("idp", "u", "USER_TYPE_LIGHTWEIGHT")
    assert one.parent_id == two.parent_id == ResourceId("st", "sp", "par")
    assert one.metadata == {} and one.checksum is None and one.lock is None


async def test_long_listings_convert_in_a_thread_with_the_same_result() -> None:
    infos_ = [
        res_pb.ResourceInfo(
            type=res_pb.RESOURCE_TYPE_FILE,
            id=res_pb.ResourceId(storage_id="st", space_id="sp", opaque_id=f"o{i}"),
            path=f"f{i}",
        )
        for i in range(_THREAD_CONVERT_MIN + 5)
    ]
    got = await _convert_many(infos_)
    assert [r.name for r in got] == [f"f{i}" for i in range(len(infos_))]
    assert got == [conv.resource_from_pb(ri) for ri in infos_]
    short = await _convert_many(infos_[:3])
    assert short == got[:3]


def test_resource_id_text_is_made_once_and_ignored_by_equality() -> None:
    a, b = ResourceId("st", "sp", "op"), ResourceId("st", "sp", "op")
    assert str(a) == "st$sp!op" == str(a)  # the second time from the kept text
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1  # b has no text made yet
    assert str(ResourceId.parse(str(a))) == str(a) and ResourceId.parse(str(a)) == a
    assert repr(a) == "ResourceId(storage_id='st', space_id='sp', opaque_id='op')"
