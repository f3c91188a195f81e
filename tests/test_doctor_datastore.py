"""``onestorpool doctor`` and ``onestorpool datastore create`` against the sandboxes
(``onestorpool sandbox up``): a StorPool API cluster and an oned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onestorpool import install
from onestorpool.cli import main
from onestorpool.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "oned_conf"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cloud")
    command = [sys.executable, "-m", "onestorpool.cli", "sandbox"]
    subprocess.run([*command, "up", "--dir", str(directory)], check=True, capture_output=True,
                   timeout=300)
    try:
        yield directory, dict(line.removeprefix("export ").split("=", 1)
                              for line in (directory / "sandbox.env").read_text().splitlines())
    finally:
        subprocess.run([*command, "down", "--dir", str(directory)], capture_output=True,
                       timeout=120)


@pytest.fixture
def cloud(sandbox, monkeypatch):
    directory, env = sandbox
    for key in list(os.environ):
        if key.startswith(("ONESTORPOOL_", "ONE_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(install, "user_in_group", lambda user="oneadmin", group="disk": True)
    return directory


def one():
    import pyone

    return pyone.OneServer(os.environ["ONE_XMLRPC"], session="oneadmin:sandbox")


def storpool():
    from onestorpool import config
    from onestorpool.storpool import StorPoolClient

    return StorPoolClient.from_config(config.load())


def doctor(capsys, *extra: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", "--user", "root", *extra])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def test_doctor_all_green_then_each_missing_piece_named_with_its_fix(cloud, capsys):
    conf = cloud / "etc/one/oned.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "oned-6.10.5.conf", conf)

    code, checks = doctor(capsys)
    assert code == 1
    assert checks["oned.conf"]["status"] == "fail"
    assert "TM_MAD_CONF for storpool" in checks["oned.conf"]["detail"]
    assert checks["oned.conf"]["fix"].startswith("onestorpool install")

    assert checks["drivers"]["status"] == "fail"
    assert "datastore/storpool/" in checks["drivers"]["detail"]
    opts = install.Options(oned_conf=conf, vmm_execrc=cloud / "none", skip_group=True,
                           skip_vmm_execrc=True)
    install.install(opts, out=lambda line: None)
    code, checks = doctor(capsys)
    assert checks["subscriber"]["status"] in ("fail", "warn")  # no unit runs here
    # systemd says the subscriber's unit is active (a systemctl on PATH that says so)
    shims = cloud / "shims"
    shims.mkdir()
    (shims / "systemctl").write_text('#!/bin/sh\n[ "$*" = "is-active onestorpool-subscriber.'
                                     'service" ] && echo "${UNIT_STATE:-active}"\n')
    (shims / "systemctl").chmod(0o755)
    os.environ["PATH"] = f"{shims}:{os.environ['PATH']}"
    try:
        code, checks = doctor(capsys)
        assert {name: c["status"] for name, c in checks.items()} == {
            "configuration": "ok", "oned": "ok", "StorPool API": "ok",
            "datastore templates": "ok", "oned.conf": "ok", "drivers": "ok",
            "qemu-img": "ok", "group disk": "ok", "SP_OURID": "ok", "event log": "ok",
            "subscriber": "ok"}, checks
        assert code == 0
        os.environ["UNIT_STATE"] = "inactive"
        code, checks = doctor(capsys)
        assert code == 1 and checks["subscriber"]["status"] == "fail"
        fix = checks["subscriber"]["fix"]
        assert fix == "systemctl enable --now onestorpool-subscriber.service"
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
        os.environ.pop("UNIT_STATE", None)

    # a StorPool datastore without its template (recreated after: the sandbox is shared)
    ds = one().datastore.allocate('NAME="bare"\nDS_MAD="storpool"\nTM_MAD="storpool"\n'
                                  'DISK_TYPE="BLOCK"', -1)
    with storpool() as client:
        if f"one-ds-{ds}" in {t["name"] for t in client.volume_templates_list()}:
            client.volume_template_delete(f"one-ds-{ds}")
        try:
            code, checks = doctor(capsys)
            assert code == 1
            assert checks["datastore templates"]["status"] == "fail"
            assert f"one-ds-{ds}" in checks["datastore templates"]["detail"]
            assert checks["datastore templates"]["fix"].startswith(
                f"storpool template one-ds-{ds}")
        finally:
            client.volume_template_create(f"one-ds-{ds}", replication=3)


def test_doctor_names_hosts_without_a_storpool_client_id(cloud):
    from onestorpool import config, doctor
    from onestorpool.one import Host, HostState

    check = doctor.Doctor(user="root")
    check.config = config.load()
    check.hosts = [Host(7, "node-without-id", HostState(2), "kvm", "kvm", 0),
                   Host(8, "node-with-id", HostState(2), "kvm", "kvm", 0,
                        template=_template({"SP_OURID": "12"}))]
    check.client_ids()
    (result,) = check.checks
    assert result.status == "fail"
    assert result.detail == "no StorPool client id for node-without-id"
    assert "SP_OURID" in result.fix


def _template(values):
    from onestorpool.one import Template

    return Template("TEMPLATE", values)


def test_doctor_when_oned_is_down(cloud, capsys, monkeypatch):
    monkeypatch.setenv("ONE_XMLRPC", "http://127.0.0.1:9/RPC2")
    code = main(["doctor", "--user", "root"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] oned: http://127.0.0.1:9/RPC2" in out
    assert "fix: start oned" in out
    assert "[skip] datastore templates: needs oned and the StorPool API" in out
    assert out.rstrip().endswith("checks failed")


def test_doctor_event_log_not_writable(cloud, capsys, monkeypatch, tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log_dir.chmod(0o555)
    monkeypatch.setenv("ONESTORPOOL_EVENTLOG", str(log_dir / "events.db"))
    _, checks = doctor(capsys, "--user", "nobody")
    assert checks["event log"]["status"] == "fail"
    assert checks["event log"]["fix"] == f"chown -R nobody:nobody {log_dir}"


def test_datastore_create_image_and_system(cloud, capsys):
    assert main(["datastore", "create", "--image", "StorPool IMAGE", "--bridge-list",
                 "node1 node2", "--place-all", "hdd", "--place-tail", "ssd", "--attr",
                 "SP_QOSCLASS=tier1", "--json"]) == 0
    image = json.loads(capsys.readouterr().out)
    assert main(["datastore", "create", "--system", "StorPool SYSTEM", "--replication", "2",
                 "--json"]) == 0
    system = json.loads(capsys.readouterr().out)

    info = one().datastore.info(image["id"])
    assert (info.DS_MAD, info.TM_MAD, info.TYPE) == ("storpool", "storpool", 0)
    assert info.TEMPLATE["BRIDGE_LIST"] == "node1 node2"
    assert info.TEMPLATE["SP_QOSCLASS"] == "tier1"
    assert info.DISK_TYPE == 2  # BLOCK (FILE 0, CD_ROM 1)
    assert one().datastore.info(system["id"]).TYPE == 1
    with storpool() as client:
        template = client.volume_template_describe(f"one-ds-{image['id']}")
        assert (template["replication"], template["placeAll"], template["placeTail"]) == \
            (3, "hdd", "ssd")
        assert client.volume_template_describe(f"one-ds-{system['id']}")["replication"] == 2


def test_datastore_create_dry_run_creates_nothing(cloud, capsys):
    before = len(one().datastorepool.info().DATASTORE)
    assert main(["datastore", "create", "--image", "x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:5] == ['NAME = "x"', 'DS_MAD = "storpool"', 'TM_MAD = "storpool"',
                                    'TYPE = "IMAGE_DS"', 'DISK_TYPE = "BLOCK"']
    assert 'StorPool template one-ds-<ID>: {"replication": 3}' in out
    assert len(one().datastorepool.info().DATASTORE) == before


def test_datastore_create_leaves_nothing_when_the_template_fails(cloud, monkeypatch):
    from onestorpool import oneapi
    from onestorpool.storpool import InvalidParam, StorPoolClient

    def refuse(self, name, **policy):
        raise InvalidParam("invalidParam", "placement group hdd does not exist", False, 200,
                           "VolumeTemplateCreate")

    monkeypatch.setattr(StorPoolClient, "volume_template_create", refuse)
    monkeypatch.setattr(StorPoolClient, "volume_template_update", refuse)
    calls = []
    real = oneapi.one_call

    def one_call(method, *params, **kwargs):  # the oned sandbox does not emulate delete
        calls.append((method, *params))
        return None if method == "one.datastore.delete" else real(method, *params, **kwargs)

    monkeypatch.setattr(oneapi, "one_call", one_call)
    with pytest.raises(InputError, match="placement group hdd does not exist; datastore "
                                         r"\d+ deleted again"):
        main(["datastore", "create", "--image", "doomed", "--place-all", "hdd"])
    (allocate, delete) = calls
    assert allocate[0] == "one.datastore.allocate"
    assert delete[0] == "one.datastore.delete"
    assert delete[1] == max(d.ID for d in one().datastorepool.info().DATASTORE)


def test_datastore_create_refuses_quotes():
    with pytest.raises(InputError, match="quotes"):
        main(["datastore", "create", "--image", 'a"b', "--dry-run"])
