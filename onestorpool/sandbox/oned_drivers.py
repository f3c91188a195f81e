"""Running the driver executables the way oned's driver processes do.

* Datastore actions (``one_datastore.rb``): ``remotes/datastore/<DS_MAD>/<action>``, or for a
  system datastore's monitor ``remotes/tm/<TM_MAD>/monitor``; the base64
  ``DS_DRIVER_ACTION_DATA`` on the command line before the id (up to 6.6) or on stdin
  (6.8 and later).
* Transfer files (``one_tm.rb``): one ``<ACTION>[.<SYS>] <TM_MAD> <args>`` line after the
  other, script ``remotes/tm/<TM_MAD>/<action>[.<sys>]`` falling back to the name without the
  suffix, arguments on the command line, no stdin; the first failure stops the file.
* VMM local actions (``one_vmm_exec -l action=script``): ``remotes/vmm/kvm/<script>`` with the
  step's parameters, the VM id and the host appended, stdin base64-encoded.

What oned receives is what the Ruby driver sends: on success the first line of stdout, on
failure an error text made from stderr by the rules of the release (``error_info``), ``-``
when there is none. Every run is recorded in the driver log.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from onestorpool.sandbox.oned_objects import Version

DRIVER_TIMEOUT = 600.0
# The part of a driver's environment worth recording: what oned and the sandbox set.
LOGGED_ENV = re.compile(r"^(HOME|ONE_\w+|ONESTORPOOL_\w+|MONITOR_\w+)$")
# scripts_common.sh's error_message markers before 6.2 (CommandManager#get_error_message).
_MARKED = re.compile(r"^ERROR MESSAGE --8<------\n(.*?)ERROR MESSAGE ------>8--$",
                     re.MULTILINE | re.DOTALL)
_LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")


def error_info(stderr: str, version: Version) -> str:
    """The failure text oned gets from a driver's stderr.

    * up to 6.0: only what ``error_message`` wrapped in its ``ERROR MESSAGE --8<------``
      markers (other lines are logged only);
    * 6.2 to 6.10: the whole stderr, newlines made blanks (log lines included);
    * 7.0 and later: every line that is not an ``ERROR:``/``INFO:``/``WARN:``/``DEBUG:``
      log line, stripped and concatenated without separator.

    ``-`` when nothing is left (oned then keeps no error message)."""
    if version < (6, 2):
        found = _MARKED.findall(stderr)
        info = " ".join(found).strip()
    elif version < (7, 0):
        info = stderr.replace("\n", " ").strip()
    else:
        info = "".join(line.strip() for line in stderr.splitlines()
                       if not _LOG_LINE.match(line.strip())).strip()
    return info or "-"


def first_line(text: str) -> str:
    """A driver's reply is one protocol line: oned reads up to the first newline and skips
    the blanks before the payload."""
    return text.split("\n", 1)[0].lstrip(" \t")


@dataclass
class DriverRun:
    """One execution of a driver executable, and what oned made of it."""

    kind: str  # "datastore", "tm" or "vmm"
    driver: str  # DS_MAD, TM_MAD or the hypervisor
    action: str  # the script's name
    argv: list[str]
    stdin: str | None
    env: dict[str, str]
    object_id: int
    script: str = ""
    exit: int = -1
    stdout: str = ""
    stderr: str = ""
    info: str = "-"  # what the driver sends to oned (success: stdout; failure: error_info)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit == 0

    @property
    def payload(self) -> str:
        """The reply's payload as oned parses it."""
        return first_line(self.info)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_LOG_MODULES = {"datastore": "ImM", "tm": "TrM", "vmm": "VMM"}
_LOG_LEVELS = {"ERROR": "E", "WARN": "W", "INFO": "I", "DEBUG": "D"}


def write_oned_log(run: DriverRun, stream: TextIO | None) -> None:
    """The lines oned writes to oned.log for a driver run: the outcome, then the driver's
    stderr (``ERROR:``/``WARN:``/``INFO:``/``DEBUG:`` lines at their level)."""
    if stream is None:
        return
    stamp = time.strftime("%a %b %d %H:%M:%S %Y")
    module = _LOG_MODULES.get(run.kind, "ReM")
    outcome = "success" if run.ok else f"failure (exit {run.exit})"
    lines = [f"{stamp} [Z0][{module}][{'I' if run.ok else 'E'}]: {run.kind}/{run.driver}/"
             f"{run.action} {run.object_id}: {outcome}"]
    for line in run.stderr.splitlines():
        prefix, sep, text = line.partition(": ")
        level = _LOG_LEVELS.get(prefix) if sep else None
        lines.append(f"{stamp} [Z0][{module}][{level or 'I'}]: {text if level else line}")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


