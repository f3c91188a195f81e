"""``onestorpool sandbox up/down`` as an admin runs them: both sandboxes as background
processes, the add-on's configuration for them, pyone and the real datastore driver
working against them, and a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyone

from onestorpool.storpool import StorPoolClient

CLI = [sys.executable, "-m", "onestorpool.cli", "sandbox"]


def test_sandbox_up_and_down(tmp_path):
    directory = tmp_path / "sb"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "ONESTORPOOL_"))}
    started = subprocess.run([*CLI, "up", "--dir", str(directory)], capture_output=True,
                             text=True, timeout=90, env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert "oned XML-RPC" in started.stdout and "StorPool API" in started.stdout
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (directory / "sandbox.env").read_text().splitlines())
        assert f"  export ONE_XMLRPC={exports['ONE_XMLRPC']}" in started.stdout
        session = (directory / "one_auth").read_text().strip()
        assert (directory / "one_endpoint").read_text().strip() == exports["ONE_XMLRPC"]
        conf = (directory / "etc/storpool.conf").read_text()
        assert "SP_AUTH_TOKEN=" in conf and "[localhost]\nSP_OURID=1" in conf
        assert (directory / "var/lib/one/remotes/addon-storpoolrc").is_file()

        srv = pyone.OneServer(exports["ONE_XMLRPC"], session=session)
        assert srv.system.version() == "6.10.0"
        ds = srv.datastore.allocate('NAME="sp"\nDS_MAD="storpool"\nTM_MAD="storpool"\n'
                                    'DISK_TYPE="BLOCK"', -1)
        settings = dict(line.split("=", 1) for line in conf.splitlines() if "=" in line)
        # the datastore's StorPool template was made with it, as an admin would
        assert StorPoolClient("127.0.0.1", int(settings["SP_API_HTTP_PORT"]),
                              settings["SP_AUTH_TOKEN"]).volume_template_describe(
            f"one-ds-{ds}")
        image_id = srv.image.allocate('NAME="blank"\nSIZE="2"', ds)
        deadline = time.monotonic() + 30
        while srv.image.info(image_id).STATE not in (1, 5):  # READY or ERROR
            assert time.monotonic() < deadline
            time.sleep(0.1)
        image = srv.image.info(image_id)
        # the real mkfs reached the StorPool sandbox through the generated configuration
        assert image.STATE == 1, image.TEMPLATE.get("ERROR")
        assert f"one-ds-{ds}/one-img-{image_id}" == image.SOURCE
        host = srv.host.allocate("node1", "kvm", "kvm", -1)
        assert srv.host.info(host).TEMPLATE["SP_OURID"] == "11"
        assert (directory / "hosts/node1").is_dir()
        # a VM on StorPool: the scheduler deploys it, the real TM attaches its disks
        system = srv.datastore.allocate('NAME="spsys"\nTYPE="SYSTEM_DS"\nTM_MAD="storpool"',
                                        -1)
        vm_id = srv.vm.allocate(f'NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]'
                                f'\nSCHED_DS_REQUIREMENTS="ID={system}"', False)
        deadline = time.monotonic() + 60
        while (srv.vm.info(vm_id).STATE, srv.vm.info(vm_id).LCM_STATE) != (3, 3):
            vm = srv.vm.info(vm_id)
            assert time.monotonic() < deadline, (vm.STATE, vm.LCM_STATE,
                                                 vm.USER_TEMPLATE.get("ERROR"))
            time.sleep(0.2)
        link = directory / f"hosts/node1/var/lib/one/datastores/{system}/{vm_id}/disk.0"
        assert os.readlink(link).endswith(f"/dev/storpool/one-img-{image_id}-{vm_id}-0")
        snap = srv.vm.snapshotcreate(vm_id, "first")  # the add-on's local action
        deadline = time.monotonic() + 30
        while not (srv.vm.info(vm_id).TEMPLATE.get("SNAPSHOT") or [{}])[0].get("HYPERVISOR_ID"):
            assert time.monotonic() < deadline, srv.vm.info(vm_id).USER_TEMPLATE.get("ERROR")
            time.sleep(0.2)
        (taken,) = srv.vm.info(vm_id).TEMPLATE["SNAPSHOT"]
        assert taken["SNAPSHOT_ID"] == str(snap) and "ONESNAP" in taken["HYPERVISOR_ID"]

        shown = subprocess.run([sys.executable, "-m", "onestorpool.cli", "config"],
                               capture_output=True, text=True,
                               env={**env, "ONESTORPOOL_ROOT": exports["ONESTORPOOL_ROOT"]})
        assert shown.returncode == 0 and "StorPool API: http://127.0.0.1:" in shown.stdout
        again = subprocess.run([*CLI, "up", "--dir", str(directory)], capture_output=True,
                               text=True, timeout=30, env=env)
        assert again.returncode != 0 and "already runs" in again.stderr
    finally:
        stopped = subprocess.run([*CLI, "down", "--dir", str(directory)],
                                 capture_output=True, text=True, timeout=60, env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (directory / "sandbox.pids").exists()
    again = subprocess.run([*CLI, "down", "--dir", str(directory)], capture_output=True,
                           text=True, timeout=30, env=env)
    assert "no sandbox runs" in again.stdout
