"""Puts a little demo content on the dev Reva: a notebook in einstein's home, and a folder that marie
shares with einstein (editor) which einstein accepts. Idempotent. Used by `make demo`.

Talks to the server only through meshfs.cs3 (the same client the mount uses).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import trio

from meshfs.cs3 import BasicCredentials, Gateway, Ref, Role, Secret, Shares, ShareState, Storage, Transfer
from meshfs.errors import AlreadyExists, MeshError

GATEWAY = os.environ.get("REVA_GATEWAY", "127.0.0.1:19000")

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": ["# Welcome to meshfs\n", "This notebook lives on Reva."],
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": ["print('hello mesh')"],
        },
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


async def put(transfer: Transfer, ref: Ref, data: bytes) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        await transfer.upload(ref, f.fileno(), len(data))


async def main() -> None:
    async with (
        Gateway(GATEWAY, BasicCredentials("einstein", Secret("relativity"))) as ein,
        Gateway(GATEWAY, BasicCredentials("marie", Secret("radioactivity"))) as marie,
    ):
        e_storage, e_transfer, e_shares = Storage(ein), Transfer(ein), Shares(ein)
        m_storage, m_transfer, m_shares = Storage(marie), Transfer(marie), Shares(marie)
        e_home = await e_storage.get_home()
        nb = Ref(path=e_home.path + "/welcome.ipynb")
        await put(e_transfer, nb, json.dumps(NOTEBOOK, indent=1).encode())
        m_home = await m_storage.get_home()
        folder = Ref(path=m_home.path + "/radium-analysis")
        try:
            await m_storage.create_container(folder)
        except AlreadyExists:
            pass
        await put(
            m_transfer,
            Ref(path=folder.path + "/results.csv"),
            b"isotope,half_life_years\nRa-226,1600\nPo-210,0.38\n",
        )
        info = await m_storage.stat(folder)
        mine = await m_shares.list_shares(info.id)
        if not any(s.grantee is not None and s.grantee.opaque_id == ein.user.id.opaque_id for s in mine):
            await m_shares.create_share(Ref.to(info.id), ein.user.id, Role.EDITOR)
        for rs in await e_shares.list_received_shares():
            if rs.resource_id == info.id and rs.state is not ShareState.ACCEPTED:
                await e_shares.accept(rs.id)
        e_transfer.close()
        m_transfer.close()


if __name__ == "__main__":
    try:
        trio.run(main)
    except MeshError as e:
        print(f"demo: {e}", file=sys.stderr)
        sys.exit(1)
