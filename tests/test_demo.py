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
    assert "sandbox down" in out
    assert "demo finished" in out
