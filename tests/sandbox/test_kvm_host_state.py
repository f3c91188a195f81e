"""The sandbox hosts' libvirt: libvirt's test driver loaded from and saved to a per-host state
file, so domains (running, shut off, transient, and a running domain's differing persistent
definition) outlive the virsh command that made them; the product's plain ``virsh -c
<LIBVIRT_URI>`` reaches that state through the host's PATH; the native stand-ins use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree

from onestorpool.hosts import HostCommandError
from onestorpool.sandbox import kvm_host
from onestorpool.sandbox.hosts import SandboxHost

pytestmark = pytest.mark.skipif(shutil.which("virsh") is None,
                                reason="virsh (libvirt-clients) is not installed")

DOMAIN = """<domain type='kvm'><name>{name}</name><memory>131072</memory>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><source file='{source}'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>"""


@pytest.fixture
def host(tmp_path: Path) -> SandboxHost:
    (tmp_path / "node1").mkdir()
    return SandboxHost("node1", tmp_path / "node1")


def virsh(host: SandboxHost, *argv: str, stdin: bytes | None = None) -> str:
    return host.run(["virsh", "-c", "qemu:///system", *argv], stdin=stdin).stdout.decode()


def domain_file(tmp_path: Path, name: str, source: str = "/var/lib/one/disk.0") -> Path:
    path = tmp_path / f"{name}.xml"
    path.write_text(DOMAIN.format(name=name, source=source))
    return path


def disk_type(xml: str) -> str:
    return etree.fromstring(xml.encode()).find("devices/disk").get("type")


def test_domains_outlive_the_command_that_made_them(host, tmp_path):
    virsh(host, "define", str(domain_file(tmp_path, "one-1")))
    virsh(host, "start", "one-1")
    virsh(host, "create", str(domain_file(tmp_path, "one-2")))  # transient, as 6.10 deploys
    virsh(host, "define", str(domain_file(tmp_path, "one-3")))
    assert virsh(host, "list", "--all", "--name").split() == ["one-1", "one-2", "one-3"]
    assert virsh(host, "domstate", "one-1").strip() == "running"
    assert virsh(host, "domstate", "one-3").strip() == "shut off"
    assert "Persistent:     no" in virsh(host, "dominfo", "one-2")
    assert "Persistent:     yes" in virsh(host, "dominfo", "one-1")
    # the state file is a node document libvirt's own virsh loads as it is
    state = kvm_host.state_file(host.root)
    listed = subprocess.run(["virsh", "-c", f"test://{state}", "list", "--all", "--name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["one-1", "one-2", "one-3"]
    assert not [p for p in state.parent.iterdir() if p.name.startswith(".node.xml.")]


def test_a_running_domain_keeps_a_differing_persistent_definition(host, tmp_path):
    virsh(host, "define", str(domain_file(tmp_path, "one-5")))
    virsh(host, "start", "one-5")
    changed = virsh(host, "dumpxml", "--inactive", "one-5").replace(
        "type='file'", "type='block'").replace("source file=", "source dev=")
    virsh(host, "define", "/dev/stdin", stdin=changed.encode())  # as over ssh
    for _ in range(2):  # and stays so across commands that change nothing
        assert disk_type(virsh(host, "dumpxml", "one-5")) == "file"
        assert disk_type(virsh(host, "dumpxml", "--inactive", "one-5")) == "block"
    virsh(host, "destroy", "one-5")  # the next start boots the persistent definition
    virsh(host, "start", "one-5")
    assert disk_type(virsh(host, "dumpxml", "one-5")) == "block"


def test_a_failing_command_fails_as_virsh_and_changes_nothing(host, tmp_path):
    virsh(host, "define", str(domain_file(tmp_path, "one-1")))
    before = kvm_host.state_file(host.root).read_text()
    done = host.run(["virsh", "start", "one-9"], check=False)
    assert done.returncode == 1
    assert done.stderr.decode().startswith("error: failed to get domain 'one-9'")
    assert done.stdout.strip() == b""  # virsh prints an empty line after a failure
    with pytest.raises(HostCommandError, match="one-9"):
        host.run(["virsh", "dumpxml", "one-9"])
    assert kvm_host.state_file(host.root).read_text() == before


def test_concurrent_commands_on_a_host_all_count(host, tmp_path):
    files = [domain_file(tmp_path, f"one-{n}") for n in range(6)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda f: virsh(host, "define", str(f)), files))
    assert sorted(virsh(host, "list", "--all", "--name").split()) == [
        f"one-{n}" for n in range(6)]


def test_save_and_restore_through_a_checkpoint(host, tmp_path):
    virsh(host, "define", str(domain_file(tmp_path, "one-4")))
    virsh(host, "start", "one-4")
    checkpoint = tmp_path / "checkpoint"
    virsh(host, "save", "one-4", str(checkpoint))
    assert virsh(host, "domstate", "one-4").strip() == "shut off"
    virsh(host, "undefine", "one-4")
    assert virsh(host, "list", "--all", "--name").split() == []
    virsh(host, "restore", str(checkpoint))  # the name comes from the save image
    assert virsh(host, "domstate", "one-4").strip() == "running"


def test_native_deploy_resolves_disk_links_and_redeploys(host, tmp_path):
    kvm = kvm_host.install_native_kvm(host.root)
    device = host.root / "dev/storpool/one-sys-7-0-raw"
    device.parent.mkdir(parents=True)
    device.write_bytes(b"\0" * 4096)
    folder = host.root / "var/lib/one/datastores/0/7"
    folder.mkdir(parents=True)
    (folder / "disk.0").symlink_to(device)
    xml = DOMAIN.format(name="one-7", source="/var/lib/one/datastores/0/7/disk.0").encode()
    deployment = str(folder / "deployment.0")
    for _ in range(2):  # a second deploy (resume) replaces what the first left running
        done = host.run([str(kvm / "deploy"), deployment, "node1", "7", "node1"], stdin=xml)
        assert done.stdout.decode().strip() == "one-7"
    live = etree.fromstring(virsh(host, "dumpxml", "one-7").encode())
    # OpenNebula 6.10's deploy: the link's target in the domain
    assert live.find("devices/disk/source").get("file") == str(device)
    assert virsh(host, "domstate", "one-7").strip() == "running"
    assert "Persistent:     no" in virsh(host, "dominfo", "one-7")  # "virsh create", as 6.10
    checkpoint = folder / "checkpoint"
    host.run([str(kvm / "save"), "one-7", str(checkpoint), "node1", "7"])
    assert virsh(host, "list", "--all", "--name").split() == []  # a saved transient is gone
    host.run([str(kvm / "restore"), str(checkpoint), "node1", "one-7", "7", "node1"])
    assert virsh(host, "domstate", "one-7").strip() == "running"


def test_a_tests_own_virsh_stays_in_front(host, tmp_path):
    own = tmp_path / "bin"
    own.mkdir()
    (own / "virsh").write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "own virsh: $*"
        """))
    (own / "virsh").chmod(0o755)
    done = host.run(["virsh", "list"], env={"PATH": f"{own}{os.pathsep}{os.environ['PATH']}"})
    assert done.stdout.decode().strip() == "own virsh: list"


