"""The messages of oned's hook bus as typed, read-only objects (part of
:mod:`onestorpool.one`, which documents them and gives them out: import them from there).
Apart because no driver reads them, and building their dataclasses would cost every
driver's start-up."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lxml import etree

from onestorpool.errors import InputError
from onestorpool.one import Vm, _id, _Node, _vm, decode_base64, parse_xml
from onestorpool.one_bodies import Host, Image, _host, _image

# -- hook bus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiParameter:
    """One ``CALL_INFO/PARAMETERS/PARAMETER`` of an API hook message. ``IN`` parameters are
    the call's arguments (position 1, the session, is always ``****``); ``OUT`` ones are the
    reply: ``true, value, 0`` or ``false, message, code, object id``."""

    position: int
    direction: str  # "IN" or "OUT"
    value: str


@dataclass(frozen=True)
class HookEvent:
    """One message of oned's hook bus.

    ``kind``: ``STATE`` (``EVENT VM 42/...`` and ``EVENT STATE VM/...`` keys alike),
    ``SERVICE`` (the VM STATE message again, keyed by its OneFlow service), ``API`` or
    ``RETRY``. ``state``/``lcm_state`` are oned's names (``VmState.ACTIVE.name`` ...).
    ``message`` is the decoded ``HOOK_MESSAGE``; for API messages it is lxml's recovered tree,
    which may be mangled by oned's unescaped strings: read ``parameters`` and ``extra``."""

    kind: str
    key: str
    object: str = ""  # VM, HOST, IMAGE, NET
    object_id: int | None = None
    state: str = ""
    lcm_state: str = ""
    service_id: int | None = None
    remote_host: str = ""
    method: str = ""
    success: bool | None = None
    parameters: tuple[ApiParameter, ...] = ()
    extra: etree._Element | None = None
    hook_id: int | None = None
    arguments: str = ""
    message: etree._Element | None = None

    def body(self, tag: str) -> etree._Element | None:
        """The object body a STATE message carries (``VM``, ``HOST``, ``IMAGE``, ``VNET``)."""
        return None if self.message is None else self.message.find(tag)

    def _body_node(self, tag: str) -> _Node:
        element = self.body(tag)
        if element is None:
            raise InputError(f"hook message {self.key.strip()!r}: no {tag} body")
        return _Node(element, f"HOOK_MESSAGE/{tag}")

    def vm(self) -> Vm:
        return _vm(self._body_node("VM"))

    def image(self) -> Image:
        return _image(self._body_node("IMAGE"))

    def host(self) -> Host:
        return _host(self._body_node("HOST"))

    def parameter(self, position: int, direction: str = "IN") -> str | None:
        """The value of an API parameter, ``None`` when the call had no such parameter."""
        for parameter in self.parameters:
            if parameter.position == position and parameter.direction == direction:
                return parameter.value
        return None


_OBJECT_RE = re.compile(r"[A-Z]+")


def _state_key(kind: str, key: str, obj: str, object_id: str, state: str,
               lcm: str) -> HookEvent | None:
    number = _id(object_id)
    if _OBJECT_RE.fullmatch(obj) is None or number is None:
        return None
    return HookEvent(kind, key, object=obj, object_id=number, state=state, lcm_state=lcm)


def parse_hook_key(key: str | bytes) -> HookEvent:
    """Keys as one_hm publishes them: ``EVENT API <method> <0|1>``,
    ``EVENT STATE <OBJ>/<STATE>/<LCM>/<id> ``, ``EVENT <OBJ> <id>/<STATE>/<LCM> ``,
    ``EVENT SERVICE <id> ``, ``RETRY`` (the LCM part is empty but for VMs)."""
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not key.isascii():  # one_hm's keys are ASCII
        raise InputError(f"hook message: unknown key {key[:80]!r}")
    words = key.split()
    event = None
    if words == ["RETRY"]:
        event = HookEvent("RETRY", key)
    elif len(words) == 4 and words[:2] == ["EVENT", "API"] and words[3] in ("0", "1"):
        event = HookEvent("API", key, method=words[2], success=words[3] == "1")
    elif len(words) == 3 and words[:2] == ["EVENT", "SERVICE"] and _id(words[2]) is not None:
        event = HookEvent("SERVICE", key, service_id=_id(words[2]))
    elif len(words) == 3 and words[:2] == ["EVENT", "STATE"] and words[2].count("/") == 3:
        obj, state, lcm, object_id = words[2].split("/")
        event = _state_key("STATE", key, obj, object_id, state, lcm)
    elif len(words) == 3 and words[0] == "EVENT" and words[2].count("/") == 2:
        object_id, state, lcm = words[2].split("/")
        event = _state_key("STATE", key, words[1], object_id, state, lcm)
    if event is None:
        raise InputError(f"hook message: unknown key {key[:80]!r}")
    return event


