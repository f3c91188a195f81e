"""The Hook Execution Manager of the oned sandbox, as ``src/hem/onehem-server.rb`` (see
``oned_hooks`` for the whole story): it listens to the hook bus, runs the hooks whose key
matches an event (or a RETRY), and hands each result to the hook log as one_hm and
``HookManager::_execute`` do.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_objects import Template

HOOK_TIMEOUT = 60.0  # a hook without TIMEOUT is not bounded by onehem; the sandbox is


def encode64(data: str) -> str:
    """Ruby's ``Base64.encode64``: lines of 60 characters, each ending in a newline."""
    text = base64.b64encode(data.encode()).decode()
    return "".join(text[i:i + 60] + "\n" for i in range(0, len(text), 60))


@dataclass
class Hook:
    id: int
    name: str
    type: str  # "api" or "state"
    template: Template
    lock: int = 0
    log: list[str] = field(default_factory=list)  # HOOK_EXECUTION_RECORD bodies
    records: list[tuple[int, int, int]] = field(default_factory=list)  # (exec id, ts, rc)
    next_execution: int = 0

    @property
    def remote(self) -> bool:
        return str(self.template.get("REMOTE", "NO")).upper() == "YES"

    def key(self) -> str:
        """onehem's ``Hook#key``: the CALL, or RESOURCE/STATE/LCM_STATE."""
        if self.type == "api":
            return str(self.template.get("CALL", ""))
        return (f"{self.template.get('RESOURCE', '')}/{self.template.get('STATE', '')}/"
                f"{self.template.get('LCM_STATE', '')}")


class HookPoolView(Protocol):
    """What the execution manager needs of the hook pool."""

    lock: threading.RLock
    hooks: dict[int, Hook]

    def add_record(self, hook_id: int, rc: int, result: str) -> None: ...