def test_unsupported_use_is_refused(host):
    done = host.run(["virsh", "--bogus", "list"], check=False)
    assert done.returncode == 1 and b"--bogus" in done.stderr
    done = host.run(["virsh"], check=False)
    assert done.returncode == 1 and b"no interactive shell" in done.stderr


def test_live_migration_between_hosts(host, tmp_path):
    """libvirt's test driver migrates nothing: the sandbox's virsh moves the domain to the
    sibling host the URI names, from --xml when given (virsh migrate, libvirt 9.0)."""
    node2 = SandboxHost("node2", tmp_path / "node2")
    (tmp_path / "node2").mkdir()
    kvm_host.install_libvirt(node2.root)
    virsh(host, "create", str(domain_file(tmp_path, "one-4")))
    virsh(host, "migrate", "--live", "one-4", "qemu+ssh://node2/system")
    assert virsh(host, "list", "--all", "--name").split() == []
    assert virsh(node2, "domstate", "one-4").strip() == "running"
    assert "Persistent:     no" in virsh(node2, "dominfo", "one-4")
    # back with another definition: what --xml says is what runs there
    changed = virsh(node2, "dumpxml", "one-4").replace("type='file'", "type='block'").replace(
        "file='/var/lib/one/disk.0'", "dev='/dev/storpool/one-sys-4-0-raw'")
    virsh(node2, "migrate", "--live", "--xml", "/dev/stdin", "one-4",
          "qemu+ssh://node1/system", stdin=changed.encode())
    assert disk_type(virsh(host, "dumpxml", "one-4")) == "block"
    assert virsh(node2, "list", "--all", "--name").split() == []
    with pytest.raises(HostCommandError, match="unable to connect"):
        virsh(host, "migrate", "--live", "one-4", "qemu+ssh://node9/system")
    renamed = changed.replace("<name>one-4</name>", "<name>other</name>")
    with pytest.raises(HostCommandError, match="name does not match"):
        virsh(host, "migrate", "--live", "--xml", "/dev/stdin", "one-4",
              "qemu+ssh://node2/system", stdin=renamed.encode())
    assert virsh(host, "domstate", "one-4").strip() == "running"  # a refusal moves nothing
