"""The production host path: commands, streams and device waits over a real OpenSSH server
on loopback (Debian's openssh-server, started here on a free port with throwaway keys), as
the drivers reach KVM hosts and bridges as oneadmin."""

from __future__ import annotations

import os
import subprocess

import pytest

from onestorpool import hosts
from onestorpool.hosts import Host, HostCommandError
from tests.sshd import SSHD, ssh_servers


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory):
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (make test installs it)")
    with ssh_servers(tmp_path_factory.mktemp("sshd"), {"kvm-ssh": None}) as config:
        os.environ[hosts.SSH_CONFIG_ENV] = str(config)
        try:
            yield Host("kvm-ssh", ssh=True)
        finally:
            del os.environ[hosts.SSH_CONFIG_ENV]


def test_commands_run_on_the_host_with_their_arguments_quoted(ssh_host, tmp_path):
    target = tmp_path / "a dir; rm -rf /" / "disk.0"
    ssh_host.run(["mkdir", "-p", str(target.parent)])
    ssh_host.run(["ln", "-sfn", "/dev/null", str(target)])
    assert os.readlink(target) == "/dev/null"
    assert ssh_host.run(["cat", "/proc/sys/kernel/hostname"]).stdout.strip()


def test_a_failing_command_names_the_host_and_its_error(ssh_host):
    with pytest.raises(HostCommandError, match=r"kvm-ssh: .*No such file"):
        ssh_host.run(["ls", "/nonexistent/path"])


def test_data_streams_into_a_file_on_the_host(ssh_host, tmp_path):
    payload = os.urandom(3 << 20)
    target = tmp_path / "device"
    sink = ssh_host.popen(["dd", f"of={target}", "bs=1M", "iflag=fullblock", "status=none"],
                          stdin=subprocess.PIPE)
    sink.communicate(payload, timeout=60)
    assert sink.returncode == 0 and target.read_bytes() == payload


def test_device_paths_and_waiting_for_a_link(ssh_host, tmp_path):
    assert ssh_host.device("one-img-1") == "/dev/storpool/one-img-1"  # no sandbox root
    present = tmp_path / "present"
    present.touch()
    assert ssh_host._exists(str(present)) and not ssh_host._exists(str(tmp_path / "absent"))
    with pytest.raises(HostCommandError, match="did not appear"):
        ssh_host.wait_for_device("never-there-volume", timeout=0.5)
