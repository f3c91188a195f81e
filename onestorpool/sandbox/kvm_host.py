"""The native KVM scripts of a sandbox host (``<host>/var/tmp/one/vmm/kvm/``), as
``onehost sync`` leaves OpenNebula's there on a real node.

The add-on's local actions (``deploy-tweaks``, ``attach_disk.storpool``, ``tmsave``/
``tmrestore``) do their part on the front-end and then hand over to these. Here they stand in
for the hypervisor: ``deploy`` gives the domain XML to libvirt's in-process test driver
(define and start, the parser a real host uses) when ``virsh`` is installed; ``save`` has
it save the domain through the checkpoint path (a link to the StorPool volume when the
checkpoint is on StorPool) and ``restore`` restore it from there; ``attach_disk`` and
``detach_disk`` accept.
"""

from __future__ import annotations

from pathlib import Path

SCRIPTS = {
    "deploy": """#!/bin/sh
# deploy <deployment file> <host> <vm id> <host>, the domain XML on stdin
set -e
mkdir -p "$(dirname "$1")"
cat > "$1"
name=$(sed -n 's:.*<name>\\(.*\\)</name>.*:\\1:p' "$1" | head -n1)
if command -v virsh >/dev/null 2>&1; then
    virsh -c test:///default "define $1; start $name" >"$1.virsh" 2>&1 || {
        cat "$1.virsh" >&2; exit 1; }
fi
echo "$name"
""",
    "save": """#!/bin/sh
# save <domain> <checkpoint> <host> <vm id>: libvirt's test driver saves the domain (from the
# VM folder's last deployment file) into the checkpoint; without virsh, 1 MiB of "memory"
set -e
dir=$(dirname "$2")
deployment=$(ls -1 "$dir"/deployment.* 2>/dev/null | grep -v virsh | sort -t. -k2 -n | tail -n1)
if command -v virsh >/dev/null 2>&1 && [ -n "$deployment" ]; then
    out=$(mktemp)
    virsh -c test:///default "define $deployment; start $1; save $1 $2" >"$out" 2>&1 || {
        cat "$out" >&2; rm -f "$out"; exit 1; }
    rm -f "$out"
else
    head -c 1048576 /dev/urandom | dd of="$2" conv=notrunc,fsync status=none
fi
""",
    "restore": """#!/bin/sh
# restore <checkpoint> <host> <domain> <vm id> <host>: libvirt's test driver reads it back
# (a checkpoint that is not a libvirt save image is only read)
set -e
out=$(mktemp)
if command -v virsh >/dev/null 2>&1 && head -c 16 "$1" | grep -q TestGuestMagic; then
    virsh -c test:///default "restore $1" >"$out" 2>&1 || {
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
    put their own there)."""
    kvm = host_dir / "var/tmp/one/vmm/kvm"
    kvm.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        script = kvm / name
        if not script.exists():
            script.write_text(text)
            script.chmod(0o755)
    return kvm
