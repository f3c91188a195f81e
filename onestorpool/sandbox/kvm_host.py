"""The hypervisor of a sandbox host: libvirt's test driver with a state kept between commands,
and the native KVM scripts (``<host>/var/tmp/one/vmm/kvm/``) as ``onehost sync`` leaves
OpenNebula's there on a real node.

**libvirt.** Each host has a state file, ``<host>/var/lib/libvirt/sandbox/node.xml``: a
custom node document of libvirt's test driver (``virsh -c test:///<that file>`` loads it).
The host's ``virsh`` (:func:`virsh_main`, found first on the ``PATH`` the sandbox host gives
its commands: :func:`host_path`) runs the real ``virsh`` on that state, then saves what the
command left back, atomically, under a lock: running and shut-off domains, transient or
persistent, and a running domain's persistent definition where it differs from the live one
(libvirt's own node format holds one definition per domain; that one is re-defined after
loading). Whatever ``-c`` URI a command names, it reaches the host's state (a host has one
hypervisor), so product code runs plain ``virsh -c $LIBVIRT_URI`` and never knows.

**Native scripts.** The add-on's local actions (``deploy-tweaks``, ``attach_disk.storpool``,
``tmsave``/``tmrestore``) do their part on the front-end and then hand over to these:
``deploy`` resolves the VM folder's ``disk.N`` links as OpenNebula 6.10's does, then creates
the domain (transient, ``virsh create``, as that deploy does); ``save`` saves it into the
checkpoint path (a link to the StorPool volume when the checkpoint is on StorPool) and
``restore`` restores it from there; ``attach_disk`` and ``detach_disk`` accept. ``virsh
migrate`` between two sandbox hosts moves the domain (:func:`migrate`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

STATE_DIR = "var/lib/libvirt/sandbox"  # under the host's directory
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"  # the test driver's domain extras
SANDBOX_NS = "urn:onestorpool:sandbox:libvirt"  # ours: persistent definitions of running ones
# ``virsh domstate`` → the test driver's <test:runstate> (virDomainState)
RUNSTATES = {"running": 1, "idle": 2, "blocked": 2, "paused": 3, "in shutdown": 4,
             "shut off": 5, "crashed": 6, "pmsuspended": 7}
SHUTOFF = 5

SCRIPTS = {
    "deploy": """#!/bin/sh
# deploy <deployment file> <host> <vm id> <host>, the domain XML on stdin. As OpenNebula
# 6.10's vmm/kvm/deploy: the VM folder's disk.N links of file disks (device "disk", not the
# context CD-ROM) replaced by their targets in the file. Then the host's libvirt creates it,
# transient ("virsh create"); a domain of that name a previous deploy left (the sandbox's
# oned stops no domain on the host at poweroff or undeploy) is dropped first.
set -e
mkdir -p "$(dirname "$1")"
cat > "$1"
root=${0%/var/tmp/one/vmm/kvm/deploy}  # the host's directory: its paths are under it
name=$(sed -n 's:.*<name>\\(.*\\)</name>.*:\\1:p' "$1" | head -n1)
if command -v xmllint >/dev/null 2>&1; then
    files=$(xmllint --xpath '//disk[@type="file" and @device="disk"]/source/@file' "$1" \\
        2>/dev/null | sed -e 's/file=/\\n/g' | tr -d '"' || true)
    for f in $files; do
        case "$f" in */disk.[0-9]*) ;; *) continue;; esac
        [ -L "$root$f" ] || continue
        target=$(readlink "$root$f")
        [ -e "$target" ] || continue
        sed -i "s#source file=\\([\\"']\\)$f\\1#source file=\\1$target\\1#" "$1"
    done
fi
if command -v virsh >/dev/null 2>&1; then
    if virsh dominfo "$name" >/dev/null 2>&1; then
        virsh destroy "$name" >/dev/null 2>&1 || true
        virsh undefine "$name" >/dev/null 2>&1 || true
    fi
    virsh create "$1" >"$1.virsh" 2>&1 || { cat "$1.virsh" >&2; exit 1; }
