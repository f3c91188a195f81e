"""``onestorpool install`` on the oned.conf and vmm_execrc of real OpenNebula releases.

The fixtures under tests/fixtures/oned_conf/ are upstream's share/etc/oned.conf and
src/vmm_mad/exec/vmm_execrc at the release tags their names carry.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from onestorpool import install, onedconf
from onestorpool.cli import main
from onestorpool.onedconf import Edit

FIXTURES = Path(__file__).parent / "fixtures" / "oned_conf"
RELEASES = sorted(p.name[len("oned-"):-len(".conf")] for p in FIXTURES.glob("oned-*.conf"))
# the project's shared fixture (a packaged oned.conf of an installed front-end), when present
SHARED = Path(__file__).resolve().parents[2] / "shared/fixtures/opennebula/oned.conf"
CONFS = {release: FIXTURES / f"oned-{release}.conf" for release in RELEASES}
if SHARED.is_file():
    CONFS["shared"] = SHARED


@pytest.fixture
def front_end(tmp_path, monkeypatch):
    """A root with etc/one/oned.conf (7.0.2) and vmm_exec/vmm_execrc."""
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    monkeypatch.delenv("ONE_LOCATION", raising=False)
    monkeypatch.delenv("SKIP_ONED", raising=False)
    etc = tmp_path / "etc/one"
    (etc / "vmm_exec").mkdir(parents=True)
    shutil.copy(FIXTURES / "oned-7.0.2.conf", etc / "oned.conf")
    shutil.copy(FIXTURES / "vmm_execrc-7.0.2", etc / "vmm_exec/vmm_execrc")
    return tmp_path


def options(root: Path, release: str = "7.0.2", **kwargs) -> install.Options:
    defaults = {"skip_group": True, "skip_remotes": True}
    defaults.update(kwargs)
    return install.Options(oned_conf=root / "etc/one/oned.conf",
                           vmm_execrc=root / "etc/one/vmm_exec/vmm_execrc", **defaults)


def run(function, opts, **kwargs) -> tuple[int, str]:
    lines: list[str] = []
    code = function(opts, out=lines.append, **kwargs)
    return code, "\n".join(lines)


def _vector_count(text: str, name: str) -> int:
    return len(re.findall(rf"^{name}\s*=", text, re.MULTILINE))


@pytest.mark.parametrize("release", CONFS)
def test_parser_reads_every_release(release):
    text = CONFS[release].read_text()
    attributes = onedconf.parse(text)
    for name in ("TM_MAD_CONF", "DS_MAD_CONF", "VM_MAD", "VM_RESTRICTED_ATTR",
                 "IMAGE_RESTRICTED_ATTR"):
        assert len(onedconf.find(attributes, name)) == _vector_count(text, name), name
    assert onedconf.find(attributes, "VM_MAD", NAME="kvm")
    assert onedconf.find(attributes, "TM_MAD_CONF", NAME="ceph")[0].get("CLONE_TARGET").text \
        == "SELF"
    for attribute in attributes:  # spans cover the attribute as written
        assert text[attribute.start:].upper().startswith(attribute.name)


@pytest.mark.parametrize("release", CONFS)
def test_install_on_each_release(release, tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    etc = tmp_path / "etc/one"
    (etc / "vmm_exec").mkdir(parents=True)
    original = CONFS[release].read_bytes()
    conf = etc / "oned.conf"
    conf.write_bytes(original)
    conf.chmod(0o640)
    opts = options(tmp_path, skip_vmm_execrc=True)

    code, output = run(install.install, opts)
    assert code == 0, output
    text = conf.read_text()
    attributes = onedconf.parse(text)  # the result parses
    tm = onedconf.find(attributes, "TM_MAD")[-1].get("ARGUMENTS").text
    ds = onedconf.find(attributes, "DATASTORE_MAD")[-1].get("ARGUMENTS").text
    assert install._list_items(tm, "-d").count("storpool") == 1
    assert install._list_items(ds, "-d").count("storpool") == 1
    assert install._list_items(ds, "-s").count("storpool") == 1
    tm_conf = onedconf.find(attributes, "TM_MAD_CONF", NAME="storpool")
    ds_conf = onedconf.find(attributes, "DS_MAD_CONF", NAME="storpool")
    assert len(tm_conf) == 1 and len(ds_conf) == 1
    assert [(k, v.text) for k, v in tm_conf[0].members] == list(install.TM_MAD_CONF)
    assert [(k, v.text) for k, v in ds_conf[0].members] == list(install.DS_MAD_CONF)
    restricted = [a.value.text for a in onedconf.find(attributes, "VM_RESTRICTED_ATTR")]
    for name in install.VM_RESTRICTED_ATTRS:
        assert restricted.count(name) == 1
    # exactly those entries: two argument lines changed, the rest only added
    before, after = original.decode().splitlines(), text.splitlines()
    removed = [line for line in before if line not in after]
    # (and VM_MAD kvm's arguments when the add-on ships KVM local actions and the release's
    # VM_MAD kvm is one line)
    from onestorpool.drivers.install import shipped_remotes
    changed = 2 + bool(install.local_actions(shipped_remotes()))
    assert 2 <= len(removed) <= changed and all("ARGUMENTS" in line for line in removed)
    assert len(after) - len(before) == 3 + 2 + len(install.TM_MAD_CONF) + 2 + \
        len(install.DS_MAD_CONF) + 2
    assert conf.stat().st_mode & 0o777 == 0o640
    assert (etc / "oned.conf.onestorpool-backup").read_bytes() == original

    installed = conf.read_bytes()
    code, output = run(install.install, opts)  # second run: a no-op
    assert code == 0 and output == "nothing to change"
    assert conf.read_bytes() == installed

    code, output = run(install.uninstall, opts)
    assert code == 0, output
    assert "byte for byte" in output
    assert conf.read_bytes() == original
    assert conf.stat().st_mode & 0o777 == 0o640
    assert not (etc / "oned.conf.onestorpool-backup").exists()
    assert not install.state_path().exists()


@pytest.mark.parametrize("release", ["5.12.13", "6.10.5", "7.0.2"])
def test_vmm_execrc_live_disk_snapshots(release, tmp_path):
    original = (FIXTURES / f"vmm_execrc-{release}").read_text()
    plan = install.vmm_execrc_plan(tmp_path / "vmm_execrc", original)
    assert len(plan.edits) == 1
    text = onedconf.apply(original, plan.edits[0])
    line = re.search(r'^LIVE_DISK_SNAPSHOTS="([^"]*)"$', text, re.MULTILINE).group(1).split()
    assert line.count("kvm-storpool") == 1
    assert ("qemu-storpool" in line) == ("qemu-qcow2" in line)
    assert not install.vmm_execrc_plan(tmp_path / "vmm_execrc", text).edits
    assert onedconf.undo(text, plan.edits[0]) == original


def test_dry_run_shows_the_diff_and_writes_nothing(front_end):
    conf = front_end / "etc/one/oned.conf"
    before = conf.read_bytes()
    code, output = run(install.install, options(front_end, dry_run=True))
    assert code == 0
    assert "+    NAME = \"storpool\"," in output
    assert "+LIVE_DISK_SNAPSHOTS=" in output
    assert output.endswith("dry run: nothing written")
    assert conf.read_bytes() == before
    assert not install.state_path().exists()
    assert not list(conf.parent.glob("*.onestorpool-backup"))


def test_uninstall_keeps_the_admins_later_changes(front_end):
    conf = front_end / "etc/one/oned.conf"
    original = conf.read_text()
    run(install.install, options(front_end))
    edited = conf.read_text().replace('LOG = [\n', 'LOG = [\n    # mine\n', 1)
    conf.write_text(edited)
    code, output = run(install.uninstall, options(front_end))
    assert code == 0, output
    assert "later changes of yours kept" in output
    assert conf.read_text() == original.replace('LOG = [\n', 'LOG = [\n    # mine\n', 1)


def test_uninstall_refuses_when_its_lines_were_changed(front_end):
    conf = front_end / "etc/one/oned.conf"
    run(install.install, options(front_end))
    changed = conf.read_text().replace('DISK_TYPE_SHARED = "BLOCK"', 'DISK_TYPE_SHARED = "FILE"')
    conf.write_text(changed)
    code, output = run(install.uninstall, options(front_end))
    assert code == 1
    assert "TM_MAD_CONF for storpool: the lines it wrote were changed since" in output
    assert conf.read_text() == changed  # all of a file's edits or none
    assert install.state_path().exists()


def test_an_existing_storpool_configuration_is_left_alone(front_end):
    """A front-end the Bash add-on configured: storpool already everywhere."""
    conf = front_end / "etc/one/oned.conf"
    run(install.install, options(front_end))
    configured = conf.read_text().replace('MARKETPLACE_ACTIONS = "export"\n]\n\n#***',
                                          'MARKETPLACE_ACTIONS = ""\n]\n\n#***')
    (front_end / "etc/one/onestorpool-install.json").unlink()
    (front_end / "etc/one/oned.conf.onestorpool-backup").unlink()
    conf.write_text(configured)
    code, output = run(install.install, options(front_end))
    assert code == 0
    assert "DS_MAD_CONF storpool exists and differs: MARKETPLACE_ACTIONS=''" in output
    assert conf.read_text() == configured


def test_local_actions_of_the_shipped_vmm_scripts(tmp_path):
    shipped = tmp_path / "remotes"
    (shipped / "vmm/kvm").mkdir(parents=True)
    for name in ("deploy-tweaks", "attach_disk.storpool", "snapshot_create-storpool"):
        (shipped / "vmm/kvm" / name).write_text("#!/bin/sh\n")
    assert install.local_actions(shipped) == {"deploy": "deploy-tweaks",
                                              "attach_disk": "attach_disk.storpool"}
    actions = install.local_actions(shipped, vm_snapshots=True)
    assert actions["snapshotcreate"] == "snapshot_create-storpool"

    text = (FIXTURES / "oned-6.10.5.conf").read_text()
    text = text.replace('ARGUMENTS      = "-t 15 -r 0 kvm -p"',
                        'ARGUMENTS      = "-t 15 -r 0 kvm -p -l deploy=mine,save=tmsave"')
    plan = install.oned_conf_plan(tmp_path / "oned.conf", text, actions)
    result = text
    for edit in plan.edits:
        result = onedconf.apply(result, edit)
    kvm = onedconf.find(onedconf.parse(result), "VM_MAD", NAME="kvm")[0]
    assert kvm.get("ARGUMENTS").text == ("-t 15 -r 0 kvm -p -l deploy=mine,save=tmsave,"
                                         "attach_disk=attach_disk.storpool,"
                                         "snapshotcreate=snapshot_create-storpool")
    assert any("local action deploy runs mine" in note for note in plan.notes)
    # the qemu VM_MAD of the same file is left alone
    assert "-t 15 -r 0 kvm\"" in result


def test_local_actions_are_those_of_the_shipped_vmm_scripts(tmp_path):
    from onestorpool.drivers.install import shipped_remotes

    assert install.local_actions(shipped_remotes()) == {
        "deploy": "deploy-tweaks", "attach_disk": "attach_disk.storpool",
        "detach_disk": "detach_disk.storpool", "save": "tmsave", "restore": "tmrestore",
        "migrate": "migrate-tweaks"}
    assert install.local_actions(shipped_remotes(), vm_snapshots=True)["snapshotcreate"] == \
        "snapshot_create-storpool"
    assert install.local_actions(tmp_path, vm_snapshots=True) == {}  # none shipped: no edit


def test_remotes_installed_once_and_removed(front_end):
    remotes = front_end / "var/lib/one/remotes"
    remotes.mkdir(parents=True)
    opts = options(front_end, skip_remotes=False, python="/opt/one/python3")
    code, output = run(install.install, opts)
    assert code == 0 and "driver executables installed or updated" in output
    cp = remotes / "datastore/storpool/cp"
    assert cp.read_text().startswith("#!/opt/one/python3\n")
    assert os.access(cp, os.X_OK)
    code, output = run(install.install, opts)
    assert output == "nothing to change"
    code, output = run(install.uninstall, opts)
    assert code == 0 and not cp.exists() and not (remotes / "datastore").exists()
    assert remotes.is_dir()


def test_group_disk(front_end, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(install, "user_in_group", lambda: False)
    opts = options(front_end, skip_group=False, skip_oned=True, skip_vmm_execrc=True)
    _, output = run(install.install, opts, run=calls.append)
    assert calls == [["usermod", "-a", "-G", "disk", "oneadmin"]]
    monkeypatch.setattr(install, "user_in_group", lambda: True)
    _, output = run(install.install, opts, run=calls.append)
    assert output == "nothing to change" and len(calls) == 1
    run(install.uninstall, opts, run=calls.append)
    assert calls[-1] == ["gpasswd", "-d", "oneadmin", "disk"]


def test_cli_and_skip_oned(front_end, monkeypatch, capsys):
    conf = front_end / "etc/one/oned.conf"
    before = conf.read_bytes()
    monkeypatch.setenv("SKIP_ONED", "1")
    assert main(["install", "--skip-group", "--skip-remotes"]) == 0
    assert conf.read_bytes() == before  # split front-end: oned.conf left alone
    assert "kvm-storpool" in (front_end / "etc/one/vmm_exec/vmm_execrc").read_text()
    monkeypatch.delenv("SKIP_ONED")
    assert main(["install", "--skip-group", "--skip-remotes", "--dry-run"]) == 0
    assert "TM_MAD_CONF = [" in capsys.readouterr().out
    assert main(["install", "--uninstall", "--skip-group", "--skip-remotes"]) == 0
    assert not install.state_path().exists()


def test_edit_round_trip_is_exact():
    edit = Edit("x", "A\n", "A\nB\n")
    assert onedconf.undo(onedconf.apply("0\nA\n1\n", edit), edit) == "0\nA\n1\n"
    with pytest.raises(onedconf.EditConflict):
        onedconf.apply("A\nA\n", edit)


def test_parse_errors_name_the_line():
    with pytest.raises(onedconf.ParseError, match="line 2"):
        onedconf.parse('A = 1\nB = [ C = "x"\n')


def test_bytes_that_are_not_utf8_and_a_linked_oned_conf_survive(front_end):
    etc = front_end / "etc/one"
    real = etc / "oned.conf.real"
    original = b"# caf\xe9 (latin-1)\n" + (etc / "oned.conf").read_bytes()
    real.write_bytes(original)
    (etc / "oned.conf").unlink()
    (etc / "oned.conf").symlink_to("oned.conf.real")
    assert run(install.install, options(front_end))[0] == 0
    assert (etc / "oned.conf").is_symlink()
    assert real.read_bytes().startswith(b"# caf\xe9 (latin-1)\n")
    assert b'NAME = "storpool"' in real.read_bytes()
    assert run(install.uninstall, options(front_end))[0] == 0
    assert real.read_bytes() == original and (etc / "oned.conf").is_symlink()
