"""The event record: fields, canonical encoding, hash chain link, upcasting, secret scrubbing.

A record's hash is SHA-256 over the msgpack encoding of all its fields and the previous
record's hash, so changing, removing or reordering any record breaks every later link.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

import msgpack

SCHEMA_VERSION = 1
GENESIS = b"\0" * 32  # the "previous hash" of the very first record

SECRET_KEY_RE = re.compile(r"(token|auth|passw|secret)", re.IGNORECASE)
REDACTED = "***"


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


def scrub(value: Any) -> Any:
    """Replace the values of secret-looking keys, at any depth (the auth token never lands
    in the log)."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_KEY_RE.search(k) and v
                    else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def pack_payload(payload: dict[str, Any]) -> bytes:
    return msgpack.packb(scrub(payload), use_bin_type=True)


def chain_hash(seq: int, time: float, writer: str, host: str, pid: int, type_: str,
               vm: int | None, image: int | None, datastore: int | None, volume: str | None,
               snapshot: str | None, effect_key: str | None, schema: int, payload: bytes,
               prev_hash: bytes) -> bytes:
    material = msgpack.packb([seq, time, writer, host, pid, type_, vm, image, datastore,
                              volume, snapshot, effect_key, schema, payload, prev_hash],
                             use_bin_type=True)
    return hashlib.sha256(material).digest()


# Upcasters: schema version N → N+1, applied in order when an old record is read.
UPCASTERS: dict[int, Any] = {}


def upcast(schema: int, payload: dict[str, Any]) -> dict[str, Any]:
    while schema < SCHEMA_VERSION:
        payload = UPCASTERS[schema](payload)
        schema += 1
    return payload