fi
echo "$name"
""",
    "save": """#!/bin/sh
# save <domain> <checkpoint> <host> <vm id>: the host's libvirt saves the domain into the
# checkpoint (a domain it does not know is first created from the VM folder's last
# deployment file); without virsh, 1 MiB of "memory"
set -e
dir=$(dirname "$2")
deployment=$(ls -1 "$dir"/deployment.* 2>/dev/null | grep -v virsh | sort -t. -k2 -n | tail -n1)
if command -v virsh >/dev/null 2>&1 && [ -n "$deployment" ]; then
    out=$(mktemp)
    if ! virsh domstate "$1" 2>/dev/null | grep -q running; then
        virsh undefine "$1" >/dev/null 2>&1 || true
        virsh create "$deployment" >"$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; exit 1; }
    fi
    virsh save "$1" "$2" >"$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; exit 1; }
    rm -f "$out"
else
    head -c 1048576 /dev/urandom | dd of="$2" conv=notrunc,fsync status=none
fi
""",
    "restore": """#!/bin/sh
# restore <checkpoint> <host> <domain> <vm id> <host>: the host's libvirt reads it back
# (a checkpoint that is not a libvirt save image is only read)
set -e
out=$(mktemp)
if command -v virsh >/dev/null 2>&1 && head -c 16 "$1" | grep -q TestGuestMagic; then
    virsh restore "$1" >"$out" 2>&1 || {
        cat "$out" >&2; rm -f "$out"; exit 1; }
else
    head -c 1048576 "$1" > /dev/null
fi
rm -f "$out"
""",
    "attach_disk": "#!/bin/sh\ncat > /dev/null\n",
    "detach_disk": "#!/bin/sh\ncat > /dev/null\n",
}


def install_native_kvm(host_dir: Path) -> Path:
    """The stand-ins under ``host_dir``'s ``var/tmp/one/vmm/kvm`` (kept if present: tests may
    put their own there), and the host's libvirt."""
    install_libvirt(host_dir)
    kvm = host_dir / "var/tmp/one/vmm/kvm"
    kvm.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        script = kvm / name
        if not script.exists():
            script.write_text(text)
            script.chmod(0o755)
    return kvm


# -- the host's libvirt ------------------------------------------------------------------------


def state_file(host_dir: Path) -> Path:
    """The test driver node document holding the host's domains."""
    return Path(host_dir).resolve() / STATE_DIR / "node.xml"


def wrapper_dir(host_dir: Path) -> Path:
    return Path(host_dir).resolve() / STATE_DIR / "bin"


def install_libvirt(host_dir: Path) -> Path:
    """The host's ``virsh`` (a program running :func:`virsh_main` for this host) and an empty
    state; both kept if present."""
    directory = wrapper_dir(host_dir)
    wrapper = directory / "virsh"
    if not wrapper.exists():
        _create(wrapper, f"#!{sys.executable}\n# the sandbox host's virsh: libvirt's test "
                "driver on the host's state file\nimport sys\n\nfrom "
                "onestorpool.sandbox.kvm_host import virsh_main\n\n"
                f"sys.exit(virsh_main({str(Path(host_dir).resolve())!r}, sys.argv[1:]))\n",
                mode=0o755)
    state = state_file(host_dir)
    if not state.exists():
        _create(state, "<node/>\n")
    return wrapper


def _create(path: Path, text: str, mode: int = 0o644) -> None:
    """``path`` with ``text``, complete or not at all, unless another process made it first
    (never overwritten: the state may hold domains by then)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _virsh_entry(entries: Sequence[str], skip: Path | None = None) -> int | None:
    """The index of the first ``PATH`` entry holding libvirt's ``virsh`` (a binary: scripts
    there are tests' own stand-ins, which stay in front), ``skip`` skipped."""
    for index, entry in enumerate(entries):
        if not entry or (skip is not None and Path(entry).resolve() == skip):
            continue
        candidate = Path(entry) / "virsh"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with candidate.open("rb") as handle:
                if handle.read(2) != b"#!":
                    return index
    return None


