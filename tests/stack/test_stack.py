"""Tests of the dev Reva stack itself (dev/reva/revactl): it answers as dev/reva/NOTES.md says.

Owns the server-side facts meshfs relies on. Talks to Reva directly through grpc/cs3apis/urllib3 because it
tests the server, not meshfs; imports nothing from meshfs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pytest
import urllib3
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.identity.group.v1beta1 import group_api_pb2 as ga
from cs3.rpc.v1beta1 import code_pb2
from cs3.sharing.collaboration.v1beta1 import collaboration_api_pb2 as col
from cs3.sharing.collaboration.v1beta1 import resources_pb2 as colr
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as spr
from cs3.storage.provider.v1beta1 import spaces_api_pb2 as spaces
from cs3.types.v1beta1 import types_pb2 as types
from google.protobuf import field_mask_pb2

if TYPE_CHECKING:  # conftest is not importable as a module under every pytest invocation
    from tests.conftest import DemoUser, RevaStack

pytestmark = pytest.mark.reva

DEADLINE_S = 30.0
VIEWER = spr.ResourcePermissions(
    stat=True,
    get_path=True,
    get_quota=True,
    list_container=True,
    list_recycle=True,
    initiate_file_download=True,
)


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in demo user: gateway stub plus the token metadata."""

    stub: gw_grpc.GatewayAPIStub
    token: str
    user: gw.AuthenticateResponse

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-access-token", self.token)]

    def home(self) -> str:
        res = self.stub.GetHome(sp.GetHomeRequest(), metadata=self.md, timeout=DEADLINE_S)
        assert res.status.code == code_pb2.CODE_OK, res.status
        return str(res.path)


@pytest.fixture(scope="module")
def channel(reva: RevaStack) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(reva.gateway)
    try:
        grpc.channel_ready_future(ch).result(timeout=DEADLINE_S)
        yield ch
    finally:
        ch.close()


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=DEADLINE_S), retries=False)
    try:
        yield pool
    finally:
        pool.clear()


def authenticate(channel: grpc.Channel, username: str, password: str) -> gw.AuthenticateResponse:
    stub = gw_grpc.GatewayAPIStub(channel)
    req = gw.AuthenticateRequest(type="basic", client_id=username, client_secret=password)
    res: gw.AuthenticateResponse = stub.Authenticate(req, timeout=DEADLINE_S)
    return res


