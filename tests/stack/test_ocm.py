"""Tests of the dev OCM pair (`revactl up --ocm`): a federated share from cernbox.local reaches cesnet.local.

Owns the server-side facts of OCM that meshfs's OCM received shares rely on. Talks to Reva directly
through grpc/cs3apis/urllib3 (it tests the server, not meshfs); imports nothing from meshfs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
import urllib3
from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
from cs3.identity.user.v1beta1 import resources_pb2 as userr
from cs3.ocm.invite.v1beta1 import invite_api_pb2 as inv
from cs3.ocm.provider.v1beta1 import provider_api_pb2 as prov
from cs3.rpc.v1beta1 import code_pb2
from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm
from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocmr
from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
from cs3.storage.provider.v1beta1 import resources_pb2 as spr
from cs3.types.v1beta1 import types_pb2 as types
from google.protobuf import field_mask_pb2

if TYPE_CHECKING:  # conftest is not importable as a module under every pytest invocation
    from tests.conftest import DemoUser, RevaOcmPair, RevaStack

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


class Client:
    """One demo user logged in on one instance."""

    def __init__(self, channel: grpc.Channel, user: DemoUser) -> None:
        self.stub = gw_grpc.GatewayAPIStub(channel)
        req = gw.AuthenticateRequest(type="basic", client_id=user.username, client_secret=user.password)
        res = self.stub.Authenticate(req, timeout=DEADLINE_S)
        assert res.status.code == code_pb2.CODE_OK, res.status
        self.token: str = res.token
        self.user_id: userr.UserId = res.user.id

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-access-token", self.token)]


@pytest.fixture
def channels(reva_ocm: RevaOcmPair) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    a = grpc.insecure_channel(reva_ocm.cernbox.gateway)
    b = grpc.insecure_channel(reva_ocm.cesnet.gateway)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _provider(client: Client, domain: str) -> prov.GetInfoByDomainResponse:
    res = client.stub.GetInfoByDomain(
        prov.GetInfoByDomainRequest(domain=domain), metadata=client.md, timeout=DEADLINE_S
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    assert res.provider_info.domain == domain
    return res


def _upload(client: Client, path: str, body: bytes, http: urllib3.PoolManager) -> None:
    length = types.OpaqueEntry(decoder="plain", value=str(len(body)).encode())
    res = client.stub.InitiateFileUpload(
        sp.InitiateFileUploadRequest(
            ref=spr.Reference(path=path), opaque=types.Opaque(map={"Upload-Length": length})
        ),
        metadata=client.md,
        timeout=DEADLINE_S,
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    simple = {p.protocol: p for p in res.protocols}["simple"]
    put = http.request(
        "PUT",
        simple.upload_endpoint,
        body=body,
        headers={"x-access-token": client.token, "X-Reva-Transfer": simple.token},
    )
    assert put.status == 200, put.status


def _received(client: Client) -> list[ocmr.ReceivedShare]:
    res = client.stub.ListReceivedOCMShares(
        ocm.ListReceivedOCMSharesRequest(), metadata=client.md, timeout=DEADLINE_S
    )
    assert res.status.code == code_pb2.CODE_OK, res.status
    return list(res.shares)


def test_invite_forward_share_list_and_read(
    reva_ocm: RevaOcmPair, channels: tuple[grpc.Channel, grpc.Channel]
) -> None:
    a_stack: RevaStack = reva_ocm.cernbox
    b_stack: RevaStack = reva_ocm.cesnet
    einstein = Client(channels[0], a_stack.einstein)  # sender, on cernbox.local
    marie = Client(channels[1], b_stack.marie)  # recipient, on cesnet.local
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=DEADLINE_S), retries=False)

    # 1. einstein (A) makes an invite; marie's instance (B) forwards her acceptance to A
    token = einstein.stub.GenerateInviteToken(
        inv.GenerateInviteTokenRequest(description="meshfs stack test"),
        metadata=einstein.md,
        timeout=DEADLINE_S,
    )
    assert token.status.code == code_pb2.CODE_OK, token.status
    assert token.invite_token.token
    a_info = _provider(marie, a_stack.domain)
    fwd = marie.stub.ForwardInvite(
        inv.ForwardInviteRequest(
            invite_token=token.invite_token, origin_system_provider=a_info.provider_info
        ),
        metadata=marie.md,
        timeout=DEADLINE_S,
    )
    # a second run finds marie already accepted on A (the invite store is persistent)
    assert fwd.status.code in (code_pb2.CODE_OK, code_pb2.CODE_ALREADY_EXISTS), fwd.status
    if fwd.status.code == code_pb2.CODE_OK:
        assert fwd.user_id.type == userr.USER_TYPE_FEDERATED
        assert fwd.user_id.idp == a_stack.domain
        assert fwd.user_id.opaque_id == f"{einstein.user_id.opaque_id}@{einstein.user_id.idp}"

    # 2. A knows marie as a federated user of B
    accepted = einstein.stub.FindAcceptedUsers(
        inv.FindAcceptedUsersRequest(), metadata=einstein.md, timeout=DEADLINE_S
    )
    assert accepted.status.code == code_pb2.CODE_OK, accepted.status
    want = f"{marie.user_id.opaque_id}@{marie.user_id.idp}"
    # other tests of a run on the same pair may have accepted invites of other users: pick marie's
    fed = [u.id for u in accepted.accepted_users if u.id.idp == b_stack.domain and u.id.opaque_id == want]
    assert len(fed) == 1, accepted.accepted_users
    marie_fed = fed[0]
    assert marie_fed.type == userr.USER_TYPE_FEDERATED
    assert marie_fed.opaque_id == f"{marie.user_id.opaque_id}@{marie.user_id.idp}"

    # 3. einstein shares a fresh file with marie@B
    home = einstein.stub.GetHome(sp.GetHomeRequest(), metadata=einstein.md, timeout=DEADLINE_S).path
    name = f"ocm-{uuid.uuid4().hex[:10]}.txt"
    body = b"hello federation " + name.encode()
    _upload(einstein, f"{home}/{name}", body, http)
    info = einstein.stub.Stat(
        sp.StatRequest(ref=spr.Reference(path=f"{home}/{name}")), metadata=einstein.md
    ).info
    b_info = _provider(einstein, b_stack.domain)
    created = einstein.stub.CreateOCMShare(
        ocm.CreateOCMShareRequest(
            resource_id=info.id,
            grantee=spr.Grantee(type=spr.GRANTEE_TYPE_USER, user_id=marie_fed),
            recipient_mesh_provider=b_info.provider_info,
            access_methods=[ocmr.AccessMethod(webdav_options=ocmr.WebDAVAccessMethod(permissions=VIEWER))],
        ),
        metadata=einstein.md,
        timeout=DEADLINE_S,
    )
    assert created.status.code == code_pb2.CODE_OK, created.status
    sent_id = created.share.id.opaque_id
    assert sent_id

    # 4. B lists it for marie, pending, with a WebDAV protocol pointing at A's /dav/ocm/<share id>
    mine = [s for s in _received(marie) if s.name == name]
    assert len(mine) == 1
    got = mine[0]
    assert got.state == ocmr.SHARE_STATE_PENDING
    uris = [p.webdav_options.uri for p in got.protocols if p.HasField("webdav_options")]
    assert uris == [f"{a_stack.http_url}/dav/ocm/{sent_id}"]
    assert all(s.name != name for s in _received(einstein))  # the sender does not receive it

    # 5. marie accepts and reads the content through B's /ocm/<received share id>
    got.state = ocmr.SHARE_STATE_ACCEPTED
    upd = marie.stub.UpdateReceivedOCMShare(
        ocm.UpdateReceivedOCMShareRequest(share=got, update_mask=field_mask_pb2.FieldMask(paths=["state"])),
        metadata=marie.md,
        timeout=DEADLINE_S,
    )
    assert upd.status.code == code_pb2.CODE_OK, upd.status
    assert [s.state for s in _received(marie) if s.name == name] == [ocmr.SHARE_STATE_ACCEPTED]
    ref = spr.Reference(path=f"/ocm/{got.id.opaque_id}")
    st = marie.stub.Stat(sp.StatRequest(ref=ref), metadata=marie.md, timeout=DEADLINE_S)
    assert st.status.code == code_pb2.CODE_OK, st.status
    assert st.info.name == name
    assert st.info.size == len(body)
    dl = marie.stub.InitiateFileDownload(
        sp.InitiateFileDownloadRequest(ref=ref), metadata=marie.md, timeout=DEADLINE_S
    )
    assert dl.status.code == code_pb2.CODE_OK, dl.status
    proto = dl.protocols[0]
    res = http.request(
        "GET",
        proto.download_endpoint,
        headers={"x-access-token": marie.token, "X-Reva-Transfer": proto.token},
    )
    assert res.status == 200, res.status
    assert res.data == body

    # 6. A lists it among einstein's sent OCM shares
    sent = einstein.stub.ListOCMShares(ocm.ListOCMSharesRequest(), metadata=einstein.md, timeout=DEADLINE_S)
    assert sent.status.code == code_pb2.CODE_OK, sent.status
    assert sent_id in [s.id.opaque_id for s in sent.shares]
