"""Fixtures of the oned sandbox tests (the test_oned_sandbox* modules load this file with
``pytest_plugins``; helpers are methods of :class:`World`): a front-end with the StorPool
sandbox, an oned sandbox whose remotes mix the real datastore driver with recording
stand-ins (tests/sandbox/fake_remotes), a hook-bus subscriber, and XSD validation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyone
import pytest
import zmq
from lxml import etree

from onestorpool.sandbox.frontend import REMOTES, FrontEnd, make_frontend
from onestorpool.sandbox.oned import OnedSandbox
from tests.sandbox.release_xsd import assert_valid_for

FAKE = Path(__file__).resolve().parent / "fake_remotes"
NS = "http://opennebula.org/XMLSchema"
# The project's copies first; the shared fixtures hold every schema of the release.
XSD_DIRS = [Path(__file__).resolve().parents[1] / "fixtures" / "xsd",
            Path(os.environ.get("ONESTORPOOL_XSD_DIR", "/work/shared/fixtures/opennebula/xsd"))]
FAKE_TM_CONF = {"fake": {"LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "YES",
                         "DS_MIGRATE": "YES", "ALLOW_ORPHANS": "YES"}}
FAKE_DS_CONF = {"fake": {"REQUIRED_ATTRS": "", "PERSISTENT_ONLY": "NO"}}
# VM_MAD "-l" with every recording local action of fake_remotes/vmm/kvm
RECORDED_VMM = ("deploy=deploy-rec,save=save-rec,restore=restore-rec,shutdown=shutdown-rec,"
                "cancel=cancel-rec,attach_disk=attach_disk-rec,detach_disk=detach_disk-rec,"
                "snapshotcreate=snapshot_create-rec,snapshotrevert=snapshot_revert-rec,"
                "snapshotdelete=snapshot_delete-rec,migrate=migrate-rec,"
                "resize_disk=resize_disk-rec")


def make_remotes(directory: Path) -> Path:
    """remotes/: the add-on's real datastore driver plus the recording stand-ins."""
    remotes = directory / "remotes"
    (remotes / "datastore").mkdir(parents=True)
    (remotes / "datastore" / "storpool").symlink_to(REMOTES / "datastore" / "storpool")
    (remotes / "datastore" / "fake").symlink_to(FAKE / "datastore" / "fake")
    (remotes / "tm").symlink_to(FAKE / "tm")
    (remotes / "vmm").symlink_to(FAKE / "vmm")
    return remotes


@dataclass
class World:
    """A front-end, the StorPool sandbox and an oned sandbox, with pyone connected."""

    frontend: FrontEnd
    oned: OnedSandbox
    srv: Any  # pyone.OneServer
    tmp: Path

    def calls(self, name: str, keep: bool = False) -> list[dict[str, Any]]:
        """Invocations the stand-ins recorded (``tm``, ``ds``, ``vmm``); read and clear."""
        log = self.tmp / f"{name}.log"
        calls = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
        if not keep:
            log.write_text("")
        return calls

    def vm_template(self, name: str = "vm", *disks: str, context: bool = False,
                    extra: str = "") -> str:
        return vm_template(name, *disks, context=context, extra=extra)

    def subscribe(self) -> Subscriber:
        """A subscriber on this world's hook bus (close it when done)."""
        return Subscriber(self.oned)

    @staticmethod
    def ds_action(payload: str) -> etree._Element:
        return ds_action(payload)

    def validate(self, schema_name: str, xml: str) -> None:
        """Valid for the release the sandbox claims (its own schemas)."""
        assert_valid_for(str(self.oned.version), schema_name, xml)

    def datastores(self) -> tuple[int, int]:
        """An image datastore with the real StorPool driver (TM: the recording stand-in)
        and a system datastore of the stand-in TM."""
        image_ds = self.srv.datastore.allocate(
            'NAME="storpool"\nDS_MAD="storpool"\nTM_MAD="fake"\nDISK_TYPE="BLOCK"\n'
            f'SAFE_DIRS="{self.tmp}"\nRESTRICTED_DIRS="/"', -1)
        system_ds = self.srv.datastore.allocate(
            'NAME="fake-system"\nTYPE="SYSTEM_DS"\nTM_MAD="fake"', -1)
        # the sandbox made its StorPool template one-ds-<ID>, as an admin would
        return image_ds, system_ds