def real_virsh(path: str, skip: Path | None = None) -> str | None:
    """libvirt's ``virsh`` on ``path`` (outside ``skip``)."""
    entries = path.split(os.pathsep)
    index = _virsh_entry(entries, skip)
    return None if index is None else str(Path(entries[index]) / "virsh")


def host_path(host_dir: Path, path: str) -> str:
    """``path`` with the host's ``virsh`` in front of libvirt's (and behind a test's own
    stand-in placed before it); unchanged when libvirt's ``virsh`` is not installed."""
    entries = path.split(os.pathsep)
    wrappers = str(wrapper_dir(host_dir))
    index = _virsh_entry(entries)
    if index is None or wrappers in entries:
        return path
    install_libvirt(host_dir)
    return os.pathsep.join([*entries[:index], wrappers, *entries[index:]])


@dataclass
class Domain:
    """One domain of the host's state, as libvirt showed it after a command."""

    name: str
    runstate: int
    persistent: bool
    live: str  # the running definition (the persistent one when shut off)
    inactive: str | None  # a running persistent domain's definition for its next start


class VirshError(Exception):
    """The host's libvirt state cannot be read or kept."""


# virsh global options: those taking a value, and flags; -c/--connect is replaced
_VALUE_OPTIONS = {"-c", "--connect", "-d", "--debug", "-l", "--log", "-k", "--keepalive-interval",
                  "-K", "--keepalive-count", "-e", "--escape"}
_FLAG_OPTIONS = {"-q", "--quiet", "-r", "--readonly", "-t", "--timing"}
_SAFE_WORD = re.compile(r"[A-Za-z0-9_./:=@%+,-]+")


def _quote(word: str) -> str:
    """A word for virsh's command-string parser."""
    if _SAFE_WORD.fullmatch(word):
        return word
    if "'" not in word:
        return f"'{word}'"
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(global options without the URI, the command and its arguments)."""
    options: list[str] = []
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        word = argv[index]
        name = word.split("=", 1)[0]
        if name in ("-c", "--connect"):
            index += 1 if "=" in word else 2
            continue
        if name in _VALUE_OPTIONS:
            taken = 1 if "=" in word else 2
            options.extend(argv[index:index + taken])
            index += taken
            continue
        if word in _FLAG_OPTIONS:
            options.append(word)
            index += 1
            continue
        raise VirshError(f"sandbox virsh: global option {word} is not supported")
    return options, list(argv[index:])


def virsh_main(host_dir: str, argv: Sequence[str]) -> int:
    """``virsh <argv>`` on the host ``host_dir``: its output and exit status as libvirt's,
    the domains it left saved in the host's state."""
    try:
        result = run_virsh(Path(host_dir), argv, sys.stdin.buffer)
    except VirshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    return result.returncode


@dataclass
class VirshResult:
    stdout: str
    stderr: str
    returncode: int


def run_virsh(host_dir: Path, argv: Sequence[str], stdin: object = None) -> VirshResult:
    """One virsh command on the host's state, the state saved after it (see the module)."""
    options, command = split_arguments(argv)
    if not command:
        raise VirshError("sandbox virsh: a command is needed (no interactive shell)")
    if command[0] == "migrate":
        return migrate(Path(host_dir), command[1:], stdin)
    state = state_file(host_dir)
    virsh = real_virsh(os.environ.get("PATH", ""), skip=wrapper_dir(host_dir)) \
        or shutil.which("virsh")
    if virsh is None:
        raise VirshError("sandbox virsh: libvirt's virsh is not installed")
    install_libvirt(host_dir)
    with _locked(state), tempfile.TemporaryDirectory(prefix="virsh-") as scratch:
        command = _stdin_to_file(command, stdin, Path(scratch))
        domains = load_state(state)
        nonce = secrets.token_hex(8)
        candidates = [d.name for d in domains]
        candidates += [n for n in _names_in_files(command) if n not in candidates]
        script = _script(domains, command, candidates, nonce, Path(scratch))
        done = _run_virsh([virsh, "-c", f"test://{state}", *options, script])
        stdout, stderr, after = _split_output(done.stdout, done.stderr, nonce)
        kept = _domains_after(after, candidates, nonce)
        _write_atomically(state, render_state(kept))
    failed = any(line.startswith("error:") for line in stderr.splitlines())
    return VirshResult(stdout, stderr, 1 if failed else 0)