def parse_hook_message(key: str | bytes | Sequence[str | bytes],
                       payload: str | bytes | None = None) -> HookEvent:
    """Both ZeroMQ frames of one hook event (``key, payload``, or the list of frames)."""
    if payload is None:
        frames = [key] if isinstance(key, (str, bytes)) else list(key)
        if len(frames) != 2:
            raise InputError(f"hook message: expected 2 frames, got {len(frames)}")
        key, payload = frames
    if not isinstance(key, (str, bytes)):
        raise InputError("hook message: the key frame is not text")
    event = parse_hook_key(key)
    raw = decode_base64(payload, "hook message")  # RETRY content ends in a blank: ignored
    if event.kind == "RETRY":
        return _retry_event(event, raw)
    if event.kind == "API":
        return _api_event(event, raw)
    return _state_event(event, raw)


def _hook_root(raw: bytes, forgiving: bool = False) -> _Node:
    root = parse_xml(raw, "HOOK_MESSAGE", forgiving=forgiving)
    if root.tag != "HOOK_MESSAGE":
        raise InputError(f"hook message: expected HOOK_MESSAGE, got {root.tag}")
    return _Node(root, "HOOK_MESSAGE")


def _retry_event(event: HookEvent, raw: bytes) -> HookEvent:
    node = _hook_root(raw)
    arguments = decode_base64(node.text("ARGUMENTS"), "HOOK_MESSAGE/ARGUMENTS")
    return replace(event, hook_id=node.int("HOOK_ID"),
                   arguments=arguments.decode("utf-8", "replace"),
                   remote_host=node.opt_text("REMOTE_HOST"), message=node.element)


# oned writes SERVICE_ID (a user template attribute) and REMOTE_HOST unescaped in the header
# of a STATE message; when that breaks the XML, escaping the two header values lets the
# well-formed object body through. The lookaheads pin each to its place in the header.
_RAW_STATE_FIELDS = (rb"(<SERVICE_ID>)(.*?)(</SERVICE_ID>)(?=\s*<REMOTE_HOST)",
                     rb"(<REMOTE_HOST>)(.*?)(</REMOTE_HOST>)(?=\s*<(?:RESOURCE_ID|VM|HOST)>)")


def _escape(text: bytes) -> bytes:
    return text.replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")


def _state_root(raw: bytes) -> _Node:
    try:
        return _hook_root(raw)
    except InputError:
        repaired = raw
        for pattern in _RAW_STATE_FIELDS:
            repaired = re.sub(pattern, lambda m: m[1] + _escape(m[2]) + m[3], repaired,
                              count=1, flags=re.S)
        if repaired == raw:
            raise
        return _hook_root(repaired)


# HOOK_OBJECT is VNET in hook_message_state.xsd, NET in what oned sends and in the keys.
_HOOK_OBJECTS = {"VNET": "NET"}


def _state_event(event: HookEvent, raw: bytes) -> HookEvent:
    node = _state_root(raw)
    if node.text("HOOK_TYPE") != "STATE":
        raise InputError(f"hook message: key {event.key.strip()!r} with HOOK_TYPE "
                         f"{node.text('HOOK_TYPE')!r}")
    obj = node.text("HOOK_OBJECT")
    obj = _HOOK_OBJECTS.get(obj, obj)
    resource_id = node.int("RESOURCE_ID")
    raw_service = node.opt_text("SERVICE_ID")
    # SERVICE_ID comes from the VM's user template: a non-number is the user's, not corruption
    service_id = _id(raw_service)
    if event.kind == "STATE" and (event.object, event.object_id) != (obj, resource_id):
        raise InputError(f"hook message: key {event.key.strip()!r} but the message is about "
                         f"{obj} {resource_id}")
    if event.kind == "SERVICE" and (obj != "VM" or service_id != event.service_id):
        raise InputError(f"hook message: key {event.key.strip()!r} but the message is about "
                         f"{obj} {resource_id} of service {raw_service or 'none'}")
    return replace(event, object=obj, object_id=resource_id, state=node.text("STATE"),
                   lcm_state=node.opt_text("LCM_STATE"), service_id=service_id,
                   remote_host=node.opt_text("REMOTE_HOST"), message=node.element)


