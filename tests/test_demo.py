"""`make demo` keeps working: run it in a scratch directory and check what it claims."""

from __future__ import annotations

from onestorpool import demo


def test_demo_runs_and_reads_back_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "identical to the data at snapshot time" in out
    assert "snapshots left: []" in out
    assert out.count("data identical") == 2  # the VMDK and the VHDX import
    assert "image 0 state READY" in out and "'EVENT STATE IMAGE/READY//0 '" in out
    # the VM: every disk in one group snapshot, the checkpoint on StorPool, nothing left
    assert sum(line.startswith("    one-") and "-ONESNAP-0-" in line
               for line in out.splitlines()) == 3
    assert "volume one-sys-0-rawcheckpoint exists: True; checkpoint file on the host: False" \
        in out
    assert "resumed: volume one-sys-0-rawcheckpoint exists: False" in out
    assert "volumes of VM 0 left on StorPool: none" in out
    # the deleted image's tombstone reached the other cluster; the log tells the story
    assert "backup-site holds one-img-0-ONEDELETE-" in out
    assert " ds.rm " in out and " effect.done " in out and "remote_backup:one-img-0-" in out
    assert "sandbox down" in out
    assert "demo finished" in out