class DriverRunner:
    """Executes the scripts under ``remotes`` with oned's conventions for ``version``."""

    def __init__(self, remotes: Path, version: Version, env: dict[str, str],
                 log: list[DriverRun], lock: threading.RLock, cwd: str = "/",
                 vmm_local: dict[str, str] | None = None):
        self.remotes = remotes
        self.version = version
        self.env = env
        self.log = log
        self.lock = lock
        self.cwd = cwd
        # VM_MAD ARGUMENTS "-l deploy=deploy-tweaks,attach_disk,..." (upper-cased keys).
        self.vmm_local = {k.upper(): v for k, v in (vmm_local or {}).items()}
        # where oned.log goes: the oned sandbox process's stderr ('sandbox up': oned.log)
        self.log_stream: TextIO | None = None

    # -- datastore driver -------------------------------------------------------------------

    def datastore(self, ds_mad: str, action: str, xml: str, object_id: int) -> DriverRun:
        """``one_datastore``'s ``do_image_action`` for an image/file datastore."""
        payload = base64.b64encode(xml.encode()).decode()
        if self.version >= (6, 8):
            argv, stdin = [str(object_id)], payload
        else:
            argv, stdin = [payload, str(object_id)], None
        run = DriverRun("datastore", ds_mad, action, argv, stdin, {}, object_id)
        if not (self.remotes / "datastore" / ds_mad).is_dir():
            return self._refused(run, f"Datastore driver '{ds_mad}' not available")
        run = self._execute(run, self.remotes / "datastore" / ds_mad / action)
        if run.ok and action == "monitor":  # the driver base64s the monitor output
            run.info = base64.b64encode(run.stdout.encode()).decode()
        return run

    def system_monitor(self, tm_mad: str, xml: str, ds_id: int) -> DriverRun:
        """MONITOR of a system datastore: ``one_datastore`` runs the TM's monitor."""
        payload = base64.b64encode(xml.encode()).decode()
        if self.version >= (6, 8):
            argv, stdin = [str(ds_id)], payload
        else:
            argv, stdin = [payload, str(ds_id)], None
        run = DriverRun("tm", tm_mad, "monitor", argv, stdin, {}, ds_id)
        if not (self.remotes / "tm" / tm_mad).is_dir():
            return self._refused(run, f"System datastore driver '{tm_mad}' not available")
        run = self._execute(run, self.remotes / "tm" / tm_mad / "monitor")
        if run.ok:  # the driver base64s the monitor output (do_image_action encode64)
            run.info = base64.b64encode(run.stdout.encode()).decode()
        return run

    # -- transfer manager driver ------------------------------------------------------------

    def tm_line(self, vm_id: int, line: list[str], stdin: str | None = None) -> DriverRun:
        """One transfer line (``do_transfer_action``): ``[ACTION[.SYS], TM_MAD, args...]``."""
        command, tm_mad, args = line[0].lower(), line[1], line[2:]
        run = DriverRun("tm", tm_mad, command, list(args), stdin, {}, vm_id)
        if not (self.remotes / "tm" / tm_mad).is_dir():
            return self._refused(run, f"Transfer Driver '{tm_mad}' not available")
        path = self.remotes / "tm" / tm_mad / command
        if not path.exists():
            base, dot, _suffix = command.partition(".")
            shorter = self.remotes / "tm" / tm_mad / base
            if not dot:
                return self._refused(run, f"Driver path '{path}' does not exists")
            if not shorter.exists():
                return self._refused(run, f"Driver path '{path}' nor '{shorter}' exists")
            path, run.action = shorter, base
        return self._execute(run, path)

    def transfer(self, vm_id: int, lines: list[list[str]]) -> tuple[bool, str]:
        """A whole transfer file (``action_transfer``): success, or the first failure's
        error text."""
        for line in lines:
            run = self.tm_line(vm_id, line)
            if not run.ok:
                return False, run.info
        return True, ""

    # -- VMM local actions ------------------------------------------------------------------

    def vmm_script(self, action: str, default_name: str | None = None) -> str | None:
        """The script a local VMM action runs (``action_script_name``), or None when the
        action is not local: the hypervisor does it on the host."""
        key = action.upper()
        if key not in self.vmm_local:
            return None
        return self.vmm_local[key] or default_name or action.lower()

    def vmm(self, action: str, script: str, params: list[str], vm_id: int, host: str,
            stdin: str) -> DriverRun:
        """``do_action`` of a local action: parameters, id and host on the command line,
        stdin base64 (``Base64.strict_encode64``)."""
        argv = [*params, str(vm_id), host]
        encoded = base64.b64encode(stdin.encode()).decode()
        run = DriverRun("vmm", "kvm", script, argv, encoded, {}, vm_id)
        path = self.remotes / "vmm" / "kvm" / script
        if not path.exists():
            # run through the shell (quoted parameters): sh reports the missing script
            run.env = self._logged_env()
            run.script, run.exit, run.stderr = str(path), 127, f"sh: 1: {path}: not found\n"
            run.info = error_info(run.stderr, self.version)
            self._record(run)
            return run
        run.extra["action"] = action
        return self._execute(run, path)

    # -- plumbing ---------------------------------------------------------------------------

    def _logged_env(self) -> dict[str, str]:
        return {k: v for k, v in sorted(self.env.items()) if LOGGED_ENV.match(k)}

    def _refused(self, run: DriverRun, message: str) -> DriverRun:
        """The driver process answers FAILURE without running anything."""
        run.env, run.exit, run.info = self._logged_env(), -1, message
        self._record(run)
        return run

    def _execute(self, run: DriverRun, path: Path) -> DriverRun:
        run.script, run.env = str(path), self._logged_env()
        try:
            # A driver never inherits oned's stdin: no stdin means an empty one.
            done = subprocess.run([str(path), *run.argv], input=run.stdin or "",
                                  capture_output=True, text=True, env=self.env, cwd=self.cwd,
                                  timeout=DRIVER_TIMEOUT)
            run.exit, run.stdout, run.stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired:
            # GenericCommand#run: the message replaces stderr, exit 255
            run.exit, run.stderr = 255, f"Timeout executing {path} {' '.join(run.argv)}"
        except OSError as exc:
            # Errno from spawning (missing or not executable): "Internal error <message>"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            run.exit, run.stderr = 255, f"Internal error {reason} - {path}"
        if run.exit == 0:
            run.info = run.stdout
        elif run.stderr.startswith(("Timeout executing", "Internal error")):
            run.info = run.stderr  # set by the Ruby side, not by the script
        else:
            run.info = error_info(run.stderr, self.version)
        self._record(run)
        return run

    def _record(self, run: DriverRun) -> None:
        with self.lock:
            self.log.append(run)
            write_oned_log(run, self.log_stream)