def login(channel: grpc.Channel, user: DemoUser) -> Session:
    res = authenticate(channel, user.username, user.password)
    assert res.status.code == code_pb2.CODE_OK, res.status
    return Session(gw_grpc.GatewayAPIStub(channel), res.token, res)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def upload(s: Session, http: urllib3.PoolManager, path: str, body: bytes) -> urllib3.BaseHTTPResponse:
    opaque = types.Opaque(
        map={"Upload-Length": types.OpaqueEntry(decoder="plain", value=str(len(body)).encode())}
    )
    res = s.stub.InitiateFileUpload(
        sp.InitiateFileUploadRequest(ref=spr.Reference(path=path), opaque=opaque),
        metadata=s.md,
        timeout=DEADLINE_S,
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    protocols = {p.protocol: p for p in res.protocols}
    assert {"simple", "tus"} <= set(protocols), protocols.keys()
    simple = protocols["simple"]
    return http.request(
        "PUT",
        simple.upload_endpoint,
        body=body,
        headers={"x-access-token": s.token, "X-Reva-Transfer": simple.token},
    )


def download(
    s: Session, http: urllib3.PoolManager, ref: spr.Reference, headers: dict[str, str] | None = None
) -> urllib3.BaseHTTPResponse:
    res = s.stub.InitiateFileDownload(
        sp.InitiateFileDownloadRequest(ref=ref), metadata=s.md, timeout=DEADLINE_S
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    assert res.protocols, "no download protocol offered"
    proto = res.protocols[0]
    return http.request(
        "GET",
        proto.download_endpoint,
        headers={"x-access-token": s.token, "X-Reva-Transfer": proto.token, **(headers or {})},
    )


def share_with(owner: Session, info: spr.ResourceInfo, grantee: Session) -> colr.Share:
    grant = colr.ShareGrant(
        grantee=spr.Grantee(type=spr.GRANTEE_TYPE_USER, user_id=grantee.user.user.id),
        permissions=colr.SharePermissions(permissions=VIEWER),
    )
    res = owner.stub.CreateShare(
        col.CreateShareRequest(resource_info=info, grant=grant), metadata=owner.md, timeout=DEADLINE_S
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    return res.share


def stat(s: Session, ref: spr.Reference) -> sp.StatResponse:
    res: sp.StatResponse = s.stub.Stat(sp.StatRequest(ref=ref), metadata=s.md, timeout=DEADLINE_S)
    return res


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["einstein", "marie", "richard"])
def test_each_demo_user_authenticates(reva: RevaStack, channel: grpc.Channel, username: str) -> None:
    user = reva.user(username)
    res = authenticate(channel, user.username, user.password)
    assert res.status.code == code_pb2.CODE_OK, res.status
    assert res.token
    assert res.user.username == username
    assert res.user.display_name == user.display_name
    assert res.user.mail == user.mail
    assert res.user.id.type == 1  # USER_TYPE_PRIMARY
    assert res.user.id.idp == "http://localhost:20080"


def test_wrong_password_is_refused(reva: RevaStack, channel: grpc.Channel) -> None:
    res = authenticate(channel, "einstein", "not-" + reva.einstein.password)
    assert res.status.code == code_pb2.CODE_PERMISSION_DENIED, res.status
    assert not res.token


def test_unknown_user_is_refused(channel: grpc.Channel) -> None:
    res = authenticate(channel, unique("nobody"), "x")
    assert res.status.code == code_pb2.CODE_PERMISSION_DENIED, res.status
    assert not res.token


def test_get_home_is_users_opaque_id(reva: RevaStack, channel: grpc.Channel) -> None:
    for user in reva.users:
        s = login(channel, user)
        assert s.home() == f"/users/{s.user.user.id.opaque_id}"


def test_upload_download_round_trip(
    reva: RevaStack, channel: grpc.Channel, http: urllib3.PoolManager
) -> None:
    s = login(channel, reva.einstein)
    path = f"{s.home()}/{unique('roundtrip')}.bin"
    body = os.urandom(1024 * 1024 + 7)
    put = upload(s, http, path, body)
    assert put.status == 200, (put.status, put.data)
    assert put.headers.get("ETag", "").startswith('"')
    assert put.headers.get("OC-FileId")

    st = stat(s, spr.Reference(path=path))
    assert st.status.code == code_pb2.CODE_OK, st.status
    assert st.info.size == len(body)
    assert st.info.type == spr.RESOURCE_TYPE_FILE

    get = download(s, http, spr.Reference(path=path))
    assert get.status == 200, get.status
    assert hashlib.sha256(get.data).hexdigest() == hashlib.sha256(body).hexdigest()

    ranged = download(s, http, spr.Reference(path=path), {"Range": "bytes=10-19"})
    assert ranged.status == 206, ranged.status
    assert ranged.data == body[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(body)}"


def test_webdav_propfind_of_einsteins_files(reva: RevaStack, http: urllib3.PoolManager) -> None:
    u = reva.einstein
    auth = base64.b64encode(f"{u.username}:{u.password}".encode()).decode()
    res = http.request("PROPFIND", reva.webdav_url, headers={"Authorization": f"Basic {auth}", "Depth": "1"})
    assert res.status == 207, (res.status, res.data[:300])
    assert b"<d:href>/remote.php/webdav/</d:href>" in res.data

    anon = http.request("PROPFIND", reva.webdav_url, headers={"Depth": "0"})
    assert anon.status == 401, anon.status
    bad = base64.b64encode(f"{u.username}:wrong".encode()).decode()
    refused = http.request(
        "PROPFIND", reva.webdav_url, headers={"Authorization": f"Basic {bad}", "Depth": "0"}
    )
    assert refused.status == 401, refused.status


def test_project_space_lists_for_member(reva: RevaStack, channel: grpc.Channel) -> None:
    einstein = login(channel, reva.einstein)
    marie = login(channel, reva.marie)
    name = unique("project")
    created = einstein.stub.CreateStorageSpace(
        spaces.CreateStorageSpaceRequest(type="project", name=name), metadata=einstein.md, timeout=DEADLINE_S
    )
    assert created.status.code == code_pb2.CODE_OK, created.status
    space = created.storage_space
    assert space.space_type == "project"

    def marie_sees() -> list[spaces.StorageSpace]:
        res = marie.stub.ListStorageSpaces(
            spaces.ListStorageSpacesRequest(), metadata=marie.md, timeout=DEADLINE_S
        )
        assert res.status.code == code_pb2.CODE_OK, res.status
        return [s for s in res.storage_spaces if s.root.opaque_id == space.root.opaque_id]

    assert marie_sees() == []
    root = stat(einstein, spr.Reference(resource_id=space.root, path="."))
    assert root.status.code == code_pb2.CODE_OK, root.status
    share_with(einstein, root.info, marie)
    seen = marie_sees()
    assert len(seen) == 1
    assert seen[0].space_type == "project"
    assert seen[0].name == name
    # marie can now read the space root
    assert stat(marie, spr.Reference(resource_id=space.root, path=".")).status.code == code_pb2.CODE_OK


def test_share_from_marie_is_pending_for_einstein(reva: RevaStack, channel: grpc.Channel) -> None:
    marie = login(channel, reva.marie)
    einstein = login(channel, reva.einstein)
    folder = f"{marie.home()}/{unique('shared')}"
    mk = marie.stub.CreateContainer(
        sp.CreateContainerRequest(ref=spr.Reference(path=folder)), metadata=marie.md, timeout=DEADLINE_S
    )
    assert mk.status.code == code_pb2.CODE_OK, mk.status
    info = stat(marie, spr.Reference(path=folder)).info
    share = share_with(marie, info, einstein)

    res = einstein.stub.ListReceivedShares(
        col.ListReceivedSharesRequest(), metadata=einstein.md, timeout=DEADLINE_S
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    mine = [r for r in res.shares if r.share.id.opaque_id == share.id.opaque_id]
    assert len(mine) == 1
    assert mine[0].state == colr.SHARE_STATE_PENDING
    assert mine[0].share.resource_id.opaque_id == info.id.opaque_id

    # accept, then read it by resource id (what meshfs's shared-with-me does)
    upd = einstein.stub.UpdateReceivedShare(
        col.UpdateReceivedShareRequest(
            share=colr.ReceivedShare(share=colr.Share(id=share.id), state=colr.SHARE_STATE_ACCEPTED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=einstein.md,
        timeout=DEADLINE_S,
    )
    assert upd.status.code == code_pb2.CODE_OK, upd.status
    assert upd.share.state == colr.SHARE_STATE_ACCEPTED
    got = stat(einstein, spr.Reference(resource_id=info.id, path="."))
    assert got.status.code == code_pb2.CODE_OK, got.status
    assert got.info.type == spr.RESOURCE_TYPE_CONTAINER


def test_memory_share_driver_leaves_the_shares_jail_empty(reva: RevaStack, channel: grpc.Channel) -> None:
    """Pins NOTES.md: with usershareprovider `memory`, accepted shares do not appear under Shares/."""
    marie = login(channel, reva.marie)
    einstein = login(channel, reva.einstein)
    folder = f"{marie.home()}/{unique('jail')}"
    mk = marie.stub.CreateContainer(
        sp.CreateContainerRequest(ref=spr.Reference(path=folder)), metadata=marie.md, timeout=DEADLINE_S
    )
    assert mk.status.code == code_pb2.CODE_OK, mk.status
    share = share_with(marie, stat(marie, spr.Reference(path=folder)).info, einstein)
    upd = einstein.stub.UpdateReceivedShare(
        col.UpdateReceivedShareRequest(
            share=colr.ReceivedShare(share=colr.Share(id=share.id), state=colr.SHARE_STATE_ACCEPTED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=einstein.md,
        timeout=DEADLINE_S,
    )
    assert upd.status.code == code_pb2.CODE_OK, upd.status
    mount = upd.share.mount_point.path
    assert mount
    listing = einstein.stub.ListContainer(
        sp.ListContainerRequest(ref=spr.Reference(path=f"{einstein.home()}/Shares")),
        metadata=einstein.md,
        timeout=DEADLINE_S,
    )
    assert listing.status.code == code_pb2.CODE_OK, listing.status
    assert mount not in [i.path for i in listing.infos]
    under = stat(einstein, spr.Reference(path=f"{einstein.home()}/Shares/{mount}"))
    assert under.status.code == code_pb2.CODE_NOT_FOUND, under.status


def test_single_stack_answers_ocm_lists_empty(reva: RevaStack, channel: grpc.Channel) -> None:
    """The main stack runs the OCM share provider (domain localhost, no peers): OCM lists answer OK, empty."""
    s = login(channel, reva.richard)
    received = s.stub.ListReceivedOCMShares(
        ocm.ListReceivedOCMSharesRequest(), metadata=s.md, timeout=DEADLINE_S
    )
    assert received.status.code == code_pb2.CODE_OK, received.status
    assert list(received.shares) == []
    sent = s.stub.ListOCMShares(ocm.ListOCMSharesRequest(), metadata=s.md, timeout=DEADLINE_S)
    assert sent.status.code == code_pb2.CODE_OK, sent.status


def test_groups_resolve_with_member_ids(reva: RevaStack, channel: grpc.Channel) -> None:
    """groups.json members are plain UserIds (a nested {"id": …} would silently decode to empty ids)."""
    s = login(channel, reva.einstein)
    assert set(s.user.user.groups) == {"sailing-lovers", "violin-haters", "physics-lovers"}
    query = ga.Filter(type=ga.Filter.TYPE_QUERY, query="physics")
    found = s.stub.FindGroups(ga.FindGroupsRequest(filters=[query]), metadata=s.md, timeout=DEADLINE_S)
    assert found.status.code == code_pb2.CODE_OK, found.status
    assert [g.group_name for g in found.groups] == ["physics-lovers"]
    members = found.groups[0].members
    assert len(members) == 3
    assert all(m.opaque_id and m.idp == s.user.user.id.idp for m in members)
    assert s.user.user.id.opaque_id in [m.opaque_id for m in members]


def test_simple_put_is_not_checked_against_upload_length(
    reva: RevaStack, channel: grpc.Channel, http: urllib3.PoolManager
) -> None:
    """Pins a Reva hazard (NOTES.md): the body of a simple PUT must be exactly Upload-Length bytes.

    Longer bodies are cut to Upload-Length; shorter ones leave a file whose size says Upload-Length but
    whose content is shorter (downloads break off). Both PUTs answer 200.
    """
    s = login(channel, reva.richard)
    path = f"{s.home()}/{unique('length')}.txt"

    def put(declared: int, body: bytes) -> int:
        length = types.OpaqueEntry(decoder="plain", value=str(declared).encode())
        res = s.stub.InitiateFileUpload(
            sp.InitiateFileUploadRequest(
                ref=spr.Reference(path=path), opaque=types.Opaque(map={"Upload-Length": length})
            ),
            metadata=s.md,
            timeout=DEADLINE_S,
        )
        assert res.status.code == code_pb2.CODE_OK, res.status
        simple = {p.protocol: p for p in res.protocols}["simple"]
        headers = {"x-access-token": s.token, "X-Reva-Transfer": simple.token}
        return http.request("PUT", simple.upload_endpoint, body=body, headers=headers).status

    assert put(3, b"LONGER BODY") == 200
    assert download(s, http, spr.Reference(path=path)).data == b"LON"

    assert put(11, b"HELLO") == 200
    assert stat(s, spr.Reference(path=path)).info.size == 11
    with pytest.raises(urllib3.exceptions.ProtocolError):
        download(s, http, spr.Reference(path=path))  # Content-Length 11, 5 bytes, then EOF
