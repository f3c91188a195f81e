"""Talking to oned over XML-RPC: endpoint and credentials found the way OpenNebula's tools
find them, a lightweight call path for drivers, and pyone for the subscriber and admin tools.

Resolution (``src/oca/ruby/opennebula/lib/client.rb``), in one place for both paths:

* endpoint: ``$ONE_XMLRPC``, else ``ONE_XMLRPC`` of ``addon-storpoolrc`` (as the Bash
  add-on's rc exported it), else ``$HOME/.one/one_endpoint``, else oneadmin's
  ``/var/lib/one/.one/one_endpoint``, else ``http://localhost:2633/RPC2``;
* credentials: the file named by ``$ONE_AUTH``, else ``$HOME/.one/one_auth``, else
  ``/var/lib/one/.one/one_auth``; its first line is the session, ``user:password``.

Public API:

``endpoint() -> str``, ``session() -> str``
    the resolution above.
``one_call(method, *params, retry=None, timeout=30.0, idempotent=None) -> Any``
    standard library only (drivers must not import pyone): the session goes first, the value
    of ``[true, value, 0]`` comes back (the raw XML string for ``*.info``).
``vm_info(id) -> one.Vm``, ``image_info``, ``datastore_info``, ``host_info``
    ``one_call`` of ``one.<object>.info`` parsed by :mod:`onestorpool.one`.
``server(retry=None, timeout=30.0)``
    a ``pyone.OneServer`` for the same endpoint and session (``srv.vm.info(42)``), its calls
    bounded by ``timeout`` and retried like ``one_call``.
:class:`OneError`, :class:`OneTransportError`
    oned's answer was an error (``code``: :data:`NO_EXISTS`...), or oned was not reached.

Calls are tried ``ONE_CALL_RETRIES`` times (rc, default 3) unless the caller passes its own
policy. Retries use the add-on's one policy (:class:`onestorpool.retry.RetryPolicy`: tenacity,
jittered exponential backoff, bounded attempts and deadline, injectable ``sleep``) and happen
on transport errors only, never on an answer of oned's (authentication, authorization, not
found...). A request that never left (connection refused, connect timeout, name lookup) is
always retried; one that was sent but got no answer (reset, read timeout, HTTP 502/503/504 from
a proxy) only when the call is read-only (``*.info``, ``system.version``...) or the caller says
``idempotent=True``: sending ``one.image.allocate`` twice would make two images. Every call
uses a fresh connection, so a failure is either "not sent" or "sent", never a stale keep-alive.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onestorpool.errors import AddonError
from onestorpool.retry import RetryPolicy

if TYPE_CHECKING:
    from onestorpool.config import Config
    from onestorpool.one import Datastore, Host, Image, Vm

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
ONEADMIN_HOME = "/var/lib/one"
DEFAULT_TIMEOUT = 30.0

# oned's error codes (include/Request.h)
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000
REPLICATION = 0x10000


class OneError(AddonError):
    """oned answered with an error (authentication, authorization, not found, ...)."""

    transient = False

    def __init__(self, method: str, message: str, code: int | None = None):
        # oned's messages already start with "[one.vm.info] ": say the method once
        message = message.removeprefix(f"[{method}]").strip()
        super().__init__(f"oned {method}: {message}")
        self.method, self.code = method, code


class OneTransportError(AddonError):
    """oned could not be reached, or did not answer; ``transient`` says whether the call may
    be sent again."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient


# -- endpoint and credentials -----------------------------------------------------------------


def _one_files(name: str) -> list[Path]:
    """``$HOME/.one/<name>`` then oneadmin's own (drivers run as oneadmin, maybe without
    HOME in their environment)."""
    home = os.environ.get("HOME")
    paths = [Path(home) / ".one" / name] if home else []
    return [*paths, Path(ONEADMIN_HOME) / ".one" / name]


def endpoint() -> str:
    return endpoint_origin()[0]


