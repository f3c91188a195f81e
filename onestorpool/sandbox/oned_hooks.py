"""Hooks in the oned sandbox: the ``one.hook*`` calls, the hook log, and the execution of the
hooks as OpenNebula's Hook Execution Manager does it.

* Registration (``src/hm/Hook.cc``, ``HookPool.cc``, ``HookStateVM.cc``, ``HookAPI.cc``,
  ``src/rm/RequestManagerAllocate.cc``): NAME, TYPE (``api``/``state``) and COMMAND are
  required; TYPE leaves the template for the ``<TYPE>`` element, REMOTE becomes YES/NO; a VM
  state hook's ON is rewritten into STATE and LCM_STATE; an API hook's CALL must be a
  method that publishes events.
* Execution (``src/hem/onehem-server.rb``): a hook listens to ``EVENT STATE
  <RESOURCE>/<STATE>/<LCM_STATE>`` (the key without its ``/<id>``) or ``EVENT API <CALL>``
  (both results); ``ARGUMENTS`` is split on blanks with ``$TEMPLATE`` (base64 of the
  object element) and ``$API`` (base64 of CALL_INFO) substituted, passed on the command line
  or, with ``ARGUMENTS_STDIN``, on stdin; relative commands are looked up in
  ``<remotes>/hooks`` (local) or the host's ``/var/tmp/one/hooks`` (``REMOTE=YES``, run in
  the host's directory with ``ONESTORPOOL_SANDBOX_HOST`` naming it; no REMOTE_HOST: not run).
* Results come back as oned stores them (``src/hm/HookLog.cc``): an execution record per
  run, EXECUTION_ID counted per hook, ``LOG_RETENTION`` (20) records kept, STDOUT/STDERR
  base64 with Ruby's ``Base64.encode64`` line breaks, COMMAND and ARGUMENTS raw (a record
  that is not well-formed XML is dropped, as ``validate_xml`` drops it).
* ``one.hook.retry`` reads the record back and has one_hm publish ``RETRY`` (key, then the
  base64 message and a blank); the execution manager runs the hook again with the stored
  arguments and the new record carries ``<RETRY>yes</RETRY>``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_hem import Hook, HookExecutionManager, encode64
from onestorpool.sandbox.oned_hookbus import HookBus, publishes_api_event
from onestorpool.sandbox.oned_methods import release_methods
from onestorpool.sandbox.oned_objects import (
    ALLOCATE,
    INTERNAL,
    LCM_STATES,
    NO_EXISTS,
    VM_STATES,
    OneFailure,
    Template,
    Version,
    check_name,
)

LOG_RETENTION = 20  # oned.conf HOOK_LOG_CONF
# ON of VM state hooks (HookStateVM::parse_template)
VM_ON = {"PROLOG": ("ACTIVE", "PROLOG"), "RUNNING": ("ACTIVE", "RUNNING"),
         "SHUTDOWN": ("ACTIVE", "EPILOG"), "STOP": ("STOPPED", "LCM_INIT"),
         "DONE": ("DONE", "LCM_INIT"), "UNKNOWN": ("ACTIVE", "UNKNOWN")}
IMAGE_HOOK_STATES = ("READY", "USED", "DISABLED", "LOCKED", "ERROR", "CLONE", "DELETE",
                     "USED_PERS", "LOCKED_USED", "LOCKED_USED_PERS")
HOST_HOOK_STATES = ("INIT", "MONITORING_MONITORED", "MONITORED", "ERROR", "DISABLED",
                    "MONITORING_ERROR", "MONITORING_INIT", "MONITORING_DISABLED", "OFFLINE")


class HookManager:
    """The hook pool, the hook log and the execution manager; ``methods()`` gives the
    XML-RPC calls to the server."""

    def __init__(self, bus: HookBus, version: Version, remotes: Path,
                 host_path: Callable[[str, str], Path], env: dict[str, str],
                 concurrency: int = 10):
        self.bus = bus
        self.version = version
        self.remotes = remotes
        self.host_path = host_path
        self.env = env
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.hooks: dict[int, Hook] = {}
        self._next_id = 0
        self.hem = HookExecutionManager(self, remotes, host_path, env, concurrency)
        bus.listeners.append(self.hem.on_event)

    def methods(self) -> dict[str, Callable[..., Any]]:
        calls: dict[str, Callable[..., Any]] = {
            "one.hook.allocate": self.allocate, "one.hook.info": self.info,
            "one.hook.update": self.update, "one.hook.delete": self.delete,
            "one.hook.rename": self.rename, "one.hook.lock": self.lock_hook,
            "one.hook.unlock": self.unlock_hook, "one.hook.retry": self.retry,
            "one.hookpool.info": self.pool_info, "one.hooklog.info": self.log_info,
        }
        return calls

    def close(self) -> None:
        self.hem.close()

    def wait_idle(self, timeout: float = 30) -> None:
        self.hem.wait_idle(timeout)

    # -- the pool ----------------------------------------------------------------------------

    def _hook(self, hook_id: int, method: str) -> Hook:
        hook = self.hooks.get(hook_id)
        if hook is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting hook [{hook_id}].",
                             hook_id)
        return hook

    def allocate(self, text: str) -> tuple[int, str]:
        """``HookAllocate`` + ``HookPool::allocate`` + ``Hook::insert``."""
        method = "one.hook.allocate"
        template = _parse(text, method)
        kind = str(template.get("TYPE", "")).lower()
        if kind not in ("api", "state"):
            raise OneFailure(INTERNAL, f"[{method}] Invalid Hook type: "
                                       f"{template.get('TYPE', '')}")

        def fail(message: str) -> OneFailure:
            return OneFailure(ALLOCATE, f"[{method}] Error allocating a new hook. {message}")

        with self.lock:
            name = str(template.get("NAME", ""))
            if check_name(name):
                raise fail("Invalid name.")
            taken = next((h.id for h in self.hooks.values() if h.name == name), None)
            if taken is not None:
                raise fail(f"NAME is already taken by Hook {taken}.")
            template.pop("NAME")
            if not template.get("COMMAND"):
                raise fail("No COMMAND in template for Hook.")
            template["REMOTE"] = "YES" if str(template.get("REMOTE", "")).upper() in (
                "YES", "TRUE") else "NO"
            template.pop("TYPE")
            error = self._parse_hook(kind, template)
            if error:
                raise fail(error)
            hook = Hook(self._next_id, name, kind, template)
            self._next_id += 1
            self.hooks[hook.id] = hook
            return hook.id, self._body(hook)

    def _parse_hook(self, kind: str, template: Template) -> str:
        """``HookStateVM/Host/Image::parse_template``, ``HookAPI::parse_template``."""
        if kind == "api":
            call = str(template.get("CALL", ""))
            # HookAPI::call_exist: registered in this release and not read-only
            if call not in release_methods(self.version) or \
                    not publishes_api_event(call, self.version):
                return f"API call does not exist or is not supported: {call}"
            return ""
        resource = str(template.get("RESOURCE", "")).upper()
        if not resource:
            return "RESOURCE attribute is required for STATE hooks."
        if resource == "VM":
            on = str(template.pop("ON", "")).upper()
            if on == "CUSTOM":
                state, lcm = str(template.get("STATE", "")), str(template.get("LCM_STATE", ""))
                if state not in VM_STATES:
                    return f"Wrong STATE: {state}"
                if lcm not in LCM_STATES:
                    return f"Wrong LCM_STATE: {lcm}"
            elif on in VM_ON:
                state, lcm = VM_ON[on]
            else:
                return f"Unkown state condition: {on}"
            template.update(STATE=state, LCM_STATE=lcm)
        elif resource in ("HOST", "IMAGE", "NET"):
            # Hook::set_hook knows IMAGE from 6.0, NET from 6.4 (HookStateImage.cc,
            # HookStateVirtualNetwork.cc appear at release-6.0.0 and release-6.4.0)
            if (resource == "IMAGE" and self.version < (6, 0)) or (
                    resource == "NET" and self.version < (6, 4)):
                return f"Invalid resource type: {resource}"
            state = str(template.get("STATE", "")).upper()
            if not state:
                return "Hook STATE attribute not found or invalid"
            known = {"HOST": HOST_HOOK_STATES, "IMAGE": IMAGE_HOOK_STATES}.get(resource)
            if known is not None and state not in known:
                return f"Invalid or unkown STATE condition: {state}"
            template["STATE"] = state
        else:
            return f"Invalid resource type: {resource}"
        template["RESOURCE"] = resource
        return ""

    def _body(self, hook: Hook, log: bool = False) -> str:
        """``Hook::_to_xml``; one.hook.info adds the hook's log."""
        lock = (f"<LOCK><LOCKED>{hook.lock}</LOCKED><OWNER>0</OWNER><TIME>0</TIME>"
                f"<REQ_ID>-1</REQ_ID></LOCK>" if hook.lock else "")
        records = self._log_xml([hook]) if log else ""
        return (f"<HOOK><ID>{hook.id}</ID><NAME>{hook.name}</NAME><TYPE>{hook.type}</TYPE>"
                f"{lock}{X.template_xml(hook.template)}{records}</HOOK>")

    def info(self, hook_id: int, decrypt: bool = False) -> str:
        with self.lock:
            return self._body(self._hook(hook_id, "one.hook.info"), log=True)

    def pool_info(self, *filters: Any) -> str:
        with self.lock:
            return X.pool("HOOK_POOL", [self._body(h) for h in self.hooks.values()])

    def update(self, hook_id: int, text: str, merge: int = 0) -> int:
        """``Hook::post_update_template``: COMMAND must stay, the type's key is checked."""
        method = "one.hook.update"
        template = _parse(text, method)
        with self.lock:
            hook = self._hook(hook_id, method)
            new = {**hook.template, **template} if merge else template
            if not new.get("COMMAND"):
                raise OneFailure(INTERNAL, f"[{method}] The COMMAND attribute is not defined.",
                                 hook_id)
            new["REMOTE"] = "YES" if str(new.get("REMOTE", "")).upper() in ("YES", "TRUE") \
                else "NO"
            if hook.type == "state":
                new.setdefault("RESOURCE", hook.template.get("RESOURCE", ""))
                if new.get("ON"):
                    error = self._parse_hook("state", new)
                    if error:
                        raise OneFailure(INTERNAL, f"[{method}] {error}", hook_id)
            elif str(new.get("CALL", "")) not in release_methods(self.version) or \
                    not publishes_api_event(str(new.get("CALL", "")), self.version):
                raise OneFailure(INTERNAL, f"[{method}] The CALL attribute is not defined "
                                           "or it's invalid.", hook_id)
            hook.template = new
            return hook_id

    def delete(self, hook_id: int) -> tuple[int, str]:
        with self.lock:
            hook = self._hook(hook_id, "one.hook.delete")
            body = self._body(hook)  # RequestManagerDelete saves it first
            del self.hooks[hook_id]
            return hook_id, body

    def rename(self, hook_id: int, name: str) -> int:
        method = "one.hook.rename"
        with self.lock:
            hook = self._hook(hook_id, method)
            error = check_name(name)
            taken = next((h.id for h in self.hooks.values() if h.name == name), None)
            if not error and taken is not None and taken != hook_id:
                error = f"NAME is already taken by HOOK {taken}."
            if error:
                raise OneFailure(0x800, f"[{method}] {error}", hook_id)
            hook.name = name
            return hook_id

    def lock_hook(self, hook_id: int, level: int = 1, test: bool = False) -> int:
        with self.lock:
            self._hook(hook_id, "one.hook.lock").lock = level
            return hook_id

    def unlock_hook(self, hook_id: int) -> int:
        with self.lock:
            self._hook(hook_id, "one.hook.unlock").lock = 0
            return hook_id

    # -- the hook log ---------------------------------------------------------------------------

    def _log_xml(self, hooks: list[Hook], keep: Callable[[int, int], bool] | None = None
                 ) -> str:
        """``HookLog::dump_log``: ``ORDER BY hkid DESC`` (then execution id)."""
        bodies = []
        for hook in sorted(hooks, key=lambda h: -h.id):
            for body, (_, stamp, rc) in zip(hook.log, hook.records, strict=True):
                if keep is None or keep(stamp, rc):
                    bodies.append(body)
        return f"<HOOKLOG>{''.join(bodies)}</HOOKLOG>"

    def log_info(self, min_ts: int, max_ts: int, hook_id: int, rc: int) -> str:
        """``HookLogInfo``: timestamps strictly between min and max (negative: no
        bound), one hook or all, ``rc`` -1 failures only, 1 successes only, else all."""
        def keep(stamp: int, code: int) -> bool:
            return ((min_ts < 0 or stamp > min_ts) and (max_ts < 0 or stamp < max_ts)
                    and (rc not in (-1, 1) or (code != 0) == (rc == -1)))

        with self.lock:
            hooks = [h for h in self.hooks.values() if hook_id < 0 or h.id == hook_id]
            return self._log_xml(hooks, keep)

    def add_record(self, hook_id: int, rc: int, result: str) -> None:
        """``HookLog::add``: a record unless the XML is broken; LOG_RETENTION kept."""
        from lxml import etree

        with self.lock:
            hook = self.hooks.get(hook_id)
            if hook is None:
                return
            exec_id, stamp = hook.next_execution, int(time.time())
            body = (f"<HOOK_EXECUTION_RECORD><HOOK_ID>{hook_id}</HOOK_ID>"
                    f"<EXECUTION_ID>{exec_id}</EXECUTION_ID><TIMESTAMP>{stamp}</TIMESTAMP>"
                    f"{result}</HOOK_EXECUTION_RECORD>")
            try:
                etree.fromstring(body.encode())
            except etree.XMLSyntaxError:
                return
            hook.next_execution += 1
            hook.log.append(body)
            hook.records.append((exec_id, stamp, rc))
            if len(hook.log) > LOG_RETENTION:
                del hook.log[0], hook.records[0]
            self.changed.notify_all()

    def retry(self, hook_id: int, exec_id: int) -> int:
        """``HookRetry`` + ``HookLog::retry``: RETRY published with the stored arguments."""
        from lxml import etree

        method = "one.hook.retry"
        with self.lock:
            hook = self._hook(hook_id, method)
            body = next((b for b, r in zip(hook.log, hook.records, strict=True)
                         if r[0] == exec_id), None)
        if body is None:
            raise OneFailure(INTERNAL, f"[{method}] Invalid HookLog body. Arguments not "
                                       "found.", hook_id)
        record = etree.fromstring(body.encode())
        self.bus.publish_retry(hook_id, record.findtext("ARGUMENTS") or "",
                               record.findtext("REMOTE_HOST") or "")
        return hook_id

def _parse(text: str, method: str) -> Template:
    try:
        return X.parse_template(text)
    except ValueError as error:
        raise OneFailure(INTERNAL, f"[{method}] Parse error: {escape(str(error))}") from None


__all__ = ["Hook", "HookManager", "encode64"]