# virsh migrate's options that take a value (virsh-domain.c, libvirt 9.0); the others are
# flags. Only --xml and --persistent-xml change what the destination runs.
_MIGRATE_VALUES = {"--xml", "--persistent-xml", "--dname", "--migrateuri", "--timeout",
                   "--timeout-postcopy", "--bandwidth", "--listen-address", "--graphicsuri",
                   "--disks-port", "--disks-uri", "--migrate-disks", "--comp-methods",
                   "--comp-mt-level", "--comp-mt-threads", "--comp-mt-dthreads",
                   "--comp-xbzrle-cache", "--comp-zlib-level", "--comp-zstd-level",
                   "--parallel-connections", "--tls-destination", "--postcopy-bandwidth"}


def migrate(host_dir: Path, arguments: Sequence[str], stdin: object = None) -> VirshResult:
    """``virsh migrate [options] <domain> <desturi>`` between two sandbox hosts (libvirt's
    test driver migrates nothing): the destination, a sibling host named by the URI's host
    part (``qemu+ssh://node2/system``), creates the domain from ``--xml`` (else the source's
    live definition; the name must stay, as libvirt's ABI check wants), persistently with
    ``--persistent`` (``--persistent-xml`` else the same XML); the source then destroys it,
    and undefines it with ``--undefinesource``."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    positional: list[str] = []
    words = iter(arguments)
    for word in words:
        name, equals, value = word.partition("=")
        if name in _MIGRATE_VALUES:
            values[name] = value if equals else next(words, "")
        elif word.startswith("--"):
            flags.add(word)
        else:
            positional.append(word)
    if len(positional) < 2:
        return VirshResult("", "error: command 'migrate' requires <domain> and <desturi>\n", 1)
    domain, destination_uri = positional[:2]
    match = re.fullmatch(r"[a-z+]+://([^/:]+)(?::\d+)?/system", destination_uri)
    destination = host_dir.parent / match[1] if match else None
    if destination is None or not state_file(destination).exists():
        return VirshResult("", f"error: failed to connect to the hypervisor\nerror: unable "
                               f"to connect to {destination_uri}\n", 1)
    live = run_virsh(host_dir, ["dumpxml", domain])
    if live.returncode:
        return live
    with tempfile.TemporaryDirectory(prefix="migrate-") as scratch:
        def given(option: str) -> str | None:
            path = values.get(option)
            if path is None:
                return None
            if path == "/dev/stdin" and stdin is not None:
                return stdin.read().decode()  # type: ignore[attr-defined, no-any-return]
            return Path(path).read_text()

        running = given("--xml") or live.stdout
        persistent = given("--persistent-xml") or running
        name = _NAME.search(running.encode())
        if name is None or name[1].decode() != values.get("--dname", domain):
            return VirshResult("", "error: unsupported configuration: target domain name "
                                   "does not match source\n", 1)
        xml = Path(scratch) / "running.xml"
        xml.write_text(running)
        created = run_virsh(destination, ["create", str(xml)])
        if created.returncode:
            return created
        if "--persistent" in flags:
            xml.write_text(persistent)
            defined = run_virsh(destination, ["define", str(xml)])
            if defined.returncode:
                return defined
    run_virsh(host_dir, ["destroy", domain])
    if "--undefinesource" in flags:
        run_virsh(host_dir, ["undefine", domain])
    return VirshResult("Migration: [100 %]\n" if "--verbose" in flags else "", "", 0)


HANG_TIMEOUT = 10.0  # seconds: the test driver answers at once
ATTEMPTS = 3


def _run_virsh(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """libvirt 9.0's virsh now and then hangs in the job watcher of ``save`` (a few runs in a
    hundred, test driver alone): such a run is killed and the whole command run again, which
    is safe as its domains only reach the state file when it completes."""
    for _attempt in range(ATTEMPTS):
        try:
            return subprocess.run(argv, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, check=False, timeout=HANG_TIMEOUT)
        except subprocess.TimeoutExpired:
            continue
    raise VirshError(f"sandbox virsh: no answer in {HANG_TIMEOUT:.0f}s, {ATTEMPTS} times")


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """One virsh at a time on a host (the kernel frees the lock if the holder dies)."""
    fd = os.open(f"{state}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stdin_to_file(command: list[str], stdin: object, scratch: Path) -> list[str]:
    """``/dev/stdin`` (``virsh define /dev/stdin`` over ssh) read here: libvirt's virsh gets
    a file, and the domain's name can be read from it."""
    if "/dev/stdin" not in command[1:] or stdin is None:
        return command
    copy = scratch / "stdin.xml"
    copy.write_bytes(stdin.read())  # type: ignore[attr-defined]
    return [command[0], *(str(copy) if word == "/dev/stdin" else word for word in command[1:])]


