"""Talking to oned over XML-RPC: endpoint and credentials found the way OpenNebula's tools
find them, a lightweight call path for drivers, and pyone for the subscriber and admin tools.

Endpoint: ``ONE_XMLRPC``, else ``~/.one/one_endpoint``, else ``/var/lib/one/.one/one_endpoint``,
else ``http://localhost:2633/RPC2``. Credentials: the file named by ``ONE_AUTH``, else
``~/.one/one_auth``, else ``/var/lib/one/.one/one_auth`` (``user:password``).

:func:`one_call` uses only the standard library (drivers must not import pyone); :func:`server`
builds a ``pyone.OneServer``. Both retry transport errors (refused, reset, timed out) with
the add-on's one retry policy, never an answer of oned's (authorization, not found, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onestorpool.errors import AddonError
from onestorpool.retry import RetryPolicy

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
ONEADMIN_HOME = "/var/lib/one"


class OneError(AddonError):
    """oned answered with an error (authentication, authorization, not found, ...)."""

    def __init__(self, method: str, message: str, code: int | None = None):
        super().__init__(f"oned {method}: {message}")
        self.code = code
        self.transient = False


class OneTransportError(AddonError):
    """oned could not be reached."""

    transient = True


def _home_files(name: str) -> list[Path]:
    paths = [Path.home() / ".one" / name] if "HOME" in os.environ else []
    return [*paths, Path(ONEADMIN_HOME) / ".one" / name]


def endpoint() -> str:
    if os.environ.get("ONE_XMLRPC"):
        return os.environ["ONE_XMLRPC"].strip()
    for path in _home_files("one_endpoint"):
        if path.is_file():
            text = path.read_text().strip()
            if text:
                return text
    return DEFAULT_ENDPOINT


def session() -> str:
    candidates = [Path(os.environ["ONE_AUTH"])] if os.environ.get("ONE_AUTH") else []
    for path in candidates + _home_files("one_auth"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if ":" not in text:
            raise AddonError(f"{path}: expected user:password")
        return text.splitlines()[0].strip()
    raise AddonError("no OpenNebula credentials: set ONE_AUTH or create ~/.one/one_auth")


def one_call(method: str, *params: Any, retry: RetryPolicy | None = None,
             timeout: float = 30.0) -> Any:
    """Call ``method`` with the session first, as oned expects; returns the value on
    success (an XML string for ``*.info``), raises :class:`OneError` otherwise."""
    import http.client
    import xmlrpc.client

    url, auth = endpoint(), session()

    class _Transport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> http.client.HTTPConnection:
            connection = super().make_connection(host)
            connection.timeout = timeout
            return connection

    def attempt() -> Any:
        proxy = xmlrpc.client.ServerProxy(url, transport=_Transport(), allow_none=False)
        try:
            reply = getattr(proxy, method)(auth, *params)
        except (OSError, http.client.HTTPException) as exc:
            raise OneTransportError(f"oned {url}: {exc}") from None
        except xmlrpc.client.Fault as fault:
            raise OneError(method, fault.faultString) from None
        if not isinstance(reply, list) or not reply:
            raise OneError(method, f"unexpected reply {reply!r:.80}")
        if reply[0] is not True:
            code = reply[2] if len(reply) > 2 and isinstance(reply[2], int) else None
            raise OneError(method, str(reply[1]) if len(reply) > 1 else "failed", code)
        return reply[1]

    return (retry or RetryPolicy(attempts=3, deadline=20)).call(attempt, f"oned {method}")


def datastore_info(ds_id: int) -> Any:
    """The DATASTORE of ``ds_id`` as a :class:`onestorpool.one.Datastore`."""
    from onestorpool.one import parse_datastore

    return parse_datastore(one_call("one.datastore.info", ds_id, True))


def server(retry: RetryPolicy | None = None) -> Any:
    """A ``pyone.OneServer`` for the configured endpoint, its calls retried on transport
    errors only."""
    import pyone

    inner = pyone.OneServer(endpoint(), session=session())
    return _Retrying(inner, retry or RetryPolicy(attempts=5, deadline=60))


class _Retrying:
    """Wraps pyone's proxy: ``srv.vm.info(1)`` as usual, transport errors retried."""

    def __init__(self, target: Any, retry: RetryPolicy, path: str = ""):
        self._target, self._retry, self._path = target, retry, path

    def __getattr__(self, name: str) -> Any:
        return _Retrying(getattr(self._target, name), self._retry,
                         f"{self._path}.{name}" if self._path else name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        def attempt() -> Any:
            try:
                return self._target(*args, **kwargs)
            except (OSError, ConnectionError) as exc:
                raise OneTransportError(f"oned {self._path}: {exc}") from exc
            except Exception as exc:
                # pyone wraps transport failures of its requests session in its own types
                if type(exc).__module__.startswith(("requests", "urllib3")):
                    raise OneTransportError(f"oned {self._path}: {exc}") from exc
                raise

        return self._retry.call(attempt, f"oned {self._path}")
