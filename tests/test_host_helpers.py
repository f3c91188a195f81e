"""``onestorpool host reserved`` against cgroup v1 and v2 trees (what reserved.sh read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onestorpool.cli import main
from onestorpool.host_helpers import cpu_count

GIB = 1 << 30
MEMINFO = "MemTotal:       65536000 kB\nMemFree:        1000 kB\n"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"proc/meminfo": MEMINFO, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


V2 = {"sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids",
      "sys/fs/cgroup/cpuset.cpus.effective": "0-15",
      "sys/fs/cgroup/machine.slice/cpuset.cpus.effective": "2-7,10-15",
      "sys/fs/cgroup/machine.slice/memory.max": str(56 * GIB),
      "sys/fs/cgroup/storpool.slice/cpuset.cpus.effective": "0-1,8-9",
      "sys/fs/cgroup/storpool.slice/memory.max": str(4 * GIB)}
V1 = {"sys/fs/cgroup/cpuset/cpuset.cpus": "0-15",
      "sys/fs/cgroup/cpuset/machine.slice/cpuset.cpus": "4-15",
      "sys/fs/cgroup/memory/machine.slice/memory.limit_in_bytes": str(60 * GIB),
      "sys/fs/cgroup/cpuset/storpool.slice/cpuset.cpus": "0-3",
      "sys/fs/cgroup/memory/storpool.slice/memory.limit_in_bytes": str(3 * GIB)}


@pytest.mark.parametrize(("files", "cpu", "memory"), [
    (V2, 400, 65536000 - 56 * GIB // 1024),
    (V1, 400, 65536000 - 60 * GIB // 1024),
    # machine.slice without limits: StorPool's own slice is what is reserved
    ({**V2, "sys/fs/cgroup/machine.slice/cpuset.cpus.effective": "",
      "sys/fs/cgroup/machine.slice/memory.max": "max"}, 400, 4 * GIB // 1024),
    ({**V1, "sys/fs/cgroup/cpuset/machine.slice/cpuset.cpus": "",
      "sys/fs/cgroup/memory/machine.slice/memory.limit_in_bytes": "9223372036854771712"},
     400, 3 * GIB // 1024),
], ids=["v2", "v1", "v2-unlimited", "v1-unlimited"])
def test_reserved_from_the_cgroup_tree(tmp_path, capsys, files, cpu, memory):
    root = tree(tmp_path / "host", files)
    assert main(["host", "reserved", "--root", str(root)]) == 0
    assert capsys.readouterr().out == f'RESERVED_CPU="{cpu}"\nRESERVED_MEM="{memory}"\n'


def test_cpu_lists():
    assert cpu_count("0-3,8,10-11") == 7
    assert cpu_count("") == 0


def test_no_cgroup_tree_is_a_clear_error(tmp_path):
    from onestorpool.errors import InputError

    with pytest.raises(InputError, match="no cpuset"):
        main(["host", "reserved", "--root", str(tree(tmp_path / "h", {}))])
