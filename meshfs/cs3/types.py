"""Plain values the CS3 client layer hands out: resource ids, references, resources, locks, shares...

Owns: the frozen slots dataclasses and enums that callers of meshfs/cs3/ see.
Must not import: grpc, cs3apis, urllib3 (protobuf messages never appear here), nor vfs/, fuse/, cache/.
Conversions from/to protobuf live in meshfs/cs3/_convert.py.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Secret:
    """A password or token. Its repr/str never show the value; call `reveal()` at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def from_file(cls, path: str) -> Secret:
        """Read a secret from a file (first line, surrounding whitespace stripped)."""
        with open(path, encoding="utf-8") as f:
            return cls(f.readline().strip())


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """Username + password: `Authenticate(type="basic")`."""

    username: str
    password: Secret


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """An OIDC/Reva token: `Authenticate(type="bearer")` (or used as is when `exchange=False`)."""

    token: Secret
    exchange: bool = True


Credentials = BasicCredentials | BearerCredentials


class CredentialSource(Protocol):
    """Credentials that can change while mounted: a rotated token file, a token command (meshfs/auth.py).

    `generation` grows whenever the source learns by itself of newer credentials (its watcher saw the
    token file change); the gateway then logs in again before its next call. `credentials(stale)`
    returns what to log in with now; `stale` is the secret (password or input token) of the last login
    when that login was refused or nears its expiry: the source then tries harder (re-reads its file,
    runs its token command) and returns the same secret when it has nothing newer. Raises
    Unauthenticated (one line, no secret in it) when it has no usable credentials at all.
    """

    @property
    def generation(self) -> int: ...

    async def credentials(self, stale: Secret | None = None) -> Credentials: ...


@dataclass(frozen=True, slots=True)
class ResourceId:
    storage_id: str
    space_id: str
    opaque_id: str
    # str() is the key of inode and cache tables, asked for per entry of every listing: kept once made
    _text: str = field(default="", init=False, repr=False, compare=False, hash=False)

    def __str__(self) -> str:
        # the form Reva prints and accepts in WebDAV URLs: storage$space!opaque
        text = self._text
        if not text:
            text = f"{self.storage_id}${self.space_id}!{self.opaque_id}"
            object.__setattr__(self, "_text", text)
        return text

    @classmethod
    def parse(cls, text: str) -> ResourceId:
        """Inverse of str(): "storage$space!opaque" (the "!opaque" part defaults to the space id)."""
        storage, _, rest = text.partition("$")
        space, _, opaque = rest.partition("!")
        if not storage or not space:
            raise ValueError(f"not a resource id (want storage$space!opaque): {text!r}")
        return cls(storage, space, opaque or space)


