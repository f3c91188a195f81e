"""The ``onehook`` templates: one per route of the subscriber (same trigger, same handler).

Each runs ``<command> hooks run <route>`` on the front-end with the hook's argument
(``$TEMPLATE``, the object of a STATE hook, or ``$API``, the CALL_INFO of an API hook) on
standard input (``ARGUMENTS_STDIN="YES"``: a VM body can be larger than a command line).
"""

from __future__ import annotations

PREFIX = "storpool-"  # the hooks' names: storpool-vm.done, ...

# route -> the template's own attributes (NAME, COMMAND and the rest are added)
TRIGGERS: dict[str, dict[str, str]] = {
    "vm.done": {"TYPE": "state", "RESOURCE": "VM", "ON": "DONE", "ARGUMENTS": "$TEMPLATE"},
    "vm.suspended": {"TYPE": "state", "RESOURCE": "VM", "ON": "CUSTOM", "STATE": "SUSPENDED",
                     "LCM_STATE": "LCM_INIT", "ARGUMENTS": "$TEMPLATE"},
    "vm.stopped": {"TYPE": "state", "RESOURCE": "VM", "ON": "CUSTOM", "STATE": "STOPPED",
                   "LCM_STATE": "LCM_INIT", "ARGUMENTS": "$TEMPLATE"},
    # HookStateVM (src/hm/HookStateVM.cc): ON=RUNNING is ACTIVE/RUNNING
    "vm.running": {"TYPE": "state", "RESOURCE": "VM", "ON": "RUNNING",
                   "ARGUMENTS": "$TEMPLATE"},
    "image.delete": {"TYPE": "api", "CALL": "one.image.delete", "ARGUMENTS": "$API"},
    "disk.snapshot": {"TYPE": "api", "CALL": "one.vm.disksnapshotcreate",
                      "ARGUMENTS": "$API"},
}
TIMEOUT = 600  # seconds: a remote backup may take a while


def name(route: str) -> str:
    return f"{PREFIX}{route}"


def template(route: str, command: str) -> str:
    """The ``onehook create`` text of ``route``'s hook."""
    attributes = {"NAME": name(route), **TRIGGERS[route],
                  "COMMAND": f"{command} hooks run {route}", "ARGUMENTS_STDIN": "YES",
                  "TIMEOUT": str(TIMEOUT)}
    return "".join(f'{key} = "{value}"\n' for key, value in attributes.items())
