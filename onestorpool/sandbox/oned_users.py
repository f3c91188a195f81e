"""Users and groups of the oned sandbox: what every oned has from its bootstrap, users 0
``oneadmin`` (the session's user) and 1 ``serveradmin``, groups 0 ``oneadmin`` and 1
``users`` (release-6.10.5 ``src/um/UserPool.cc``, ``src/group/GroupPool.cc``), read
through ``one.user.info``, ``one.userpool.info``, ``one.group.info`` and
``one.grouppool.info`` (``User::to_xml_extended``, ``Group::to_xml_extended``: quotas empty,
no quota is emulated). ``one.user.info(-1)`` is the calling user."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_objects import NO_EXISTS, OneFailure

QUOTAS = "<DATASTORE_QUOTA/><NETWORK_QUOTA/><VM_QUOTA/><IMAGE_QUOTA/>"


class UserPool:
    """Users 0-1 and groups 0-1, read only."""

    def __init__(self, session: str):
        user, _, password = session.partition(":")
        # (id, name, password hash, auth driver); oneadmin's password is stored hashed
        self.users = [(0, user, hashlib.sha256(password.encode()).hexdigest(), "core"),
                      (1, "serveradmin", hashlib.sha256(b"serveradmin").hexdigest(),
                       "server_cipher")]
        self.groups = [(0, "oneadmin", [0, 1]), (1, "users", [])]

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"one.user.info": self.user_info, "one.userpool.info": self.userpool_info,
                "one.group.info": self.group_info, "one.grouppool.info": self.grouppool_info}

    @staticmethod
    def _user(user: tuple[int, str, str, str], extended: bool) -> str:
        uid, name, password, driver = user
        quotas = f"{QUOTAS}<DEFAULT_USER_QUOTAS>{QUOTAS}</DEFAULT_USER_QUOTAS>" \
            if extended else ""
        return (f"<USER><ID>{uid}</ID><GID>0</GID><GROUPS><ID>0</ID></GROUPS>"
                f"<GNAME>oneadmin</GNAME><NAME>{name}</NAME><PASSWORD>{password}</PASSWORD>"
                f"<AUTH_DRIVER>{driver}</AUTH_DRIVER><ENABLED>1</ENABLED>"
                f"{X.template_xml({'TOKEN_PASSWORD': password[:40]})}{quotas}</USER>")

    @staticmethod
    def _group(group: tuple[int, str, list[int]], extended: bool) -> str:
        gid, name, users = group
        ids = "".join(f"<ID>{u}</ID>" for u in users)
        quotas = f"{QUOTAS}<DEFAULT_GROUP_QUOTAS>{QUOTAS}</DEFAULT_GROUP_QUOTAS>" \
            if extended else ""
        return (f"<GROUP><ID>{gid}</ID><NAME>{name}</NAME><TEMPLATE/>"
                f"<USERS>{ids}</USERS><ADMINS/>{quotas}</GROUP>")

    def user_info(self, user_id: int, decrypt: bool = False) -> str:
        user_id = 0 if user_id == -1 else user_id
        user = next((u for u in self.users if u[0] == user_id), None)
        if user is None:
            raise OneFailure(NO_EXISTS, f"[one.user.info] Error getting user [{user_id}].",
                             user_id)
        return self._user(user, extended=True)

    def userpool_info(self) -> str:
        quotas = "".join(f"<QUOTAS><ID>{u[0]}</ID>{QUOTAS}</QUOTAS>" for u in self.users)
        return (f"<USER_POOL>{''.join(self._user(u, False) for u in self.users)}{quotas}"
                f"<DEFAULT_USER_QUOTAS>{QUOTAS}</DEFAULT_USER_QUOTAS></USER_POOL>")

    def group_info(self, group_id: int, decrypt: bool = False) -> str:
        group_id = 0 if group_id == -1 else group_id
        group = next((g for g in self.groups if g[0] == group_id), None)
        if group is None:
            raise OneFailure(NO_EXISTS, f"[one.group.info] Error getting group "
                                        f"[{group_id}].", group_id)
        return self._group(group, extended=True)

    def grouppool_info(self) -> str:
        quotas = "".join(f"<QUOTAS><ID>{g[0]}</ID>{QUOTAS}</QUOTAS>" for g in self.groups)
        return (f"<GROUP_POOL>{''.join(self._group(g, False) for g in self.groups)}{quotas}"
                f"<DEFAULT_GROUP_QUOTAS>{QUOTAS}</DEFAULT_GROUP_QUOTAS></GROUP_POOL>")