@pytest.fixture
def make_world(tmp_path: Path, storpool_sandbox: Any) -> Iterator[Callable[..., World]]:
    """``make_world(one_version="6.10", **OnedSandbox options)``; stopped at teardown.
    ``vmm_local="recorded"`` declares every recording stand-in of vmm/kvm local."""
    started: list[OnedSandbox] = []

    def make(**options: Any) -> World:
        index = len(started)
        base = tmp_path / f"w{index}"
        frontend = make_frontend(base / "fe", storpool_sandbox)
        env = {k: v for k, v in frontend.env.items() if k.startswith("ONESTORPOOL_")}
        env.update(FAKE_TM_LOG=str(base / "tm.log"), FAKE_DS_LOG=str(base / "ds.log"),
                   FAKE_VMM_LOG=str(base / "vmm.log"))
        if options.get("vmm_local") == "recorded":
            options["vmm_local"] = RECORDED_VMM
        options.setdefault("tm_mad_conf", FAKE_TM_CONF)
        options.setdefault("ds_mad_conf", FAKE_DS_CONF)
        options.setdefault("live_disk_snapshots", {"kvm-fake"})
        remotes = options.pop("remotes", None) or make_remotes(base)
        oned = OnedSandbox(base / "oned", remotes, driver_env=env,
                           storpool_admin=(storpool_sandbox.url, storpool_sandbox.token),
                           **options).start()
        started.append(oned)
        return World(frontend, oned, pyone.OneServer(oned.endpoint, session=oned.session),
                     base)

    yield make
    for oned in started:
        oned.stop()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


class Subscriber:
    """A real ZeroMQ SUB socket on the sandbox's hook bus, past PUB/SUB's slow joiner."""

    def __init__(self, oned: OnedSandbox):
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(oned.hook_endpoint)
        # publish probes until one arrives, then drain them: from here on nothing is lost
        deadline = time.monotonic() + 10
        while not self.socket.poll(50):
            assert time.monotonic() < deadline, "the SUB socket never got a message"
            oned.hooks.publish(["PROBE "], "probe")
        while self.socket.poll(100):
            self.socket.recv_multipart()

    def frames(self, timeout: float = 0.3) -> list[tuple[str, str]]:
        """Every (key, payload) received until ``timeout`` passes without one."""
        received = []
        while self.socket.poll(int(timeout * 1000)):
            parts = self.socket.recv_multipart()
            assert len(parts) == 2, f"one_hm sends two frames, got {len(parts)}"
            received.append((parts[0].decode(), parts[1].decode()))
        return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def subscriber(world: World) -> Iterator[Subscriber]:
    sub = Subscriber(world.oned)
    yield sub
    sub.close()


def xsd(name: str) -> etree.XMLSchema:
    """OpenNebula's schema ``name`` (skips the test when no copy is available)."""
    for directory in XSD_DIRS:
        if (directory / name).is_file():
            return etree.XMLSchema(etree.parse(str(directory / name)))
    pytest.skip(f"{name} not available (copy it to tests/fixtures/xsd)")


def in_namespace(xml: str) -> etree._Element:
    """oned's XML has no namespace; the schemas have one (shared fixtures README)."""
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str) and not element.tag.startswith("{"):
            element.tag = f"{{{NS}}}{element.tag}"
    return root


def ds_action(payload: str) -> etree._Element:
    """The ``DS_DRIVER_ACTION_DATA`` a datastore action got (base64)."""
    import base64

    root = etree.fromstring(base64.b64decode(payload))
    assert root.tag == "DS_DRIVER_ACTION_DATA"
    return root


def assert_valid(schema_name: str, xml: str) -> None:
    schema = xsd(schema_name)
    assert schema.validate(in_namespace(xml)), (schema_name, schema.error_log.last_error)


VM_TEMPLATE = 'NAME="{name}"\nCPU="1"\nMEMORY="128"\n'


def vm_template(name: str = "vm", *disks: str, context: bool = False, extra: str = "") -> str:
    """A VM template: ``disks`` are the insides of DISK vectors."""
    text = VM_TEMPLATE.format(name=name) + "".join(f"DISK=[{d}]\n" for d in disks)
    if context:
        text += 'CONTEXT=[NETWORK="YES",SSH_PUBLIC_KEY="ssh-ed25519 AAAA"]\n'
    return text + extra
