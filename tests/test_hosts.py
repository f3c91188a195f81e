"""Host access: the providers (production ssh/local, the sandbox's directories chosen by
ONESTORPOOL_HOSTS), ssh command lines, SP_OURID lookup."""

from __future__ import annotations

import os

import pytest

from onestorpool import config, hosts
from onestorpool.errors import ConfigError
from onestorpool.sandbox.hosts import env as sandbox_hosts_env


def sandbox_hosts(monkeypatch, root) -> None:
    for name, value in sandbox_hosts_env(root).items():
        monkeypatch.setenv(name, value)


def test_sandbox_hosts_are_directories(tmp_path, monkeypatch):
    sandbox_hosts(monkeypatch, tmp_path)
    (tmp_path / "node1").mkdir()
    node = hosts.get("node1")
    assert node.device("v") == str(tmp_path / "node1/dev/storpool/v")
    assert node.run(["echo", "hi"]).stdout == b"hi\n"
    with pytest.raises(hosts.HostCommandError, match="does not exist"):
        hosts.get("node2")
    assert hosts.frontend().root == tmp_path / "localhost"


def test_production_hosts(monkeypatch, tmp_path):
    monkeypatch.delenv("ONESTORPOOL_HOSTS", raising=False)
    monkeypatch.setenv("ONESTORPOOL_SANDBOX_HOSTS", str(tmp_path))  # not looked at
    assert hosts.frontend().name == os.uname().nodename and not hosts.frontend().ssh
    remote = hosts.get("kvm7")
    assert remote.ssh and remote.device("one-img-1") == "/dev/storpool/one-img-1"
    with pytest.raises(ConfigError):
        hosts.get("-oProxyCommand=x")


def test_failed_command_names_host_and_stderr(tmp_path, monkeypatch):
    sandbox_hosts(monkeypatch, tmp_path)
    (tmp_path / "n").mkdir()
    with pytest.raises(hosts.HostCommandError, match=r"n: ls .* failed \(exit 2\): .*No such"):
        hosts.get("n").run(["ls", "/nonexistent"])


def test_client_id_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    sandbox_hosts(monkeypatch, tmp_path / "hosts")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/storpool.conf").write_text("SP_AUTH_TOKEN=x\n[a]\nSP_OURID=5\n"
                                                "[b.example.com]\nSP_OURID=6\n")
    (tmp_path / "hosts/a").mkdir(parents=True)
    (tmp_path / "hosts/b").mkdir()
    (tmp_path / "hosts/c/etc").mkdir(parents=True)
    (tmp_path / "hosts/c/etc/storpool.conf").write_text("[c]\nSP_OURID=7\n")
    (tmp_path / "hosts/d").mkdir()
    cfg = config.load(rc_paths=[tmp_path / "rc"], override_path=tmp_path / "none")
    assert hosts.client_id(hosts.get("a"), cfg) == 5
    with_domain = config.load(rc_paths=[_rc(tmp_path, "COMMON_DOMAIN=example.com\n")],
                              override_path=tmp_path / "none")
    assert hosts.client_id(hosts.get("b"), with_domain) == 6
    assert hosts.client_id(hosts.get("c"), cfg) == 7  # FROMHOST: the host's own file
    assert hosts.client_id(hosts.get("d"), cfg, {"SP_OURID": "9"}) == 9  # ONEHOST
    with pytest.raises(ConfigError, match="no StorPool client id"):
        hosts.client_id(hosts.get("d"), cfg)


def _rc(tmp_path, text):
    path = tmp_path / "rc2"
    path.write_text(text)
    return path


def test_a_provider_that_cannot_be_loaded_is_a_config_error(monkeypatch):
    monkeypatch.setenv("ONESTORPOOL_HOSTS", "no.such.module:provider")
    with pytest.raises(ConfigError, match=r"ONESTORPOOL_HOSTS='no\.such\.module:provider'"):
        hosts.get("node1")
