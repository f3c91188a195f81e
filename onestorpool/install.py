"""``onestorpool install``: oned configured for the add-on in one step, and undone in one.

What the seed's installation chapter asks an admin to do by hand, done idempotently:

* the driver executables into oned's remotes, their interpreter fixed
  (:func:`onestorpool.drivers.install.install_remotes`; packages ship them and skip this);
* ``/etc/one/oned.conf``: ``storpool`` in the ``TM_MAD`` ``-d`` list and the
  ``DATASTORE_MAD`` ``-d`` and ``-s`` lists, a ``TM_MAD_CONF`` and a ``DS_MAD_CONF`` for
  storpool, the ``VM_RESTRICTED_ATTR`` lines, the KVM ``VM_MAD`` local actions of the VMM
  scripts the add-on ships (the VM snapshot ones with ``--vm-snapshots``);
* ``LIVE_DISK_SNAPSHOTS`` in ``vmm_exec/vmm_execrc`` gets ``kvm-storpool``;
* oneadmin in group ``disk``.

Each file is changed by exact text edits (:mod:`onestorpool.onedconf`): comments and layout
stay, the first change keeps a backup (``<file>.onestorpool-backup``), every change is
recorded in a state file, a second run finds nothing to do, and ``--uninstall`` reverses the
recorded edits, which gives the original bytes back. ``--dry-run`` shows the diff and writes
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from onestorpool import onedconf
from onestorpool.config import remotes_dir, root
from onestorpool.errors import InputError
from onestorpool.onedconf import Edit, EditConflict

# seed, installation chapter (the add-on's contract with oned, reference addon-storpool.md §6)
TM_MAD_CONF = (
    ("NAME", "storpool"), ("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "yes"),
    ("DS_MIGRATE", "yes"), ("DRIVER", "raw"), ("ALLOW_ORPHANS", "yes"),
    ("TM_MAD_SYSTEM", "ssh,shared"), ("LN_TARGET_SSH", "NONE"), ("CLONE_TARGET_SSH", "SELF"),
    ("DISK_TYPE_SSH", "BLOCK"), ("LN_TARGET_SHARED", "NONE"), ("CLONE_TARGET_SHARED", "SELF"),
    ("DISK_TYPE_SHARED", "BLOCK"),
)
DS_MAD_CONF = (
    ("NAME", "storpool"), ("REQUIRED_ATTRS", "DISK_TYPE"), ("PERSISTENT_ONLY", "NO"),
    ("MARKETPLACE_ACTIONS", "export"),
)
VM_RESTRICTED_ATTRS = ("VMSNAPSHOT_LIMIT", "DISKSNAPSHOT_LIMIT", "VC_POLICY")
# file under remotes/vmm/kvm → the VM_MAD local action it serves (``-l action=file``);
# configured only for the files the add-on ships, so the list grows with the VMM drivers
LOCAL_ACTIONS = {
    "deploy-tweaks": "deploy",
    "attach_disk.storpool": "attach_disk",
    "detach_disk.storpool": "detach_disk",
    "tmsave": "save",
    "tmrestore": "restore",
    "migrate-tweaks": "migrate",
}
SNAPSHOT_ACTIONS = {
    "snapshot_create-storpool": "snapshotcreate",
    "snapshot_revert-storpool": "snapshotrevert",
    "snapshot_delete-storpool": "snapshotdelete",
}
LIVE_SNAPSHOT_DRIVER = "kvm-storpool"
GROUP = "disk"
USER = "oneadmin"
BACKUP_SUFFIX = ".onestorpool-backup"


def etc_dir() -> Path:
    one_location = os.environ.get("ONE_LOCATION")
    return Path(one_location) / "etc" if one_location else root() / "etc/one"


def state_path() -> Path:
    return etc_dir() / "onestorpool-install.json"


def local_actions(shipped: Path, vm_snapshots: bool = False) -> dict[str, str]:
    """``action → file`` for the KVM local-action scripts shipped under ``shipped``."""
    table = dict(LOCAL_ACTIONS, **(SNAPSHOT_ACTIONS if vm_snapshots else {}))
    kvm = shipped / "vmm" / "kvm"
    return {action: name for name, action in table.items() if (kvm / name).is_file()}


# -- oned.conf ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The edits one file needs, and what the admin should know about it."""

    path: Path
    edits: list[Edit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _vector_text(name: str, members: Iterable[tuple[str, str]], indent: str = "    ") -> str:
    body = ",\n".join(f'{indent}{key} = "{value}"' for key, value in members)
    return f"{name} = [\n{body}\n]\n"


def _block(text: str, attribute: onedconf.Attribute) -> str:
    start, end = onedconf.line_span(text, attribute.start, attribute.end)
    return text[start:end]


def _replace_value(text: str, attribute: onedconf.Attribute, value: onedconf.Value,
                   new_value: str) -> tuple[str, str]:
    """(old block, new block): the attribute's whole lines with one value rewritten."""
    start, end = onedconf.line_span(text, attribute.start, attribute.end)
    token = f'"{new_value}"' if value.quoted else new_value
    new = text[start:value.start] + token + text[value.end:end]
    return text[start:end], new


def _add_to_list(arguments: str, option: str, item: str) -> str:
    """``-d a,b`` → ``-d a,b,<item>`` in a driver's ARGUMENTS (added if missing)."""
    match = re.search(rf"(^|\s){option}\s+(\S+)", arguments)
    if match is None:
        return f"{arguments.rstrip()} {option} {item}"
    items = match.group(2).split(",")
    if item in items:
        return arguments
    return arguments[:match.end(2)] + "," + item + arguments[match.end(2):]


def _list_items(arguments: str, option: str) -> list[str]:
    match = re.search(rf"(^|\s){option}\s+(\S+)", arguments)
    return match.group(2).split(",") if match else []


def _merge_local_actions(arguments: str, wanted: Mapping[str, str],
                         notes: list[str]) -> str:
    match = re.search(r"(^|\s)-l\s+(\S+)", arguments)
    current = dict(pair.split("=", 1) for pair in match.group(2).split(",") if "=" in pair) \
        if match else {}
    added = []
    for action, script in wanted.items():
        if action not in current:
            added.append(f"{action}={script}")
        elif current[action] != script:
            notes.append(f"VM_MAD kvm: local action {action} runs {current[action]}, not the "
                         f"add-on's {script}: left as it is")
    if not added:
        return arguments
    if match is None:
        return f"{arguments.rstrip()} -l {','.join(added)}"
    return arguments[:match.end(2)] + "," + ",".join(added) + arguments[match.end(2):]


def _insert_after(text: str, anchor: onedconf.Attribute, what: str, addition: str) -> Edit:
    old = _block(text, anchor)
    return Edit(what, old, old + addition)


def _differences(attribute: onedconf.Attribute, wanted: Iterable[tuple[str, str]]) -> list[str]:
    out = []
    for key, value in wanted:
        have = attribute.get(key)
        if have is None or have.text.lower() != value.lower():
            out.append(f"{key}={'(unset)' if have is None else have.text!r} (add-on: {value!r})")
    return out


def oned_conf_plan(path: Path, text: str, actions: Mapping[str, str]) -> Plan:
    """The edits ``text`` (oned.conf) needs; each is computed on the result of the ones
    before, so they apply in order."""
    plan = Plan(path)

    def step(edit: Edit | None) -> None:
        nonlocal text
        if edit is not None and edit.old != edit.new:
            text = onedconf.apply(text, edit)
            plan.edits.append(edit)

    def driver_lists(name: str, options: tuple[str, ...]) -> Edit | None:
        found = onedconf.find(onedconf.parse(text), name)
        if not found or found[-1].get("ARGUMENTS") is None:
            plan.notes.append(f"{name} with ARGUMENTS not found: add storpool to it by hand")
            return None
        attribute = found[-1]
        value = attribute.get("ARGUMENTS")
        assert value is not None
        arguments = value.text
        for option in options:
            arguments = _add_to_list(arguments, option, "storpool")
        old, new = _replace_value(text, attribute, value, arguments)
        return Edit(f"storpool in {name} {' and '.join(options)}", old, new)

    step(driver_lists("TM_MAD", ("-d",)))
    step(driver_lists("DATASTORE_MAD", ("-d", "-s")))

    for name, wanted in (("TM_MAD_CONF", TM_MAD_CONF), ("DS_MAD_CONF", DS_MAD_CONF)):
        attributes = onedconf.parse(text)
        existing = onedconf.find(attributes, name, NAME="storpool")
        if existing:
            differences = _differences(existing[-1], wanted)
            if differences:
                plan.notes.append(f"{name} storpool exists and differs: "
                                  f"{', '.join(differences)}; left as it is")
            continue
        anchors = onedconf.find(attributes, name) or attributes[-1:]
        if not anchors:
            raise InputError(f"{path}: no attribute at all, is this oned.conf?")
        step(_insert_after(text, anchors[-1], f"{name} for storpool",
                           "\n" + _vector_text(name, wanted)))

    attributes = onedconf.parse(text)
    restricted = onedconf.find(attributes, "VM_RESTRICTED_ATTR")
    have = {a.value.text.upper() for a in restricted if a.value is not None}
    missing = [name for name in VM_RESTRICTED_ATTRS if name not in have]
    if missing:
        anchor = restricted[-1] if restricted else attributes[-1]
        lines = "".join(f'VM_RESTRICTED_ATTR = "{name}"\n' for name in missing)
        step(_insert_after(text, anchor, "VM_RESTRICTED_ATTR for the add-on's VM attributes",
                           lines if restricted else "\n" + lines))

    if actions:
        kvm = onedconf.find(onedconf.parse(text), "VM_MAD", NAME="kvm")
        if not kvm or kvm[-1].get("ARGUMENTS") is None:
            plan.notes.append("VM_MAD kvm not found: the add-on's local actions are not "
                              "configured")
        else:
            value = kvm[-1].get("ARGUMENTS")
            assert value is not None
            arguments = _merge_local_actions(value.text, actions, plan.notes)
            old, new = _replace_value(text, kvm[-1], value, arguments)
            step(Edit("VM_MAD kvm local actions", old, new))
    return plan


def vmm_execrc_plan(path: Path, text: str) -> Plan:
    plan = Plan(path)
    pattern = re.compile(r'^(LIVE_DISK_SNAPSHOTS=)(["\']?)(.*?)\2[ \t]*$', re.MULTILINE)
    matches = list(pattern.finditer(text))
    if not matches:
        plan.notes.append(f"{path}: no LIVE_DISK_SNAPSHOTS line: add "
                          f'LIVE_DISK_SNAPSHOTS="{LIVE_SNAPSHOT_DRIVER}" by hand')
        return plan
    match = matches[-1]
    drivers = match.group(3).split()
    # qemu VMs (7.0's VM_MAD qemu) run with the same TM drivers
    wanted = [LIVE_SNAPSHOT_DRIVER] + (
        [LIVE_SNAPSHOT_DRIVER.replace("kvm-", "qemu-")]
        if any(d.startswith("qemu-") for d in drivers) else [])
    missing = [d for d in wanted if d not in drivers]
    if not missing:
        return plan
    start, end = onedconf.line_span(text, match.start(), match.end())
    quote = match.group(2) or '"'
    line = f"{match.group(1)}{quote}{' '.join([*drivers, *missing])}{quote}"
    old = text[start:end]
    plan.edits.append(Edit(f"{' and '.join(missing)} in LIVE_DISK_SNAPSHOTS", old,
                           old.replace(match.group(0), line, 1)))
    return plan


# -- files --------------------------------------------------------------------------------------


def write_like(path: Path, data: str, like: Path | None = None) -> None:
    """Replace ``path`` atomically, with the mode and owner of ``like`` (default: itself)."""
    path = path.resolve()  # a linked oned.conf stays a link; its target is rewritten
    reference = (like or path).stat()
    temporary = path.with_name(f".{path.name}.onestorpool-new")
    with open(temporary, "wb") as out:
        out.write(data.encode("utf-8", "surrogateescape"))
        out.flush()
        os.fsync(out.fileno())
    os.chmod(temporary, reference.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(temporary, reference.st_uid, reference.st_gid)
    os.replace(temporary, path)


def _read(path: Path) -> str:
    # surrogateescape: bytes that are not UTF-8 survive the round trip unchanged
    return path.read_bytes().decode("utf-8", "surrogateescape")


def diff(path: Path, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        f"{path}", f"{path} (onestorpool install)"))


# -- the group ----------------------------------------------------------------------------------


def user_in_group(user: str = USER, group: str = GROUP) -> bool | None:
    """Whether ``user`` is in ``group`` (None: one of them does not exist here)."""
    try:
        entry = grp.getgrnam(group)
        account = pwd.getpwnam(user)
    except KeyError:
        return None
    return user in entry.gr_mem or account.pw_gid == entry.gr_gid


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


# -- the command --------------------------------------------------------------------------------


@dataclass
class Options:
    oned_conf: Path
    vmm_execrc: Path
    dry_run: bool = False
    skip_oned: bool = False
    skip_vmm_execrc: bool = False
    skip_remotes: bool = False
    skip_group: bool = False
    vm_snapshots: bool = False
    python: str | None = None


def _load_state() -> dict:
    path = state_path()
    if path.is_file():
        return json.loads(path.read_text())
    return {"files": {}, "remotes": [], "group_added": False}


def _save_state(state: dict) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def install(options: Options, out: Callable[[str], None] = print,
            run: Callable[[list[str]], None] = _run) -> int:
    """Bring the files to the add-on's configuration; 0 when done (or nothing to do)."""
    from onestorpool.drivers.install import install_remotes, shipped_remotes

    state = _load_state()
    plans: list[Plan] = []
    if not options.skip_oned and options.oned_conf.exists():
        actions = local_actions(shipped_remotes(), options.vm_snapshots)
        plans.append(oned_conf_plan(options.oned_conf, _read(options.oned_conf), actions))
    elif not options.skip_oned:
        out(f"{options.oned_conf} not found: oned.conf left alone (front-end without oned? "
            "use --skip-oned)")
    if not options.skip_vmm_execrc:
        if options.vmm_execrc.exists():
            plans.append(vmm_execrc_plan(options.vmm_execrc, _read(options.vmm_execrc)))
        else:
            out(f"{options.vmm_execrc} not found: LIVE_DISK_SNAPSHOTS not set")
    changed = False
    for plan in plans:
        for note in plan.notes:
            out(f"note: {note}")
        if not plan.edits:
            continue
        changed = True
        before = _read(plan.path)
        after = before
        for edit in plan.edits:
            after = onedconf.apply(after, edit)
        if options.dry_run:
            out(diff(plan.path, before, after).rstrip("\n"))
            continue
        key = str(plan.path)
        record = state["files"].setdefault(key, {"backup": None, "edits": []})
        if record["backup"] is None:
            backup = plan.path.with_name(plan.path.name + BACKUP_SUFFIX)
            shutil.copy2(plan.path, backup)
            if os.geteuid() == 0:
                stat = plan.path.stat()
                os.chown(backup, stat.st_uid, stat.st_gid)
            record["backup"] = str(backup)
        record["edits"].extend(edit.to_json() for edit in plan.edits)
        _save_state(state)  # before the file: a crash leaves edits recorded, never unrecorded
        write_like(plan.path, after)
        for edit in plan.edits:
            out(f"{plan.path}: {edit.what}")

    if not options.skip_remotes:
        target = remotes_dir()
        if options.dry_run:
            out(f"would install the driver executables into {target}")
        else:
            stale = stale_remotes(target, options.python)
            if stale:
                changed = True
                installed = install_remotes(target, options.python)
                _own_like_remotes(installed, target)
                state["remotes"] = sorted({*state["remotes"], *map(str, installed)})
                _save_state(state)
                out(f"{len(stale)} of {len(installed)} driver executables installed or updated "
                    f"in {target} (interpreter {options.python or sys.executable})")

    if not options.skip_group:
        member = user_in_group()
        if member is None:
            out(f"note: user {USER} or group {GROUP} does not exist here: add {USER} to "
                f"{GROUP} once OpenNebula is installed")
        elif not member:
            changed = True
            if options.dry_run:
                out(f"would add {USER} to group {GROUP}")
            else:
                run(["usermod", "-a", "-G", GROUP, USER])
                state["group_added"] = True
                _save_state(state)
                out(f"{USER} added to group {GROUP}")

    if options.dry_run:
        out("dry run: nothing written" if changed else "nothing to change")
    elif changed:
        out("restart oned (systemctl restart opennebula) and, as oneadmin, "
            "onehost sync --force")
    else:
        out("nothing to change")
    return 0


def uninstall(options: Options, out: Callable[[str], None] = print,
              run: Callable[[list[str]], None] = _run) -> int:
    """Undo what :func:`install` recorded: every file edited gets its original lines back
    (all of a file's edits or none of them); 1 when some could not be undone."""
    state = _load_state()
    failed = False
    for key, record in list(state["files"].items()):
        path = Path(key)
        if (options.skip_oned and path == options.oned_conf) or \
                (options.skip_vmm_execrc and path == options.vmm_execrc):
            continue
        if not path.exists():
            out(f"{path} is gone: nothing to undo there")
            del state["files"][key]
            continue
        current = _read(path)
        text = current
        try:
            for data in reversed(record["edits"]):
                text = onedconf.undo(text, Edit.from_json(data))
        except EditConflict as exc:
            out(f"{path}: {exc}")
            failed = True
            continue
        backup = Path(record["backup"]) if record["backup"] else None
        identical = backup is not None and backup.exists() and _read(backup) == text
        if options.dry_run:
            out(diff(path, current, text).rstrip("\n"))
            continue
        write_like(path, text)
        if identical:
            assert backup is not None
            backup.unlink()
            out(f"{path}: restored to the original, byte for byte")
        else:
            out(f"{path}: the add-on's edits undone, later changes of yours kept"
                + (f" (the original is in {backup})" if backup else ""))
        del state["files"][key]
        _save_state(state)

    if not options.skip_remotes and state["remotes"]:
        if options.dry_run:
            out(f"would remove {len(state['remotes'])} driver executables")
        else:
            for name in state["remotes"]:
                Path(name).unlink(missing_ok=True)
                _remove_empty_parents(Path(name), remotes_dir())
            out(f"{len(state['remotes'])} driver executables removed")
            state["remotes"] = []
            _save_state(state)

    if not options.skip_group and state.get("group_added"):
        if options.dry_run:
            out(f"would remove {USER} from group {GROUP}")
        else:
            run(["gpasswd", "-d", USER, GROUP])
            state["group_added"] = False
            _save_state(state)
            out(f"{USER} removed from group {GROUP} (it was added by onestorpool install)")

    if not options.dry_run and not failed and not state["files"] and not state["remotes"] \
            and not state.get("group_added"):
        state_path().unlink(missing_ok=True)
    return 1 if failed else 0


def _own_like_remotes(installed: list[Path], target: Path) -> None:
    """Files and directories root created under oned's remotes get their owner (oneadmin),
    as ``onehost sync`` and oned expect."""
    if os.geteuid() != 0:
        return
    owner = target.stat()
    for path in installed:
        for node in (path, *path.relative_to(target).parents):
            where = target / node if not node.is_absolute() else node
            if where != target:
                os.chown(where, owner.st_uid, owner.st_gid)


def stale_remotes(target: Path, python: str | None) -> list[Path]:
    """The driver executables under ``target`` that are missing or differ (content or mode)
    from what :func:`install_remotes` writes; it renders them into a scratch directory."""
    import tempfile

    from onestorpool.drivers.install import install_remotes

    with tempfile.TemporaryDirectory() as scratch:
        stale = []
        for rendered in install_remotes(Path(scratch), python):
            installed = target / rendered.relative_to(scratch)
            if not installed.is_file() or installed.read_bytes() != rendered.read_bytes() or \
                    installed.stat().st_mode & 0o777 != rendered.stat().st_mode & 0o777:
                stale.append(installed)
        return stale


def _remove_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One run at a time (a package post-install and an admin, say): the second waits."""
    import fcntl

    path = state_path().with_name(".onestorpool-install.lock")
    if not path.parent.is_dir():
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if not state_path().exists():  # nothing installed: nothing of ours stays
                path.unlink(missing_ok=True)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Configure oned for the add-on: storpool in TM_MAD/DATASTORE_MAD, TM_MAD_CONF and "
        "DS_MAD_CONF, VM_RESTRICTED_ATTR, the KVM local actions shipped, LIVE_DISK_SNAPSHOTS, "
        "oneadmin in group disk, the driver executables in oned's remotes. Idempotent; "
        "--uninstall restores the files.")
    parser.add_argument("--dry-run", action="store_true",
                        help="show the diff of every file and what else would be done; "
                             "write nothing")
    parser.add_argument("--uninstall", action="store_true",
                        help="undo what earlier runs did (files back to their original bytes)")
    parser.add_argument("--oned-conf", type=Path, default=None,
                        help="oned.conf to edit (default: /etc/one/oned.conf, "
                             "$ONE_LOCATION/etc/oned.conf)")
    parser.add_argument("--vmm-execrc", type=Path, default=None,
                        help="vmm_execrc to edit (default: vmm_exec/vmm_execrc beside oned.conf)")
    parser.add_argument("--skip-oned", action="store_true", default=_env_flag("SKIP_ONED"),
                        help="leave oned.conf alone (a host without oned; also SKIP_ONED=1)")
    parser.add_argument("--skip-vmm-execrc", action="store_true",
                        help="leave vmm_execrc alone")
    parser.add_argument("--skip-remotes", action="store_true",
                        help="do not copy the driver executables (the packages ship them)")
    parser.add_argument("--skip-group", action="store_true",
                        help="do not add oneadmin to group disk")
    parser.add_argument("--vm-snapshots", action="store_true",
                        help="also the add-on's VM snapshot local actions (when shipped)")
    parser.add_argument("--python", default=None,
                        help="interpreter the driver executables run with (default: this one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    oned_conf = args.oned_conf or etc_dir() / "oned.conf"
    options = Options(
        oned_conf=oned_conf,
        vmm_execrc=args.vmm_execrc or oned_conf.parent / "vmm_exec" / "vmm_execrc",
        dry_run=args.dry_run, skip_oned=args.skip_oned, skip_vmm_execrc=args.skip_vmm_execrc,
        skip_remotes=args.skip_remotes, skip_group=args.skip_group,
        vm_snapshots=args.vm_snapshots, python=args.python)
    try:
        with _locked():
            return (uninstall if args.uninstall else install)(options)
    except (onedconf.ParseError, EditConflict) as exc:
        raise InputError(f"{options.oned_conf}: {exc}") from None