# API messages are cut along oned's fixed layout (src/hm/HookAPI.cc): the header and the
# trailer are oned's own text, string parameter values are whatever the caller sent. Plain
# pattern strings: ``re`` compiles and caches them on first use, off the drivers' start-up.
_API_HEAD = (rb"\s*(?:<\?xml[^>]*\?>\s*)?<HOOK_MESSAGE>\s*<HOOK_TYPE>API</HOOK_TYPE>"
             rb"\s*<CALL>([^<]*)</CALL>\s*<CALL_INFO>\s*<RESULT>([01])</RESULT>\s*<PARAMETERS>")
_API_PARAMETER = (rb"\s*<PARAMETER>\s*<POSITION>([0-9]{1,9})</POSITION>\s*<TYPE>(IN|OUT)</TYPE>"
                  rb"\s*(?:<VALUE>(.*?)</VALUE>|<VALUE/>)\s*</PARAMETER>")
_API_TAIL = (rb"\s*</PARAMETERS>\s*(?:<EXTRA>(.*)</EXTRA>|<EXTRA/>)?\s*</CALL_INFO>"
             rb"\s*</HOOK_MESSAGE>\s*")


def _unescape(text: str) -> str:
    for escaped, plain in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"),
                           ("&amp;", "&")):
        text = text.replace(escaped, plain)
    return text


def _api_parameters(raw: bytes, start: int, where: str) -> tuple[list[ApiParameter], int]:
    parameters = []
    parameter = re.compile(_API_PARAMETER, re.S)  # cached by re after the first call
    while (found := parameter.match(raw, start)) is not None:
        parameters.append(ApiParameter(int(found[1]), found[2].decode(),
                                       (found[3] or b"").decode("utf-8", "replace")))
        start = found.end()
    inputs = [p for p in parameters if p.direction == "IN"]
    outputs = [p for p in parameters if p.direction == "OUT"]
    # oned numbers the IN block 1..n, then the OUT block 1..m. A string parameter that
    # contains parameter markup breaks that order: refuse it rather than guess.
    if (parameters != inputs + outputs
            or [p.position for p in inputs] != list(range(1, len(inputs) + 1))
            or [p.position for p in outputs] != list(range(1, len(outputs) + 1))):
        raise InputError(f"{where}: parameters out of order (a string parameter that "
                         "contains parameter markup?)")
    if outputs and outputs[0].value == "false" and len(outputs) > 1:
        # the error message is the one value oned escapes (Request::failure_response)
        outputs[1] = replace(outputs[1], value=_unescape(outputs[1].value))
    return inputs + outputs, start


def _api_event(event: HookEvent, raw: bytes) -> HookEvent:
    where = f"hook message {event.method}"
    message = _hook_root(raw, forgiving=True)  # size and DOCTYPE checks, and the tree
    head = re.match(_API_HEAD, raw)
    if head is None:
        raise InputError(f"{where}: not an API HOOK_MESSAGE")
    call, result = head[1].decode("utf-8", "replace").strip(), head[2] == b"1"
    if (call, result) != (event.method, event.success):
        raise InputError(f"{where}: key {event.key.strip()!r} but the message is about "
                         f"{' '.join(call.split())} with RESULT {int(result)}")
    parameters, end = _api_parameters(raw, head.end(), where)
    tail = re.compile(_API_TAIL, re.S).fullmatch(raw, end)
    if tail is None:
        raise InputError(f"{where}: cannot find the end of the PARAMETERS")
    extra = None
    if tail[1] and tail[1].strip():
        extra = parse_xml(b"<EXTRA>" + tail[1] + b"</EXTRA>", "HOOK_MESSAGE/CALL_INFO/EXTRA")
    return replace(event, parameters=tuple(parameters), extra=extra, message=message.element)
