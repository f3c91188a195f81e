"""The event record: fields, canonical encoding, hash chain link, upcasting, secret scrubbing.

A record's hash is SHA-256 over the msgpack encoding of all its fields and the previous
record's hash, so changing, removing or reordering any record breaks every later link.

Drivers import this on their hot path: keep it to msgpack, hashlib and typing (no ``re``,
no ``dataclasses``; both cost milliseconds at start-up).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

# Payload schema version written by this code; older records are upcast on read.
SCHEMA_VERSION = 1
GENESIS = b"\0" * 32  # the "previous hash" of the very first record

# A key containing one of these words (any case) has its value replaced: SP_AUTH_TOKEN,
# token, auth, Authorization, password, passwd, secret, ...
SECRET_WORDS = ("token", "auth", "passw", "secret")
REDACTED = "***"
# StorPool's Authorization header; error texts that echo a request must not carry it.
AUTH_SCHEME = "storpool v1:"


class Record(NamedTuple):
    """One event as stored. ``payload`` decodes (and upcasts) ``raw_payload`` on access, so
    scanning the log (replay, verify, filters) never pays for payloads it does not read."""

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
        return upcast(self.schema, msgpack.unpackb(self.raw_payload, raw=False))

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (hashes in hex) for export and display."""
        data = self._asdict()
        del data["raw_payload"]
        data["payload"] = self.payload
        data["prev_hash"] = self.prev_hash.hex()
        data["hash"] = self.hash.hex()
        return data


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
    """The stored form of a payload: scrubbed, then msgpack (bytes stay bytes)."""
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


# The one place old payloads are brought up to date: UPCASTERS[N] turns a schema-N payload
# into a schema-N+1 one. Records are never rewritten (the chain forbids it); they are upcast
# every time they are read.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[int, Upcaster] = {}


def upcast(schema: int, payload: dict[str, Any]) -> dict[str, Any]:
    while schema < SCHEMA_VERSION:
        payload = UPCASTERS[schema](payload)
        schema += 1
    return payload