class HookExecutionManager:
    """onehem: a thread pool (``:concurrency``) running the hooks of each event."""

    def __init__(self, pool: HookPoolView, remotes: Path,
                 host_path: Callable[[str, str], Path], env: dict[str, str],
                 concurrency: int = 10):
        self.pool = pool
        self.remotes = remotes
        self.host_path = host_path
        self.env = env
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._executor = ThreadPoolExecutor(max_workers=concurrency,
                                            thread_name_prefix="onehem")
        self._running = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def on_event(self, key: str, payload: str) -> None:
        """onehem's loop: ``EVENT <type> <key>`` or ``RETRY``."""
        words = key.split(" ")
        if words[0] == "RETRY":
            body = X.parse_recovering(base64.b64decode(payload.split(" ")[0]).decode())
            with self.pool.lock:
                hook = self.pool.hooks.get(int(body.findtext(".//HOOK_ID") or -1))
            if hook is not None:
                self._start(lambda: self._retry(hook, body))
            return
        if words[0] != "EVENT" or len(words) < 3 or words[1] not in ("API", "STATE"):
            return
        kind, event_key = words[1], words[2]
        if kind == "STATE":
            event_key = event_key.rsplit("/", 1)[0]
        with self.pool.lock:
            hooks = [h for h in self.pool.hooks.values()
                     if h.type == kind.lower() and h.key() == event_key]
        if not hooks:
            return
        event = X.parse_recovering(base64.b64decode(payload).decode())
        for hook in hooks:
            self._start(functools.partial(self._execute, hook, event))

    def _start(self, job: Callable[[], None]) -> None:
        with self.lock:
            self._running += 1

        def run() -> None:
            try:
                job()
            finally:
                with self.lock:
                    self._running -= 1
                    self.changed.notify_all()

        self._executor.submit(run)

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("oned sandbox: hooks still running")
                self.changed.wait(min(remaining, 0.2))

    def _execute(self, hook: Hook, event: Any) -> None:
        """``execute_action``: arguments, host, run, report."""
        arguments = _arguments(hook, event)
        host = "" if (event.findtext(".//HOOK_TYPE") or "") == "API" else \
            (event.findtext(".//REMOTE_HOST") or "")
        result = self._run(hook, arguments, host)
        if result is None:
            return  # a remote hook without a host: onehem logs and reports nothing
        code, xml = result
        extra = f"<REMOTE_HOST>{host}</REMOTE_HOST>" if host and hook.remote else ""
        self.pool.add_record(hook.id, code, f"<ARGUMENTS>{arguments}</ARGUMENTS>{xml}{extra}")

    def _retry(self, hook: Hook, body: Any) -> None:
        """``retry_action``: the stored arguments again, RETRY=yes in the record."""
        arguments = base64.b64decode(body.findtext(".//ARGUMENTS") or "").decode()
        host = body.findtext(".//REMOTE_HOST") or ""
        result = self._run(hook, arguments, host)
        if result is None:
            return
        code, xml = result
        extra = f"<REMOTE_HOST>{host}</REMOTE_HOST>" if host else ""
        self.pool.add_record(hook.id, code, f"<ARGUMENTS>{arguments}</ARGUMENTS>{xml}{extra}"
                                        "<RETRY>yes</RETRY>")

    def _run(self, hook: Hook, arguments: str, host: str) -> tuple[int, str] | None:
        """``Hook#execute`` through LocalCommand (or SSHCommand on the host's directory):
        the command line is run by the shell; the result as ``GenericCommand#to_xml``."""
        command = str(hook.template.get("COMMAND", ""))
        env = dict(self.env)
        cwd = "/"
        if hook.remote:
            if not host:
                return None
            base = self.host_path(host, "/var/tmp/one/hooks")
            if not base.is_dir():
                base = self.remotes / "hooks"  # what `onehost sync` copies there
            cwd = str(self.host_path(host, "/"))
            env["ONESTORPOOL_SANDBOX_HOST"] = host
        else:
            base = self.remotes / "hooks"
        if not command.startswith("/"):
            command = f"{base}/{command}"
        stdin = ""
        # Hook#as_stdin? (release-6.10.5 src/hem/onehem-server.rb:194): Ruby's
        # ``casecmp('yes') || casecmp('true')`` stops at the first, always truthy,
        # integer: only YES (any case) passes the arguments on stdin, TRUE does not
        as_stdin = str(hook.template.get("ARGUMENTS_STDIN", "")).lower() == "yes"
        if as_stdin:
            stdin = arguments
        elif arguments:
            command = f"{command} {arguments}"
        timeout = hook.template.get("TIMEOUT")
        try:
            limit = float(timeout) if timeout else HOOK_TIMEOUT
        except ValueError:
            limit = HOOK_TIMEOUT
        try:
            done = subprocess.run(["/bin/sh", "-c", command], input=stdin, text=True,
                                  capture_output=True, env=env, cwd=cwd, timeout=limit)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired:
            code, out, err = 255, "", f"Timeout executing {command}"
        except OSError as exc:
            code, out, err = 255, "", f"Internal error {os.strerror(exc.errno or 0)}"
        return code, (f"<EXECUTION_RESULT><COMMAND>{command}</COMMAND>"
                      f"<STDOUT>{encode64(out)}</STDOUT><STDERR>{encode64(err)}</STDERR>"
                      f"<CODE>{code}</CODE></EXECUTION_RESULT>")



def _arguments(hook: Hook, event: Any) -> str:
    """``Hook#arguments``: ``$API``/``$TEMPLATE`` substituted, blanks normalised."""
    text = hook.template.get("ARGUMENTS")
    if not text:
        return ""
    from lxml import etree

    kind = (event.findtext(".//HOOK_TYPE") or "").upper()
    api = template = ""
    if kind == "API":
        info = event.find(".//CALL_INFO")
        if info is not None:
            api = base64.b64encode(etree.tostring(info, with_tail=False)).decode()
    elif kind == "STATE":
        obj = (event.findtext(".//HOOK_OBJECT") or "").upper()
        element = event.find(f".//{'VNET' if obj == 'NET' else obj}")
        if element is not None:
            template = base64.b64encode(etree.tostring(element, with_tail=False)).decode()
    words = [{"$API": api, "$TEMPLATE": template}.get(w, w) for w in str(text).split()]
    return " ".join(words).strip()