@dataclass(frozen=True, slots=True)
class Ref:
    """A CS3 reference: an absolute path, or a resource id with a path relative to it ("." = itself)."""

    resource_id: ResourceId | None = None
    path: str = ""

    def __post_init__(self) -> None:
        if self.resource_id is None:
            if not self.path.startswith("/"):
                raise ValueError(f"a reference without resource id needs an absolute path: {self.path!r}")
        elif not self.path:
            object.__setattr__(self, "path", ".")
        elif not self.path.startswith("."):
            object.__setattr__(self, "path", "./" + self.path.lstrip("/"))

    @classmethod
    def to(cls, resource_id: ResourceId) -> Ref:
        return cls(resource_id, ".")

    def child(self, name: str) -> Ref:
        """The reference of an entry named `name` inside this container."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a file name: {name!r}")
        base = self.path.rstrip("/")
        return Ref(self.resource_id, f"{base}/{name}" if base else f"/{name}")

    def __str__(self) -> str:
        if self.resource_id is None:
            return self.path
        return f"{self.resource_id}:{self.path}"


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    REFERENCE = "reference"
    OTHER = "other"


class Perm(enum.Flag):
    """What the current user may do on a resource (CS3 ResourcePermissions, reduced)."""

    NONE = 0
    STAT = enum.auto()
    GET_PATH = enum.auto()
    GET_QUOTA = enum.auto()
    LIST = enum.auto()  # list_container
    DOWNLOAD = enum.auto()  # initiate_file_download
    UPLOAD = enum.auto()  # initiate_file_upload
    CREATE_CONTAINER = enum.auto()
    DELETE = enum.auto()
    MOVE = enum.auto()
    LIST_RECYCLE = enum.auto()
    RESTORE_RECYCLE_ITEM = enum.auto()
    PURGE_RECYCLE = enum.auto()
    LIST_VERSIONS = enum.auto()
    RESTORE_VERSION = enum.auto()
    ADD_GRANT = enum.auto()
    LIST_GRANTS = enum.auto()
    UPDATE_GRANT = enum.auto()
    REMOVE_GRANT = enum.auto()
    DENY_GRANT = enum.auto()


class LockKind(enum.Enum):
    SHARED = "shared"
    WRITE = "write"
    EXCL = "exclusive"


@dataclass(frozen=True, slots=True)
class UserId:
    idp: str
    opaque_id: str
    type: str = "USER_TYPE_PRIMARY"


@dataclass(frozen=True, slots=True)
class User:
    id: UserId
    username: str
    display_name: str = ""
    mail: str = ""

    @property
    def idp(self) -> str:
        return self.id.idp


@dataclass(frozen=True, slots=True)
class Lock:
    """A CS3 whole-file lock. `expiration` is a unix time in seconds (None = no expiry)."""

    lock_id: str
    kind: LockKind = LockKind.WRITE
    user: UserId | None = None
    app_name: str = ""
    expiration: float | None = None


@dataclass(frozen=True, slots=True)
class Checksum:
    type: str  # "sha1", "md5", "adler32", ...
    value: str


@dataclass(frozen=True, slots=True)
class Resource:
    """Everything Stat/ListContainer tell about one resource."""

    id: ResourceId
    parent_id: ResourceId | None
    name: str
    path: str  # as the server reports it (relative to the space root for decomposedfs): informative
    kind: Kind
    size: int
    mtime_ns: int
    etag: str  # with the quotes the server uses; compare as opaque strings
    mime: str = ""
    permissions: Perm = Perm.NONE
    lock: Lock | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    checksum: Checksum | None = None
    owner: UserId | None = None
    space_id: str = ""
    target: str = ""  # symlink / reference target

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def ref(self) -> Ref:
        return Ref.to(self.id)


@dataclass(frozen=True, slots=True)
class Quota:
    total: int  # bytes; 0 = no limit reported
    used: int


@dataclass(frozen=True, slots=True)
class Space:
    id: str
    root: ResourceId
    name: str
    kind: str  # "personal", "project", "grant", "mountpoint", ...
    owner: UserId | None = None
    mtime_ns: int = 0
    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class RecycleItem:
    key: str
    path: str  # original path, as reported
    kind: Kind
    size: int
    deletion_time_ns: int


class Role(enum.Enum):
    VIEWER = "viewer"
    EDITOR = "editor"


class ShareState(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Share:
    """A share created by the current user (ListShares/CreateShare)."""

    id: str
    resource_id: ResourceId
    grantee: UserId | None  # None for group grantees (group id in grantee_group)
    role: Role | None  # None when the permission set matches no meshfs role
    permissions: Perm
    owner: UserId | None
    creator: UserId | None
    ctime_ns: int = 0
    mtime_ns: int = 0
    grantee_group: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedShare:
    """A share granted to the current user (ListReceivedShares)."""

    id: str
    resource_id: ResourceId
    state: ShareState
    mount_point: str  # suggested name (path of ReceivedShare.mount_point), may be ""
    sharer: UserId | None  # the owner of the shared resource
    creator: UserId | None
    role: Role | None
    permissions: Perm
    mtime_ns: int = 0
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class OcmReceivedShare:
    """A federated (OCM) share granted to the current user by another site."""

    id: str
    name: str
    state: ShareState
    owner: UserId | None
    creator: UserId | None
    resource_type: Kind
    remote_share_id: str = ""
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class UploadResult:
    etag: str  # may be "" when the server did not say (callers then Stat)
    file_id: ResourceId | None


@dataclass(frozen=True, slots=True)
class DownloadTicket:
    """Where and with which transfer token to GET one file. Reusable for many ranged reads; after
    `expires_at` (or when the data gateway refuses the token) read_range asks for a new one itself
    when `ref` is known, but callers that read a lot should keep the renewed ticket
    (Transfer.fresh_ticket) to save the InitiateFileDownload round trip."""

    url: str
    token: Secret
    expires_at: float  # trio clock time after which a new ticket must be asked for
    ref: Ref | None = None
    lock_id: str | None = None


@dataclass(frozen=True, slots=True)
class TusSession:
    """A resumable upload in progress. Serialize with to_json() (the journal keeps it, file 0600).

    `token` is the data-gateway transfer token of the upload (not the user's access token); the
    user token is supplied fresh by the Gateway when the upload resumes.
    """

    url: str
    token: Secret
    length: int
    offset: int = 0
    ref: str = ""  # informative: the reference string the upload was initiated for
    if_match: str = ""  # the etag precondition of the upload (the server checks it again at the end)

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "token": self.token.reveal(),
                "length": self.length,
                "offset": self.offset,
                "ref": self.ref,
                "if_match": self.if_match,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> TusSession:
        try:
            d: Any = json.loads(text)
            return cls(
                str(d["url"]),
                Secret(str(d["token"])),
                int(d["length"]),
                int(d.get("offset", 0)),
                str(d.get("ref", "")),
                str(d.get("if_match", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a tus session record: {e}") from None
