"""The hook bus as oned and one_hm make it: ``HOOK_MESSAGE`` documents built like
``HookAPI``/``HookState*::format_message`` and published like ``one_hm.rb``: one ZeroMQ PUB
socket, two frames per event (key, then the single-line base64 of the message), the same
payload once per key.

Where the XSDs in ``share/doc/xsd`` disagree with the code, this follows the code: ``NET``
not ``VNET``, ``REMOTE_HOST`` before ``RESOURCE_ID`` for hosts, ``SERVICE_ID`` (5.12+), and
API parameters inserted without XML escaping.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_objects import (
    HOST_STATES,
    IMAGE_STATES,
    LCM_STATES,
    VM_STATES,
    Host,
    Image,
    Version,
    Vm,
)

# HookAPI::unsupported_calls (5.12 ... 7.x): read-only calls publish no API event.
# one.system.version/config and one.zone.raftstatus are not in the list, so they do.
SILENT_CALLS = frozenset("""
    one.vm.info one.vmpool.info one.vmpool.infoextended one.template.info
    one.templatepool.info one.host.info one.hostpool.info one.group.info one.grouppool.info
    one.groupquota.info one.vn.info one.vnpool.info one.user.info one.userpool.info
    one.userquota.info one.datastore.info one.datastorepool.info one.image.info
    one.imagepool.info one.acl.info one.vntemplate.info one.vntemplatepool.info
    one.cluster.info one.clusterpool.info one.document.info one.documentpool.info
    one.zone.info one.zonepool.info one.secgroup.info one.secgrouppool.info one.vmgroup.info
    one.vmgrouppool.info one.vdc.info one.vdcpool.info one.vrouter.info one.vrouterpool.info
    one.market.info one.marketpool.info one.marketapp.info one.marketapppool.info
    one.hook.info one.hookpool.info one.hooklog.info""".split())
# 5.10.0 and 5.10.1 had only the hook calls in the list (release-5.10.0 src/hm/HookAPI.cc:24):
# every other call, info included, was published; the sandbox's "5.10" is 5.10.0.
SILENT_CALLS_5_10 = frozenset({"one.hook.info", "one.hookpool.info"})


def publishes_api_event(method: str, version: Version) -> bool:
    silent = SILENT_CALLS_5_10 if version < (5, 12) else SILENT_CALLS
    return method not in silent


def render_in(value: Any) -> str:
    """``ParamList::get_value_as_string``: ints and doubles printed, booleans ``1``/``0``,
    strings **raw** (no escaping: a template with ``<`` makes the message malformed XML),
    anything else (arrays, structs) empty."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return ""


def render_out(value: Any) -> str:
    """``Request::success_response``: the return value, strings raw, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def api_message(method: str, params: list[Any], reply: list[Any], extra: str = "") -> str:
    """``HookAPI::format_message``: IN parameters (session hidden), the OUT parameters of
    the reply (success: ``true``, value, 0; failure: ``false``, escaped message, code,
    object id) and EXTRA (the object body for allocate/delete)."""
    parts = []
    for position, value in enumerate(params, start=1):
        shown = "****" if position == 1 else render_in(value)
        parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>IN</TYPE>"
                     f"<VALUE>{shown}</VALUE></PARAMETER>")
    if reply[0]:
        outs = ["true", render_out(reply[1]), "0"]
    else:
        outs = ["false", escape(str(reply[1])), str(reply[2]), str(reply[3])]
    for position, value in enumerate(outs, start=1):
        parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>OUT</TYPE>"
                     f"<VALUE>{value}</VALUE></PARAMETER>")
    return (f"<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>{method}</CALL><CALL_INFO>"
            f"<RESULT>{int(bool(reply[0]))}</RESULT><PARAMETERS>{''.join(parts)}"
            f"</PARAMETERS><EXTRA>{extra}</EXTRA></CALL_INFO></HOOK_MESSAGE>")


def one_hm_keys(message: str, version: Version) -> list[str]:
    """``HookManagerDriver#key`` (``src/hm_mad/one_hm.rb``): the keys are read back from the
    message with ``//`` XPaths, so the first ``STATE``/``LCM_STATE``/``RESOURCE_ID`` of the
    document count, and from 5.12 on the first ``SERVICE_ID`` *anywhere* (the VM's, or one
    in an image's or host's template) adds ``SERVICE <id>``. API: ``API <call> <result>``."""
    root = X.parse_recovering(message)
    kind = root.findtext(".//HOOK_TYPE") or ""
    if kind == "API":
        return [f"EVENT API {root.findtext('.//CALL')} {root.findtext('.//CALL_INFO/RESULT')}"]
    if kind != "STATE":
        return ["EVENT "]
    obj = root.findtext(".//HOOK_OBJECT") or ""
    state = root.findtext(".//STATE") or ""
    lcm = (root.findtext(".//LCM_STATE") or "") if obj == "VM" else ""
    resource = root.findtext(".//RESOURCE_ID") or ""
    keys = [f"EVENT {obj} {resource}/{state}/{lcm} ",
            f"EVENT STATE {obj}/{state}/{lcm}/{resource} "]
    service = root.find(".//SERVICE_ID") if version >= (5, 12) else None
    if service is not None:
        keys.append(f"EVENT SERVICE {service.text or ''} ")
    return keys


def vm_state_message(vm: Vm, version: Version) -> tuple[list[str], str]:
    """``HookStateVM::format_message`` (SERVICE_ID from 5.12: ``src/hm/HookStateVM.cc`` at
    release-5.12.0) and one_hm's keys for it."""
    state, lcm = VM_STATES[vm.state], LCM_STATES[vm.lcm_state]
    service = str(vm.user_template.get("SERVICE_ID", "")) if version >= (5, 12) else ""
    service_xml = f"<SERVICE_ID>{service}</SERVICE_ID>" if service else ""
    remote = (f"<REMOTE_HOST>{vm.last.hostname}</REMOTE_HOST>" if vm.history
              else "<REMOTE_HOST/>")
    message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>VM</HOOK_OBJECT>"
               f"<STATE>{state}</STATE><LCM_STATE>{lcm}</LCM_STATE>"
               f"<RESOURCE_ID>{vm.id}</RESOURCE_ID>{service_xml}{remote}"
               f"{X.vm_body(vm, version=version)}</HOOK_MESSAGE>")
    return one_hm_keys(message, version), message