def endpoint_origin(config: Config | None = None) -> tuple[str, str]:
    """oned's XML-RPC endpoint and where it came from (``onestorpool config`` shows it)."""
    if os.environ.get("ONE_XMLRPC", "").strip():
        return os.environ["ONE_XMLRPC"].strip(), "environment ONE_XMLRPC"
    config = _config() if config is None else config
    if config["ONE_XMLRPC"].strip():
        return config["ONE_XMLRPC"].strip(), config.origins["ONE_XMLRPC"]
    for path in _one_files("one_endpoint"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text, str(path)
    return DEFAULT_ENDPOINT, "default"


def _config() -> Config:
    from onestorpool import config

    return config.load()


def default_retry(deadline: float = 20.0, config: Config | None = None) -> RetryPolicy:
    """``ONE_CALL_RETRIES`` tries (at least one) within ``deadline`` seconds."""
    config = _config() if config is None else config
    return RetryPolicy(attempts=max(1, config["ONE_CALL_RETRIES"]), deadline=deadline)


def session() -> str:
    named = os.environ.get("ONE_AUTH", "")
    candidates = [Path(named)] if named else []
    for path in candidates + _one_files("one_auth"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue  # as OpenNebula's tools do: a missing ONE_AUTH file falls through
        first = text.splitlines()[0].strip() if text else ""
        if ":" not in first:
            raise AddonError(f"{path}: expected user:password")
        return first
    raise AddonError("no OpenNebula credentials: set ONE_AUTH or create ~/.one/one_auth")


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


# -- transport --------------------------------------------------------------------------------


class _NotSent(Exception):
    """The connection could not be opened: the request never left."""

    def __init__(self, cause: OSError):
        super().__init__(str(cause))
        self.cause = cause


_TRANSPORTS: dict[bool, type] = {}


def _transport(url: str, timeout: float) -> Any:
    """An ``xmlrpc.client`` transport with a timeout, connecting before it sends (to tell
    "not sent" from "sent") and using one connection per request."""
    import xmlrpc.client

    https = url.lower().startswith("https:")
    if https not in _TRANSPORTS:
        base = xmlrpc.client.SafeTransport if https else xmlrpc.client.Transport

        class Bounded(base):  # type: ignore[misc, valid-type]
            def __init__(self, timeout: float):
                super().__init__()
                self.timeout = timeout

            def make_connection(self, host: Any) -> Any:
                connection = super().make_connection(host)
                connection.timeout = self.timeout
                if connection.sock is None:
                    try:
                        connection.connect()
                    except OSError as exc:
                        self.close()
                        raise _NotSent(exc) from exc
                return connection

            def parse_response(self, response: Any) -> Any:
                # xmlrpc.client feeds expat's many small text events to Python (seconds
                # for a 10,000-VM pool); lxml reads the same answer in C
                body = response.read(MAX_RESPONSE_BYTES + 1)
                if response.getheader("Content-Encoding", "") == "gzip":
                    body = _gunzip(body)
                return parse_xmlrpc_response(body)

            def request(self, host: Any, handler: Any, request_body: Any,
                        verbose: bool = False) -> Any:
                # No stdlib resend on a reset keep-alive connection: our retry policy
                # decides, knowing whether the call is safe to send twice.
                try:
                    return self.single_request(host, handler, request_body, verbose)
                finally:
                    self.close()

        _TRANSPORTS[https] = Bounded
    return _TRANSPORTS[https](timeout)


MAX_RESPONSE_BYTES = 1 << 30


def _gunzip(body: bytes) -> bytes:
    """At most :data:`MAX_RESPONSE_BYTES` out of a gzip answer (no decompression bomb)."""
    import xmlrpc.client
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_RESPONSE_BYTES + 1)
    except zlib.error as exc:
        raise xmlrpc.client.ResponseError(f"bad gzip answer: {exc}") from None
    if len(data) > MAX_RESPONSE_BYTES or inflater.unconsumed_tail:
        raise xmlrpc.client.ResponseError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
    return data


def parse_xmlrpc_response(body: bytes) -> tuple[Any, ...]:
    """An XML-RPC ``methodResponse`` as ``xmlrpc.client`` returns it (a one-element tuple),
    read with the hardened parser; a ``fault`` raises ``xmlrpc.client.Fault``."""
    import xmlrpc.client

    from onestorpool.one import parse_xml

    try:
        root = parse_xml(body, "XML-RPC answer", max_bytes=MAX_RESPONSE_BYTES)
    except AddonError as exc:
        raise xmlrpc.client.ResponseError(str(exc)) from None
    if root.tag != "methodResponse":
        raise xmlrpc.client.ResponseError(f"expected methodResponse, got {root.tag}")
    fault = root.find("fault/value")
    if fault is not None:
        detail = _xmlrpc_value(fault)
        detail = detail if isinstance(detail, dict) else {}
        raise xmlrpc.client.Fault(detail.get("faultCode", -1), detail.get("faultString", ""))
    value = root.find("params/param/value")
    if value is None:
        raise xmlrpc.client.ResponseError("methodResponse without a value")
    return (_xmlrpc_value(value),)


def _xmlrpc_value(value: Any) -> Any:
    children = [child for child in value if isinstance(child.tag, str)]
    if not children:
        return value.text or ""  # a bare value is a string
    node = children[0]
    kind, text = node.tag, node.text or ""
    if kind == "string":
        return text
    if kind in ("int", "i4", "i8"):
        return int(text.strip())
    if kind == "boolean":
        return text.strip() == "1"
    if kind == "double":
        return float(text.strip())
    if kind == "nil":
        return None
    if kind == "array":
        return [_xmlrpc_value(item) for item in node.findall("data/value")]
    if kind == "struct":
        return {member.findtext("name") or "": _xmlrpc_value(member.find("value"))
                for member in node.findall("member") if member.find("value") is not None}
    raise ValueError(f"XML-RPC type {kind} is not supported")


_READ_ONLY = frozenset(("version", "config", "monitoring", "raftstatus", "accounting",
                        "showback"))


def is_read_only(method: str) -> bool:
    """Whether sending ``method`` twice is harmless: ``one.*.info*`` and the like."""
    verb = method.rsplit(".", 1)[-1]
    return verb.startswith("info") or verb in _READ_ONLY


def _transport_error(exc: BaseException, what: str, idempotent: bool) -> AddonError | None:
    """Our error for a transport failure (``None``: not one)."""
    import http.client
    import ssl
    import xmlrpc.client
    from xml.parsers.expat import ExpatError

    if isinstance(exc, _NotSent):
        # a certificate problem does not heal by waiting; refused, unreachable or a
        # connect timeout may
        transient = not isinstance(exc.cause, ssl.SSLError)
        return OneTransportError(f"{what}: cannot connect: {exc.cause}", transient)
    if isinstance(exc, xmlrpc.client.ProtocolError):
        transient = idempotent and exc.errcode in (502, 503, 504)
        return OneTransportError(f"{what}: HTTP {exc.errcode} {exc.errmsg}", transient)
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return OneTransportError(f"{what}: no answer: {exc or type(exc).__name__}",
                                 idempotent)
    if isinstance(exc, (xmlrpc.client.ResponseError, ExpatError)):
        return OneTransportError(f"{what}: the answer is not XML-RPC", transient=False)
    return None


def _value(method: str, reply: Any) -> Any:
    """``[true, value, 0]`` → value; ``[false, message, code, id...]`` → :class:`OneError`."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bool):
        raise OneError(method, f"unexpected reply {reply!r:.80}")
    if reply[0]:
        return reply[1] if len(reply) > 1 else None
    code = reply[2] if len(reply) > 2 and isinstance(reply[2], int) else None
    raise OneError(method, str(reply[1]) if len(reply) > 1 else "failed", code)


# -- the lightweight path ---------------------------------------------------------------------


def one_call(method: str, *params: Any, retry: RetryPolicy | None = None,
             timeout: float = DEFAULT_TIMEOUT, idempotent: bool | None = None) -> Any:
    """Call ``method`` with the session first, as oned expects; returns the value on
    success (an XML string for ``*.info``), raises :class:`OneError` or
    :class:`OneTransportError` otherwise. ``idempotent`` defaults to :func:`is_read_only`."""
    import xmlrpc.client

    config = _config()  # ONE_XMLRPC and ONE_CALL_RETRIES of the rc
    url, auth = endpoint_origin(config)[0], session()
    retry = retry or default_retry(config=config)
    safe = is_read_only(method) if idempotent is None else idempotent
    what = f"oned {_redact(url)} {method}"

    def attempt() -> Any:
        proxy = xmlrpc.client.ServerProxy(url, transport=_transport(url, timeout))
        try:
            reply = getattr(proxy, method)(auth, *params)
        except xmlrpc.client.Fault as fault:
            raise OneError(method, fault.faultString) from fault
        except Exception as exc:
            error = _transport_error(exc, what, safe)
            if error is None:
                raise
            raise error from exc
        return _value(method, reply)

    return retry.call(attempt, f"oned {method}")


def vm_info(vm_id: int) -> Vm:
    from onestorpool.one import parse_vm

    return parse_vm(one_call("one.vm.info", vm_id))


def image_info(image_id: int) -> Image:
    from onestorpool.one import parse_image

    return parse_image(one_call("one.image.info", image_id))


def datastore_info(ds_id: int) -> Datastore:
    """Decrypted: the StorPool endpoint and token may be in the datastore's template."""
    from onestorpool.one import parse_datastore

    return parse_datastore(one_call("one.datastore.info", ds_id, True))


def host_info(host_id: int) -> Host:
    from onestorpool.one import parse_host

    return parse_host(one_call("one.host.info", host_id))


# -- pyone ------------------------------------------------------------------------------------


def server(retry: RetryPolicy | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A ``pyone.OneServer`` for the configured endpoint and session, its calls bounded by
    ``timeout`` and retried on transport errors only (read-only calls also after a send)."""
    import pyone

    url = endpoint()
    inner = pyone.OneServer(url, session=session())
    # pyone's requests-based transport has no timeout of its own (its ``timeout`` argument
    # sets the process-wide socket default): give its ServerProxy our bounded transport.
    if hasattr(inner, "_ServerProxy__transport"):
        inner._ServerProxy__transport = _transport(url, timeout)
    return _Retrying(inner, retry or default_retry(deadline=60), _redact(url))


class _Retrying:
    """Wraps pyone's proxy: ``srv.vm.info(1)`` as usual, transport errors retried."""

    def __init__(self, target: Any, retry: RetryPolicy, url: str, path: str = ""):
        self._target, self._retry, self._url, self._path = target, retry, url, path

    def __getattr__(self, name: str) -> Any:
        return _Retrying(getattr(self._target, name), self._retry, self._url,
                         f"{self._path}.{name}" if self._path else name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        method = f"one.{self._path}"
        what = f"oned {self._url} {method}"
        safe = is_read_only(method)

        def attempt() -> Any:
            try:
                return self._target(*args, **kwargs)
            except Exception as exc:
                error = _transport_error(exc, what, safe)
                if error is None:
                    raise  # pyone's OneException family: oned's answer, not retried
                raise error from exc

        return self._retry.call(attempt, f"oned {method}")
