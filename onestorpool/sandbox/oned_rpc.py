"""The XML-RPC front of the oned sandbox: the server (``http://127.0.0.1:<port>/RPC2``),
and every call's way through it as ``Request::execute`` (release-6.10.5
``src/rm/Request.cc``): the session read and authenticated, the parameters read as
xmlrpc-c's ``paramList`` reads them, oned's reply arrays (``[true, value, 0]``,
``[false, message, code, object id, i8]``), the API event on the hook bus. Methods come
from the release's registry (``oned_methods``) and the handlers the parts register."""

from __future__ import annotations

import inspect
import sys
import threading
import traceback
import xmlrpc.client
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from onestorpool.sandbox import oned_hookbus as hookbus
from onestorpool.sandbox.oned_methods import release_methods
from onestorpool.sandbox.oned_objects import AUTHENTICATION, OneFailure, Version


class I8(int):
    """An XML-RPC ``<i8>`` (oned's replication index in error replies)."""


def _dump_i8(marshaller: Any, value: int, write: Any) -> None:
    write(f"<value><i8>{int(value)}</i8></value>\n")


xmlrpc.client.Marshaller.dispatch[I8] = _dump_i8  # the stdlib marshaller has no i8 writer


XMLRPC_TYPES = {"int": (int, "integer"), "bool": (bool, "boolean"), "str": (str, "a string")}


def read_parameters(handler: Any, params: tuple[Any, ...]) -> tuple[Any, ...]:
    """The parameters as the method's ``paramList::get*`` calls read them: each declared
    one must be there (unless optional) with its XML-RPC type, extra ones are ignored."""
    taken: list[Any] = []
    for position, parameter in enumerate(inspect.signature(handler).parameters.values()):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*taken, *params[position:])
        if position >= len(params):
            if parameter.default is inspect.Parameter.empty:
                raise xmlrpc.client.Fault(-501, "Not enough parameters")
            break
        value = params[position]
        expected = XMLRPC_TYPES.get(str(parameter.annotation).split(" ")[0])
        if expected is not None and type(value) is not expected[0]:
            raise xmlrpc.client.Fault(
                -501, f"Parameter that is supposed to be {expected[1]} is not")
        taken.append(value)
    return tuple(taken)


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    """Every call goes through one dispatcher: authentication, errors, API events."""

    daemon_threads = True
    allow_reuse_address = True
    dispatcher: Any = None

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> Any:
        return self.dispatcher(method, params)


class RpcServer:
    """``handlers`` maps a method to its callable; a handler returns the value, or
    (value, EXTRA body for the API event), or raises :class:`OneFailure`."""

    def __init__(self, port: int, version: Version, session: str, hooks: hookbus.HookBus,
                 lock: threading.RLock, internal_errors: list[str]):
        self.version = version
        self.session = session
        self.hooks = hooks
        self.lock = lock
        self.internal_errors = internal_errors
        self.handlers: dict[str, Any] = {}
        # what this release registers; its calls the sandbox lacks answer "not emulated"
        self.methods = release_methods(version)
        self.server = _Server(("127.0.0.1", port), requestHandler=SimpleXMLRPCRequestHandler,
                              logRequests=False, allow_none=False)
        self.server.dispatcher = self.dispatch
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"

    def dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any]:
        """One XML-RPC call as ``Request::execute``: authenticate, run, reply, publish."""
        handler = self.handlers.get(method)
        if method not in self.methods:  # the release's registry (oned_methods)
            raise xmlrpc.client.Fault(-506, f"Method '{method}' not defined")
        # Request::execute reads the session first (paramList::getString(0)), then
        # authenticates; the handler reads its parameters after that, and xmlrpc-c's
        # paramList answers a missing or mistyped one with a type fault (-501), which
        # leaves Request::execute before the API event (xmlrpc-c src/cpp/param_list.cpp;
        # release-6.10.5 src/rm/Request.cc:374,396,457). Extra parameters are not read.
        if not params:
            raise xmlrpc.client.Fault(-501, "Not enough parameters")
        if not isinstance(params[0], str):
            raise xmlrpc.client.Fault(-501, "Parameter that is supposed to be a string is not")
        if params[0] != self.session:
            return [False, f"[{method}] User couldn't be authenticated, aborting call.",
                    AUTHENTICATION, -1, I8(-1)]
        extra = ""
        arguments = params[1:]
        if handler is not None:
            arguments = read_parameters(handler, arguments)
        try:
            if handler is None:
                raise OneFailure(0x800, f"[{method}] not emulated by the oned sandbox")
            value = handler(*arguments)
            if isinstance(value, tuple):  # (value, EXTRA body for the API event)
                value, extra = value
            reply: list[Any] = [True, value, 0]
        except OneFailure as failure:
            reply = [False, failure.message, failure.code, failure.object_id, I8(-1)]
            extra = failure.extra
        except Exception:  # a bug of the emulator: visible, and an INTERNAL error reply
            text = traceback.format_exc()
            sys.stderr.write(f"oned sandbox: internal error in {method}\n{text}")
            with self.lock:
                self.internal_errors.append(text)
            reply = [False, f"[{method}] oned sandbox internal error: "
                            f"{text.strip().splitlines()[-1]}", 0x2000, -1, I8(-1)]
        if hookbus.publishes_api_event(method, self.version):
            self.hooks.publish([f"EVENT API {method} {int(bool(reply[0]))}"],
                               hookbus.api_message(method, list(params), reply, extra))
        return reply

