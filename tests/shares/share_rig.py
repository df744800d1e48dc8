"""The share tests' rig: several users mounted at once through the real CLI on the dev Reva.

Owns: `Mounts` (mount a demo user with `meshfs mount`, run `meshfs share|users` as that user, wait
for conditions with a bound) and its cleanup: every mount is unmounted in a finally (umount, then a
lazy detach + SIGKILL of the daemon when that fails), so no mount or daemon outlives a test.
The daemons load tests/shares/hooked.py (the share hooks, until the lead's files carry them).
Must not import meshfs.vfs (the daemon owns the filesystem); meshfs.cs3 only for test set-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import (
    REPO,
    cli_env,
    kill_registered,
    lazy_unmount,
    mounted,
    one_line,
    run_meshfs,
    wait_for,
    write_private,
)

__all__ = [
    "REPO",
    "Mounts",
    "UserMount",
    "create_project_space",
    "mounted",
    "ocm_share_folder",
    "one_line",
    "wait_for",
]

HERE = Path(__file__).resolve().parent
CLI_TIMEOUT = 60.0


@dataclass
class UserMount:
    username: str
    mountpoint: Path
    cache_dir: Path
    password_file: Path
    env: dict[str, str]

    def meshfs(
        self, *args: str, timeout: float = CLI_TIMEOUT, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_meshfs(*args, env=self.env, timeout=timeout, cwd=cwd)

    def share(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """`meshfs share ARGS --mount MP`; with ok=True fail the test unless it exits 0."""
        action, rest = args[0], args[1:]
        proc = self.meshfs("share", action, *rest, "--mount", os.fspath(self.mountpoint))
        if ok:
            assert proc.returncode == 0, f"meshfs share {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def share_json(self, *args: str) -> Any:
        return json.loads(self.share(*args, "--json").stdout)

    @property
    def root(self) -> Path:
        return self.mountpoint


@dataclass
class Mounts:
    root: Path
    gateway: str
    runtime_dir: Path
    passwords: dict[str, str]
    options: list[str] = field(default_factory=list)
    mounts: list[UserMount] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return cli_env(self.runtime_dir, filesystem="hooked:HookedFilesystem", pythonpath=[HERE])

    def mount(
        self, username: str, *, gateway: str | None = None, tag: str = "", env: dict[str, str] | None = None
    ) -> UserMount:
        name = f"{username}{tag}"
        base = self.root / name
        base.mkdir()
        (base / "mnt").mkdir()
        pw = write_private(base / "password", self.passwords[username])
        m = UserMount(username, base / "mnt", base / "cache", pw, {**self.env(), **(env or {})})
        source = f"cs3://{username}@{gateway or self.gateway}"
        opts = ["-o", "tls=false", "-o", "dir_poll_interval=1"]
        if os.environ.get("SHARES_DEBUG"):  # debug log in CACHE_DIR/daemon.log
            opts.append("-v")
        for o in self.options:
            opts += ["-o", o]
        self.mounts.append(m)
        proc = m.meshfs(
            "mount", source, os.fspath(m.mountpoint), "--password-file", os.fspath(pw),
            "--cache-dir", os.fspath(m.cache_dir), *opts,
        )  # fmt: skip
        assert proc.returncode == 0, f"mount {source}: {proc.stderr.strip()}"
        assert mounted(m.mountpoint), f"{m.mountpoint} is not mounted after `meshfs mount`"
        return m

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for m in reversed(self.mounts):
            if not mounted(m.mountpoint):
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc = m.meshfs("umount", os.fspath(m.mountpoint), "--timeout", "30", timeout=45)
                if proc.returncode != 0:
                    problems.append(f"umount {m.mountpoint}: {proc.stderr.strip()}")
            if mounted(m.mountpoint):
                problems.append(f"{m.mountpoint} still mounted")
                lazy_unmount(m.mountpoint)
        return problems + kill_registered(self.runtime_dir, report_stale=True)


def create_project_space(gateway: str, owner: str, password: str, name: str) -> Any:
    """CreateStorageSpace(type "project") as `owner` (meshfs has no call for it): the space root's
    meshfs ResourceId. Raw CS3 here on purpose: this is test set-up, not the code under test."""
    import grpc
    from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
    from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
    from cs3.rpc.v1beta1 import code_pb2
    from cs3.storage.provider.v1beta1 import spaces_api_pb2 as spaces

    from meshfs.cs3 import ResourceId

    with grpc.insecure_channel(gateway) as ch:
        stub = gw_grpc.GatewayAPIStub(ch)
        auth = stub.Authenticate(
            gw.AuthenticateRequest(type="basic", client_id=owner, client_secret=password), timeout=30
        )
        assert auth.status.code == code_pb2.CODE_OK, auth.status
        md = [("x-access-token", auth.token)]
        res = stub.CreateStorageSpace(
            spaces.CreateStorageSpaceRequest(type="project", name=name), metadata=md, timeout=30
        )
        assert res.status.code == code_pb2.CODE_OK, res.status
        root = res.storage_space.root
        return ResourceId(root.storage_id, root.space_id, root.opaque_id)


def ocm_share_folder(
    sender: Any, sender_user: Any, recipient: Any, recipient_user: Any, files: dict[str, bytes]
) -> str:
    """Federated set-up with raw CS3 (meshfs has no invite/OCM-create calls): `sender_user` on the
    stack `sender` invites, `recipient_user` on `recipient` accepts the invite, then the sender
    creates a new folder holding `files` and shares it (viewer) with the recipient over OCM.
    Returns the folder name (= the received share's name)."""
    import uuid

    import grpc
    import urllib3
    from cs3.gateway.v1beta1 import gateway_api_pb2 as gw
    from cs3.gateway.v1beta1 import gateway_api_pb2_grpc as gw_grpc
    from cs3.ocm.invite.v1beta1 import invite_api_pb2 as inv
    from cs3.ocm.provider.v1beta1 import provider_api_pb2 as prov
    from cs3.rpc.v1beta1 import code_pb2
    from cs3.sharing.ocm.v1beta1 import ocm_api_pb2 as ocm
    from cs3.sharing.ocm.v1beta1 import resources_pb2 as ocmr
    from cs3.storage.provider.v1beta1 import provider_api_pb2 as sp
    from cs3.storage.provider.v1beta1 import resources_pb2 as spr
    from cs3.types.v1beta1 import types_pb2 as types

    ok = code_pb2.CODE_OK

    def login(ch: Any, user: Any) -> tuple[Any, Any, list[tuple[str, str]]]:
        stub = gw_grpc.GatewayAPIStub(ch)
        req = gw.AuthenticateRequest(type="basic", client_id=user.username, client_secret=user.password)
        res = stub.Authenticate(req, timeout=30)
        assert res.status.code == ok, res.status
        return stub, res, [("x-access-token", res.token)]

    def info(stub: Any, md: Any, domain: str) -> Any:
        res = stub.GetInfoByDomain(prov.GetInfoByDomainRequest(domain=domain), metadata=md, timeout=30)
        assert res.status.code == ok, res.status
        return res.provider_info

    with grpc.insecure_channel(sender.gateway) as a, grpc.insecure_channel(recipient.gateway) as b:
        s, s_auth, s_md = login(a, sender_user)
        r, r_auth, r_md = login(b, recipient_user)
        tok = s.GenerateInviteToken(
            inv.GenerateInviteTokenRequest(description="meshfs"), metadata=s_md, timeout=30
        )
        assert tok.status.code == ok, tok.status
        fwd = r.ForwardInvite(
            inv.ForwardInviteRequest(
                invite_token=tok.invite_token, origin_system_provider=info(r, r_md, sender.domain)
            ),
            metadata=r_md,
            timeout=30,
        )
        assert fwd.status.code in (ok, code_pb2.CODE_ALREADY_EXISTS), fwd.status
        accepted = s.FindAcceptedUsers(inv.FindAcceptedUsersRequest(), metadata=s_md, timeout=30)
        fed = [
            u.id
            for u in accepted.accepted_users
            if u.id.idp == recipient.domain and u.id.opaque_id.startswith(r_auth.user.id.opaque_id + "@")
        ]
        assert len(fed) == 1, accepted.accepted_users
        home = s.GetHome(sp.GetHomeRequest(), metadata=s_md, timeout=30).path
        name = f"fed-{uuid.uuid4().hex[:8]}"
        folder = spr.Reference(path=f"{home}/{name}")
        mk = s.CreateContainer(sp.CreateContainerRequest(ref=folder), metadata=s_md, timeout=30)
        assert mk.status.code == ok, mk.status
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=30.0), retries=False)
        for fname, body in files.items():
            length = types.OpaqueEntry(decoder="plain", value=str(len(body)).encode())
            up = s.InitiateFileUpload(
                sp.InitiateFileUploadRequest(
                    ref=spr.Reference(path=f"{home}/{name}/{fname}"),
                    opaque=types.Opaque(map={"Upload-Length": length}),
                ),
                metadata=s_md,
                timeout=30,
            )
            assert up.status.code == ok, up.status
            simple = {p.protocol: p for p in up.protocols}["simple"]
            put = http.request(
                "PUT", simple.upload_endpoint, body=body,
                headers={"x-access-token": s_auth.token, "X-Reva-Transfer": simple.token},
            )  # fmt: skip
            assert put.status == 200, put.status
        st = s.Stat(sp.StatRequest(ref=folder), metadata=s_md, timeout=30)
        assert st.status.code == ok, st.status
        viewer = spr.ResourcePermissions(
            stat=True, get_path=True, get_quota=True, list_container=True, list_recycle=True,
            initiate_file_download=True,
        )  # fmt: skip
        created = s.CreateOCMShare(
            ocm.CreateOCMShareRequest(
                resource_id=st.info.id,
                grantee=spr.Grantee(type=spr.GRANTEE_TYPE_USER, user_id=fed[0]),
                recipient_mesh_provider=info(s, s_md, recipient.domain),
                access_methods=[
                    ocmr.AccessMethod(webdav_options=ocmr.WebDAVAccessMethod(permissions=viewer))
                ],
            ),
            metadata=s_md,
            timeout=30,
        )
        assert created.status.code == ok, created.status
        return name
