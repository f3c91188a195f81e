"""The hooks alternative on the oned sandbox's hook execution manager: ``onestorpool hooks
install`` registers them through XML-RPC (twice: nothing changes), oned runs them on the
same triggers, they call the subscriber's handlers once; with the daemon also running,
still once."""

from __future__ import annotations

import subprocess
import sys

from lxml import etree

from onestorpool.hooks import templates
from tests.subscribers.conftest import deploy, events, remote_copies, subscriber_env, wait_for

pytest_plugins = ["tests.sandbox.conftest_oned"]  # make_world

COMMAND = f"{sys.executable} -m onestorpool.cli"


def cli(w, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "onestorpool.cli", *args],
                            env=subscriber_env(w), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_installed_hooks_ship_tombstones_once(cloud, start_daemon):
    w, image_ds, system_ds, (node1, _), remote = cloud
    assert "created" in cli(w, "hooks", "install", "--command", COMMAND).stdout
    assert "created" not in cli(w, "hooks", "install", "--command", COMMAND).stdout
    hooks = w.srv.hookpool.info(-2, -1, -1).HOOK
    assert sorted(h.NAME for h in hooks) == sorted(templates.name(r) for r in templates.TRIGGERS)
    base = w.oned.create_image(image_ds, "base", size_mb=2)
    vm_id = deploy(w, system_ds, node1, f'IMAGE_ID="{base}"', 'TYPE="fs",SIZE="2"')
    w.srv.vm.action("terminate", vm_id)
    w.oned.wait_vm(vm_id, "DONE")
    wait_for(lambda: len(remote_copies(remote)) == 2, "the disks shipped by the hook")
    daemon = start_daemon()  # both now: still once
    w.srv.image.delete(base)
    wait_for(lambda: len(remote_copies(remote)) == 3, "the image shipped")
    w.oned.hook_manager.hem.wait_idle(120)
    assert daemon.stop() == 0
    done = [e for e in events(w, "effect.done") if e.payload["effect_type"] == "remote_backup"]
    assert len(done) == 3 and len({e.payload["key"] for e in done}) == 3
    executed = events(w, "hook.executed")
    assert {(e.payload["route"], e.vm, e.image) for e in executed} == {
        ("vm.running", vm_id, None), ("vm.done", vm_id, None), ("image.delete", None, base)}
    hooklog = etree.fromstring(w.oned.call("one.hooklog.info", -1, -1, -1, 0).encode())
    codes = hooklog.xpath("HOOK_EXECUTION_RECORD/EXECUTION_RESULT/CODE/text()")
    assert len(codes) == 3 and set(codes) == {"0"}
    cli(w, "hooks", "uninstall")
    assert not getattr(w.srv.hookpool.info(-2, -1, -1), "HOOK", None)


def test_a_bad_argument_is_one_error_line(cloud):
    w = cloud[0]
    for route, argument in (("vm.done", "!!! not base64"), ("image.delete", "PGE+")):
        result = subprocess.run([sys.executable, "-m", "onestorpool.cli", "hooks", "run", route],
                                input=argument, env=subscriber_env(w), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip()


def test_each_hook_fires_its_own_route():
    """A hook's trigger, as oned turns it into a state condition (HookStateVM.cc), makes an
    event its route acts on: the hooks and the daemon's subscriptions never disagree."""
    import base64

    from onestorpool.hooks.cli import hook_event
    from onestorpool.subscribers.composition import ROUTES

    routes = {route.name: route for route in ROUTES}
    assert set(templates.TRIGGERS) <= set(routes)
    vm = base64.b64encode(b"<VM><ID>7</ID></VM>").decode()
    call = base64.b64encode(b"<CALL_INFO><RESULT>1</RESULT><PARAMETERS>"
                            b"<PARAMETER><POSITION>1</POSITION><TYPE>IN</TYPE>"
                            b"<VALUE>****</VALUE></PARAMETER>"
                            b"<PARAMETER><POSITION>2</POSITION><TYPE>IN</TYPE>"
                            b"<VALUE>7</VALUE></PARAMETER></PARAMETERS></CALL_INFO>").decode()
    for name, trigger in templates.TRIGGERS.items():
        event = hook_event(name, vm if trigger["TYPE"] == "state" else call)
        assert routes[name].matches(event), (name, event.key)
        assert event.key.encode().startswith(routes[name].prefix), (name, event.key)