_SAVE_MAGIC = b"TestGuestMagic"  # the test driver's save image: magic, NUL, int32 length, XML
_NAME = re.compile(rb"<name>\s*([^<\s]+)\s*</name>")


def _names_in_files(command: Sequence[str]) -> list[str]:
    """Names of domains a command may bring in: from the domain XML or save image files it
    names (``define``, ``create``, ``restore``)."""
    names = []
    words = command[1:] if len(command) > 1 else re.split(r"[\s;'\"]+", command[0])
    for word in words:
        path = Path(word)
        if word.startswith("-") or not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
        if head.startswith(_SAVE_MAGIC):
            head = head[len(_SAVE_MAGIC) + 5:]
        match = _NAME.search(head)
        if match:
            names.append(match[1].decode("utf-8", "replace"))
    return names


def _script(domains: Sequence[Domain], command: list[str], candidates: Sequence[str],
            nonce: str, scratch: Path) -> str:
    """One command string: re-define the persistent definitions of running domains, the
    command between markers (``echo`` on stdout; a lookup failing on purpose on stderr),
    then every domain that may exist shown (state, live and persistent definitions)."""
    steps = []
    for number, domain in enumerate(domains):
        if domain.inactive is not None:
            definition = scratch / f"inactive{number}.xml"
            definition.write_text(domain.inactive)
            steps.append(f"define {_quote(str(definition))}")
    steps += [f"echo @@{nonce}-begin@@", f"domstate @@{nonce}-begin@@"]
    if len(command) == 1 and " " in command[0]:
        steps.append(command[0])  # virsh "cmd arg; cmd arg": a command string of its own
    else:
        steps.append(" ".join(_quote(word) for word in command))
    steps += [f"echo @@{nonce}-end@@", f"domstate @@{nonce}-end@@", "list --all --name"]
    for name in candidates:
        quoted = _quote(name)
        steps += [f"echo @@{nonce}-domain@@ {quoted}", f"dominfo {quoted}",
                  f"echo @@{nonce}-live@@", f"dumpxml {quoted}",
                  f"echo @@{nonce}-inactive@@", f"dumpxml --inactive {quoted}"]
    return "; ".join(steps)


