"""Request validation for the StorPool sandbox: StorPool's error type and name rules.

The rules are the official bindings' (``storpool.sptypes``): name regexes and lengths,
sizes in multiples of 512, replication 1..3, QoS limits as numbers or ``"-"``, client ids
1..4095, and the members each request type defines. The sandbox refuses what a real cluster
refuses, so a bad request fails in tests rather than in production; it also refuses members
no request type defines (a misspelt ``tempalte`` would otherwise be silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

VOLUME_RE = re.compile(r"^#?[A-Za-z0-9_\-.:]+$")
SNAPSHOT_RE = re.compile(r"^\*?[A-Za-z0-9_\-.:@]+$")
TEMPLATE_RE = re.compile(r"^[A-Za-z0-9_\-]+$")  # templates and placement groups
TAG_RE = re.compile(r"^[A-Za-z0-9_\-.:]+$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_\-.:]*$")
GLOBAL_ID_RE = re.compile(r"^[a-z0-9]+\.[a-z0-9]+\.[a-z0-9]+$")
LOCATION_ID_RE = re.compile(r"^[a-z0-9]+$")
RESERVED = ("list", "status")
NAME_LIMIT, PLACEMENT_LIMIT, LOCATION_LIMIT = 200, 128, 64
MAX_CLIENT_ID = 4095

POLICY_KEYS = ("replication", "placeAll", "placeTail", "placeHead", "iops", "bw",
               "reuseServer")
# The request members the bindings' *Desc types define: anything else is refused, so a
# misspelt field fails here instead of being silently ignored.
_POLICY = {*POLICY_KEYS, "tags"}
VOLUME_CREATE_KEYS = {*_POLICY, "name", "size", "parent", "template", "baseOn"}
VOLUME_UPDATE_KEYS = {*_POLICY, "rename", "size", "sizeAdd", "template", "shrinkOk"}
VOLUME_SNAPSHOT_KEYS = {"name", "bind", "targetDeleteDate", "deleteAfter", "tags"}
SNAPSHOT_UPDATE_KEYS = {*_POLICY, "rename", "template", "bind", "targetDeleteDate",
                        "deleteAfter"}
VOLUME_FREEZE_KEYS = {"targetDeleteDate", "deleteAfter"}
VOLUME_REASSIGN_KEYS = {"volume", "detach", "ro", "rw", "force", "allowRemoteExported",
                        "onRemoteAttached", "mcMode"}
SNAPSHOT_REASSIGN_KEYS = {"snapshot", "detach", "ro", "force"}
TEMPLATE_CREATE_KEYS = {*_POLICY, "name", "parent", "size"}
TEMPLATE_UPDATE_KEYS = {*_POLICY, "rename", "parent", "size", "propagate"}


class SpError(Exception):
    """A StorPool API error: ``name``, ``descr``, ``transient`` and the HTTP status.

    API errors travel with HTTP 200 unless a ``status`` says otherwise: the bindings and our
    client read the envelope either way; the HTTP layer uses other statuses for what never
    reached the model (401 token, 400 bad JSON, 404 unknown path, 503 injected faults).
    """

    def __init__(self, name: str, descr: str, transient: bool = False, status: int = 200):
        super().__init__(f"{name}: {descr}")
        self.name, self.descr, self.transient, self.status = name, descr, transient, status

    def envelope(self) -> dict[str, Any]:
        return {"error": {"name": self.name, "descr": self.descr,
                          "transient": self.transient}}


def not_found(kind: str, name: object) -> SpError:
    return SpError("objectDoesNotExist", f"{kind} {name} does not exist")


def exists(kind: str, name: object) -> SpError:
    return SpError("objectExists", f"{kind} {name} already exists")


def invalid(descr: str) -> SpError:
    return SpError("invalidParam", descr)


# -- request validation ----------------------------------------------------------------------


def check_object(body: Any, what: str, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """``body`` must be a JSON object with only ``allowed`` members."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise invalid(f"{what}: expected a JSON object")
    if allowed is not None:
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise invalid(f"{what}: unknown field(s) {', '.join(unknown)}")
    return body


def check_name(value: Any, what: str, pattern: re.Pattern[str] = VOLUME_RE,
               limit: int = NAME_LIMIT, reserved: Iterable[str] = RESERVED) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(f"invalid {what} {value!r}: must match {pattern.pattern}")
    if len(value) >= limit:
        raise invalid(f"{what} {value[:40]}... is too long (max {limit - 1} characters)")
    if value in reserved:
        raise invalid(f"{what} must not be one of {', '.join(reserved)}")
    return value


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise invalid(f"{what} must be at least {minimum}, got {value}")
    return value


def check_size(value: Any, what: str = "size") -> int:
    size = check_int(value, what)
    if size <= 0 or size % 512:
        raise invalid(f"invalid {what} {size}: must be a positive multiple of 512")
    return size


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{what} must be true or false, got {value!r}")
    return value


def check_tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("tags must be a JSON object of name: value")
    for key, tag in value.items():
        check_name(key, "tag name", TAG_RE, reserved=())
        if not isinstance(tag, str) or not TAG_VALUE_RE.match(tag) or len(tag) >= NAME_LIMIT:
            raise invalid(f"invalid value {tag!r} of tag {key}")
    return dict(value)


def check_policy(body: dict[str, Any]) -> dict[str, Any]:
    """The placement/QoS members present in ``body``, validated."""
    policy: dict[str, Any] = {}
    for key in POLICY_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if key == "replication":
            if check_int(value, "replication") not in (1, 2, 3):
                raise invalid(f"replication must be 1, 2 or 3, got {value}")
        elif key.startswith("place"):
            check_name(value, f"placement group ({key})", TEMPLATE_RE, PLACEMENT_LIMIT,
                       ("list",))
        elif key == "reuseServer":
            check_bool(value, key)
        elif value != "-":
            check_int(value, f"{key} limit", 0)
        policy[key] = value
    return policy


def check_client(value: Any) -> int:
    """A client id: 1..4095, as a number or (as the Bash add-on sends them) a string."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not (
            1 <= value <= MAX_CLIENT_ID):
        raise invalid(f"invalid client id {value!r}: must be 1..{MAX_CLIENT_ID}")
    return value


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text


def location_id_for(name: str) -> str:
    """A location id (``[a-z0-9]+``) derived from a cluster's name."""
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())[:24] or "sbx"
