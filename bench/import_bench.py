"""Image import (datastore ``cp``) at the speed of the disk, and the StorPool API per call.

Run: ``.venv/bin/python bench/import_bench.py [--rounds N] [--size-mib N] [--write]``
(``--write`` updates the ``## Image import`` section of BENCHMARKS.md).

* Import: a qcow2 and a VMDK of ``--size-mib`` virtual MiB (half of it random data) are
  imported by the real ``cp`` executable against the StorPool sandbox (volumes are sparse
  files on the same filesystem), side by side with the floor: ``qemu-img convert -O raw`` of
  the same file into a file on the same filesystem, then ``fsync``. Rounds are interleaved;
  the ratio is the median of the per-round ratios.
* API: milliseconds per call on a kept-alive connection and on a new connection per call,
  and the StorPool calls each datastore action makes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from eventlog_bench import write_named_section  # noqa: E402

from onestorpool.sandbox.frontend import ds_action, image_xml, make_frontend  # noqa: E402
from onestorpool.sandbox.storpool import StorPoolSandbox  # noqa: E402
from onestorpool.storpool import StorPoolClient  # noqa: E402

MIB = 1 << 20


def make_images(root: Path, size_mib: int) -> dict[str, Path]:
    raw = root / "source.raw"
    with raw.open("wb") as handle:
        for _ in range(size_mib // 2):
            handle.write(os.urandom(MIB))
        handle.truncate(size_mib * MIB)
    images = {}
    for fmt in ("qcow2", "vmdk"):
        images[fmt] = root / f"source.{fmt}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw),
                        str(images[fmt])], check=True)
    raw.unlink()
    return images


def floor(source: Path, fmt: str, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(source), str(target)],
                   check=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def import_once(frontend, sandbox: StorPoolSandbox, source: Path, image_id: int
                ) -> tuple[float, int]:
    sandbox.api_calls.clear()
    started = time.perf_counter()
    result = frontend.run_ds("cp", ds_action(image_xml(image_id, path=str(source))), image_id)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cp failed: {result.stderr}")
    calls = len(sandbox.api_calls)
    frontend.sp.volume_delete(f"one-img-{image_id}")
    return elapsed, calls


def api_latency(sandbox: StorPoolSandbox, calls: int = 300) -> tuple[float, float]:
    with StorPoolClient(sandbox.host, sandbox.port, sandbox.token) as client:
        client.volumes_list()
        started = time.perf_counter()
        for _ in range(calls):
            client.volumes_list()
        kept = (time.perf_counter() - started) / calls
    started = time.perf_counter()
    for _ in range(calls):
        with StorPoolClient(sandbox.host, sandbox.port, sandbox.token) as client:
            client.volumes_list()
    fresh = (time.perf_counter() - started) / calls
    return kept * 1000, fresh * 1000


def action_calls(frontend, sandbox: StorPoolSandbox, root: Path) -> list[tuple[str, int]]:
    raw = root / "small.raw"
    raw.write_bytes(os.urandom(2 * MIB))
    qcow2 = root / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    counted = []
    for name, action, xml, object_id in (
            ("cp (raw)", "cp", ds_action(image_xml(901, path=str(raw))), 901),
            ("cp (qcow2)", "cp", ds_action(image_xml(902, path=str(qcow2))), 902),
            ("stat (local file)", "stat", ds_action(image_xml(-1, path=str(qcow2))), 0),
            ("mkfs", "mkfs", ds_action(image_xml(903, size=2)), 903),
            ("rm", "rm", ds_action(image_xml(903, source="one-ds-100/one-img-903")), 903),
            ("monitor", "monitor", ds_action(None), 100)):
        sandbox.api_calls.clear()
        result = frontend.run_ds(action, xml, object_id)
        if result.returncode != 0:
            raise SystemExit(f"{action} failed: {result.stderr}")
        counted.append((name, len(sandbox.api_calls)))
    return counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as scratch:
        root = Path(scratch)
        images = make_images(root, args.size_mib)
        with StorPoolSandbox(root / "sp", "bench") as sandbox:
            frontend = make_frontend(root / "fe", sandbox)
            frontend.sp.volume_template_create("one-ds-100", replication=3)
            times: dict[str, dict[str, list[float]]] = {
                fmt: {"floor": [], "cp": []} for fmt in images}
            calls = {}
            for round_number in range(args.rounds):
                for index, (fmt, source) in enumerate(images.items()):
                    times[fmt]["floor"].append(floor(source, fmt, root / "floor.raw"))
                    elapsed, calls[fmt] = import_once(frontend, sandbox, source,
                                                      round_number * 10 + index)
                    times[fmt]["cp"].append(elapsed)
            kept, fresh = api_latency(sandbox)
            counted = action_calls(frontend, sandbox, root)
    lines = ["| measure | median s | ratio (same run) |", "|---|---:|---|"]
    for fmt, samples in times.items():
        ratio = statistics.median(c / f for c, f in zip(samples["cp"], samples["floor"],
                                                        strict=True))
        lines.append(f"| floor: `qemu-img convert -O raw` + fsync, {fmt} | "
                     f"{statistics.median(samples['floor']):.2f} | 1.00x |")
        lines.append(f"| `cp` of the {fmt} (whole driver action, {calls[fmt]} StorPool "
                     f"calls) | {statistics.median(samples['cp']):.2f} | {ratio:.2f}x the "
                     "floor (goal 1.5x) |")
    table = "\n".join(lines)
    api = (f"StorPool API on loopback (sandbox): {kept:.2f} ms per call on a kept-alive "
           f"connection, {fresh:.2f} ms with a new connection per call ({fresh / kept:.1f}x).")
    per_action = "StorPool calls per action: " + ", ".join(f"{name} {count}"
                                                           for name, count in counted) + "."
    print(table)
    print(api)
    print(per_action)
    if args.write:
        note = (f"Measured {time.strftime('%Y-%m-%d')}, {args.rounds} interleaved rounds, "
                f"{args.size_mib} MiB images (half random data), in /var/tmp; "
                f"`.venv/bin/python bench/import_bench.py --write`.")
        write_named_section("Image import", f"{note}\n\n{table}\n\n- {api}\n- {per_action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