def _split_output(stdout: str, stderr: str, nonce: str) -> tuple[str, str, str]:
    """(the command's stdout, its stderr, what the listing after it printed)."""
    begin, end = f"@@{nonce}-begin@@\n", f"@@{nonce}-end@@\n"
    if begin not in stdout or end not in stdout.split(begin, 1)[1]:
        raise VirshError(f"sandbox virsh: the host's state did not load: "
                         f"{_last(stderr) or 'no error output'}")
    lines = stderr.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if f"@@{nonce}-begin@@" in line), 0)
    if any(line.startswith("error:") for line in lines[:start]):
        raise VirshError("sandbox virsh: the host's state did not load: "
                         f"{_last(''.join(lines[:start]))}")
    command_out, after = stdout.split(begin, 1)[1].split(end, 1)
    command_out = command_out.removeprefix("\n")  # what the failing marker lookup printed
    # past the begin marker's error line(s), up to the end marker's
    while start < len(lines) and f"@@{nonce}-begin@@" in lines[start]:
        start += 1
    command_err = []
    for line in lines[start:]:
        if f"@@{nonce}-end@@" in line:
            break
        command_err.append(line)
    return command_out, "".join(command_err), after


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _domains_after(after: str, candidates: Sequence[str], nonce: str) -> list[Domain]:
    listing, *sections = after.split(f"@@{nonce}-domain@@ ")
    listed = [line.strip() for line in listing.splitlines() if line.strip()]
    domains = []
    for section in sections:
        head, _, rest = section.partition(f"@@{nonce}-live@@\n")
        name, _, info = head.partition("\n")
        live, _, inactive = rest.partition(f"@@{nonce}-inactive@@\n")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        state = fields.get("State", "").strip()
        if not state:
            continue  # not there (any more)
        if state not in RUNSTATES:
            raise VirshError(f"sandbox virsh: domain {name}: unknown state {state!r}")
        runstate = RUNSTATES[state]
        persistent = fields.get("Persistent", "").strip() == "yes"
        live, inactive = live.strip(), inactive.strip()
        if runstate == SHUTOFF:
            live, inactive = inactive, None
        elif not persistent or _without_id(inactive) == _without_id(live):
            inactive = None
        domains.append(Domain(name, runstate, persistent, live, inactive))
    lost = set(listed) - {d.name for d in domains}
    if lost:
        raise VirshError(f"sandbox virsh: cannot keep domain(s) {', '.join(sorted(lost))} "
                         f"(not among {', '.join(candidates) or 'none'})")
    return domains


def _without_id(xml: str) -> str:
    return re.sub(r"^(<domain[^>]*?) id='\d+'", r"\1", xml, count=1)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def render_state(domains: Sequence[Domain]) -> str:
    """The node document: each domain as the test driver loads it (``<test:runstate>``,
    ``<test:transient/>``), a differing persistent definition inside our own element (which
    the test driver skips)."""
    node = etree.Element("node", nsmap={"test": TEST_NS, "sandbox": SANDBOX_NS})
    for domain in domains:
        element = etree.fromstring(_without_id(domain.live).encode(), _parser())
        etree.SubElement(element, f"{{{TEST_NS}}}runstate").text = str(domain.runstate)
        if not domain.persistent:
            etree.SubElement(element, f"{{{TEST_NS}}}transient")
        node.append(element)
        if domain.inactive is not None:
            holder = etree.SubElement(node, f"{{{SANDBOX_NS}}}inactive", name=domain.name)
            holder.append(etree.fromstring(domain.inactive.encode(), _parser()))
    etree.indent(node)
    return etree.tostring(node, encoding="unicode") + "\n"


def load_state(state: Path) -> list[Domain]:
    """The domains of the state file (what :func:`render_state` wrote)."""
    try:
        node = etree.fromstring(state.read_bytes(), _parser())
    except FileNotFoundError:
        return []
    except etree.XMLSyntaxError as exc:
        raise VirshError(f"sandbox virsh: {state}: {exc}") from None
    inactive = {e.get("name"): e[0] for e in node.iterfind(f"{{{SANDBOX_NS}}}inactive")
                if len(e)}
    domains = []
    for element in node.iterfind("domain"):
        runstate = int(element.findtext(f"{{{TEST_NS}}}runstate") or SHUTOFF)
        persistent = element.find(f"{{{TEST_NS}}}transient") is None
        for extra in element.findall(f"{{{TEST_NS}}}*"):
            element.remove(extra)
        name = element.findtext("name") or ""
        held = inactive.get(name)
        domains.append(Domain(name, runstate, persistent,
                              etree.tostring(element, encoding="unicode"),
                              None if held is None else etree.tostring(held, encoding="unicode")))
    return domains


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