def host_state_message(host: Host, version: Version) -> tuple[list[str], str]:
    """``HookStateHost::format_message``: REMOTE_HOST before RESOURCE_ID."""
    name = HOST_STATES.get(host.state, str(host.state))
    message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>HOST</HOOK_OBJECT>"
               f"<STATE>{name}</STATE><REMOTE_HOST>{host.name}</REMOTE_HOST>"
               f"<RESOURCE_ID>{host.id}</RESOURCE_ID>{X.host_body(host, version)}"
               "</HOOK_MESSAGE>")
    return one_hm_keys(message, version), message


def image_state_message(image: Image, version: Version) -> tuple[list[str], str]:
    """``HookStateImage::format_message`` (6.0+): ``Image::state_to_str`` names USED_PERS
    ``USED`` and LOCKED_USED_PERS ``LOCKED_USED``."""
    name = IMAGE_STATES[image.state]
    name = {"USED_PERS": "USED", "LOCKED_USED_PERS": "LOCKED_USED"}.get(name, name)
    message = (f"<HOOK_MESSAGE><HOOK_TYPE>STATE</HOOK_TYPE><HOOK_OBJECT>IMAGE</HOOK_OBJECT>"
               f"<STATE>{name}</STATE><RESOURCE_ID>{image.id}</RESOURCE_ID>"
               f"{X.image_body(image, version)}</HOOK_MESSAGE>")
    return one_hm_keys(message, version), message


class HookBus:
    """one_hm's PUB socket (``-p``/``-b``): bound to ``endpoint``, or to a free loopback
    port when none is given. ``sent`` keeps every (key, payload) for tests and the demo."""

    def __init__(self, endpoint: str | None = None):
        import zmq

        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint or "tcp://127.0.0.1:*")
        # the endpoint actually bound (a "*" or 0 port becomes the one the kernel chose)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.lock = threading.Lock()
        self.sent: list[tuple[str, str]] = []
        # what else is subscribed inside the sandbox (the hook execution manager):
        # called with (key, payload) of every frame pair, after it was sent
        self.listeners: list[Callable[[str, str], None]] = []

    def publish(self, keys: list[str], message: str, suffix: str = "") -> None:
        """One event: the base64 of ``message`` (EVP_EncodeBlock: one line, padded) under
        every key, in order, under one lock as one_hm's ``@publisher_lock``."""
        payload = base64.b64encode(message.encode()).decode() + suffix
        with self.lock:
            for key in keys:
                self.socket.send_multipart([key.encode(), payload.encode()])
                self.sent.append((key, payload))
            listeners = list(self.listeners)
        for key in keys:
            for listener in listeners:
                listener(key, payload)

    def publish_retry(self, hook_id: int, arguments: str, remote_host: str = "") -> None:
        """What ``onehook retry`` makes one_hm send: key ``RETRY``, content the base64
        message and one blank (``"#{command} #{params}"`` with empty params)."""
        host = f"<REMOTE_HOST>{remote_host}</REMOTE_HOST>" if remote_host else ""
        encoded = base64.b64encode(arguments.encode()).decode()
        self.publish(["RETRY"], f"<HOOK_MESSAGE><ARGUMENTS>{encoded}</ARGUMENTS>"
                                f"<HOOK_ID>{hook_id}</HOOK_ID>{host}</HOOK_MESSAGE>", " ")

    def close(self) -> None:
        self.socket.close()
