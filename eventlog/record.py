"""The event record: fields, canonical encoding, hash chain link, secret scrubbing.

A record's hash is SHA-256 over the msgpack encoding of all its fields and the previous
record's hash, so changing, removing or reordering any record breaks every later link.

Drivers import this on their hot path: keep it to msgpack, hashlib and typing (no ``re``,
no ``dataclasses``; both cost milliseconds at start-up).
"""

from __future__ import annotations

import binascii
import hashlib
import math
from typing import Any, NamedTuple

import msgpack

# The payload schema of an event whose type does not say otherwise; each type versions its
# payload and upcasts older ones (onestorpool.eventlog.events).
SCHEMA_VERSION = 1
GENESIS = b"\0" * 32  # the "previous hash" of the very first record

# A key containing one of these words (any case) has its value replaced: SP_AUTH_TOKEN,
# token, auth, Authorization, password, passwd, secret, ...
SECRET_WORDS = ("token", "auth", "passw", "secret")
REDACTED = "***"
# StorPool's Authorization header; error texts that echo a request must not carry it.
AUTH_SCHEME = "storpool v1:"


class Record(NamedTuple):
    """One event as stored. ``payload`` decodes ``raw_payload`` on access, so scanning the
    log (replay, verify, filters) never pays for payloads it does not read; the typed view
    (upcast to its type's current schema) is :func:`onestorpool.eventlog.events.decode`."""

    seq: int
    time: float
    writer: str
    host: str
    pid: int
    type: str
    vm: int | None
    image: int | None
    datastore: int | None
    volume: str | None
    snapshot: str | None
    effect_key: str | None
    schema: int
    raw_payload: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def payload(self) -> dict[str, Any]:
        # strict_map_key=False: records written before payloads were checked stay readable.
        return msgpack.unpackb(self.raw_payload, raw=False, strict_map_key=False)

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict (hashes in hex, bytes as ``{"$bytes": base64}``) for export
        and display; :func:`from_json_value` turns its payload back into the original."""
        data = self._asdict()
        del data["raw_payload"]
        data["payload"] = to_json_value(self.payload)
        data["prev_hash"] = self.prev_hash.hex()
        data["hash"] = self.hash.hex()
        return data


# What a payload may hold: a dict with string keys of None, bool, int (msgpack's range),
# finite float, str, bytes, list (a tuple is stored as a list) and such dicts. JSON shows
# bytes as {"$bytes": base64}, so that key is reserved.
BYTES_KEY = "$bytes"
INT_RANGE = (-(2**63), 2**64 - 1)


class PayloadError(ValueError):
    """A payload holds something the log does not store."""


def check_payload(payload: object) -> None:
    """Raise :class:`PayloadError` naming the first value a payload may not hold."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload: a dict is needed, not {type(payload).__name__}")
    _check(payload, "payload")


def _check(value: object, where: str) -> None:
    if value is None or isinstance(value, (bool, bytes)):
        return
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise PayloadError(f"{where}: a string that is not valid Unicode") from None
    elif isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise PayloadError(f"{where}: integer {value} out of the range -2**63..2**64-1")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{where}: {value} (only finite numbers)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key == BYTES_KEY:
                raise PayloadError(f"{where}: key {key!r} (keys are strings, not "
                                   f"{BYTES_KEY!r})")
            _check(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
    else:
        raise PayloadError(f"{where}: {type(value).__name__} is not storable (None, bool, "
                           "int, float, str, bytes, list or dict)")


def to_json_value(value: Any) -> Any:
    """``value`` for strict JSON: bytes as ``{"$bytes": base64}``. Non-string keys and
    non-finite numbers, which only records older than the payload check hold, become
    strings."""
    if isinstance(value, bytes):
        return {BYTES_KEY: binascii.b2a_base64(value, newline=False).decode()}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): to_json_value(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def from_json_value(value: Any) -> Any:
    """The inverse of :func:`to_json_value` for a payload that passed the check."""
    if isinstance(value, dict):
        if list(value) == [BYTES_KEY]:
            return binascii.a2b_base64(value[BYTES_KEY].encode())
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def scrub(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys replaced, at any depth,
    and StorPool ``Authorization`` header values cut out of strings."""
    if isinstance(value, dict):
        return {k: (REDACTED if v and is_secret_key(k) else scrub(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, str) and AUTH_SCHEME in value.lower():
        return _scrub_auth_header(value)
    return value


def _scrub_auth_header(text: str) -> str:
    out, rest = [], text
    while (at := rest.lower().find(AUTH_SCHEME)) >= 0:
        start = at + len(AUTH_SCHEME)
        out.append(rest[:start] + REDACTED)
        end = start
        while end < len(rest) and not rest[end].isspace() and rest[end] not in "\"',;}":
            end += 1
        rest = rest[end:]
    return "".join(out) + rest


def pack_payload(payload: dict[str, Any]) -> bytes:
    """The stored form of a payload: checked, scrubbed, then msgpack (bytes stay bytes)."""
    check_payload(payload)
    return msgpack.packb(scrub(payload), use_bin_type=True)


def chain_hash(seq: int, time: float, writer: str, host: str, pid: int, type_: str,
               vm: int | None, image: int | None, datastore: int | None, volume: str | None,
               snapshot: str | None, effect_key: str | None, schema: int, payload: bytes,
               prev_hash: bytes) -> bytes:
    """The record's hash: its fields in column order, then the previous record's hash."""
    material = msgpack.packb([seq, time, writer, host, pid, type_, vm, image, datastore,
                              volume, snapshot, effect_key, schema, payload, prev_hash],
                             use_bin_type=True)
    return hashlib.sha256(material).digest()
