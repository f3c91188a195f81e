"""The RPM and the DEB (issue 14): built once per run by packaging/build.py, their contents,
modes and dependencies compared with what they must carry, lintian and rpmlint without
errors, the DEB installed for real (dpkg -i, a driver run against the sandboxes, purge) and
the RPM into a scratch root.

Needs dpkg-deb, rpmbuild, lintian and rpmlint (``make system-packages`` installs them); the
DEB installation needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.installed_import import import_script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))
import build  # noqa: E402  (packaging/build.py)

TOOLS = ("dpkg-deb", "rpmbuild", "rpm", "lintian", "rpmlint")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (make system-packages installs them)")

SHIPPED = sorted(str(p.relative_to(REPO / "drivers/remotes"))
                 for p in (REPO / "drivers/remotes").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts)
PYTHON = f"/usr/bin/{build.PYTHON}"


def sh(*argv: str | Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv[:4]))}: {done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    done = sh(sys.executable, REPO / "packaging/build.py", "--out", out,
              "--build", tmp_path_factory.mktemp("build"), timeout=900)
    built = [Path(line) for line in done.stdout.split()]
    return {"deb": next(p for p in built if p.suffix == ".deb"),
            "rpm": next(p for p in built if p.suffix == ".rpm")}


def _listing(lines: list[str], pattern: str) -> dict[str, tuple[str, str]]:
    """path → (mode string, owner) from ``dpkg -c`` or ``rpm -qlv`` lines."""
    out = {}
    for line in lines:
        match = re.match(pattern, line)
        if match:
            path = match.group("path").removeprefix(".").split(" -> ")[0]
            out[path.rstrip("/") or "/"] = (match.group("mode"), match.group("owner"))
    return out


def deb_files(deb: Path) -> dict[str, tuple[str, str]]:
    return _listing(sh("dpkg-deb", "-c", deb).stdout.splitlines(),
                    r"(?P<mode>\S{10}) (?P<owner>\S+)\s+\d+ \S+ \S+ (?P<path>.*)$")


def rpm_files(rpm: Path) -> dict[str, tuple[str, str]]:
    lines = sh("rpm", "-qlvp", rpm).stdout.splitlines()
    out = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 9:
            path = line.split(" ", 8)[-1].split()[-1] if " -> " not in line else \
                line.split(" -> ")[0].split()[-1]
            out[path] = (fields[0], f"{fields[2]}/{fields[3]}")
    return out


def expected_files() -> dict[str, str]:
    """What both packages carry: path → mode (``-rwxr-xr-x`` style, l for links)."""
    files = {f"{build.REMOTES}/{name}": "-rwxr-xr-x" for name in SHIPPED}
    files.update({
        "/usr/bin/onestorpool": "lrwxrwxrwx",
        f"{build.PREFIX}/bin/onestorpool": "-rwxr-xr-x",
        f"{build.PREFIX}/bin/python": "lrwxrwxrwx",
        f"{build.PREFIX}/pyvenv.cfg": "-rw-r--r--",
        build.CONFFILE: "-rw-r--r--",
        f"/usr/lib/systemd/system/{build.UNIT}": "-rw-r--r--",
        "/usr/lib/tmpfiles.d/onestorpool.conf": "-rw-r--r--",
        f"/usr/share/onestorpool/systemd/{build.HA_DROP_IN}": "-rw-r--r--",
        build.EVENT_LOG_DIR: "drwxr-x---",
        "/usr/share/man/man1/onestorpool.1.gz": "-rw-r--r--",
        "/usr/share/doc/onestorpool/copyright": "-rw-r--r--",
    })
    return files


def _check_contents(files: dict[str, tuple[str, str]], owner: str) -> None:
    for path, mode in expected_files().items():
        assert path in files, f"{path} missing"
        assert files[path][0] == mode, (path, files[path])
        assert files[path][1] == owner, (path, files[path])
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in files if "/site-packages/" in p and p.endswith(".so")
                and files[p][0] != "-rw-r--r--"]
    assert any(p.endswith("/site-packages/onestorpool/cli.py") for p in files)
    assert not [p for p in files if "/build/" in p or str(REPO) in p]


def test_deb_contents_modes_and_owners(packages):
    _check_contents(deb_files(packages["deb"]), "root/root")


def test_deb_metadata(packages):
    fields = sh("dpkg-deb", "-f", packages["deb"], "Package", "Depends", "Recommends",
                "Architecture").stdout
    assert "Package: onestorpool" in fields
    depends = re.search(r"Depends: (.*)", fields).group(1).split(", ")
    assert build.PYTHON in depends and "qemu-utils" in depends
    assert "Recommends: opennebula-common" in fields
    control = sh("dpkg-deb", "-I", packages["deb"], "conffiles").stdout
    assert control.split() == [build.CONFFILE]


def test_rpm_contents_modes_and_dependencies(packages):
    rpm = packages["rpm"]
    _check_contents(rpm_files(rpm), "root/root")
    requires = sh("rpm", "-qpR", rpm).stdout.split("\n")
    assert build.PYTHON in requires and "qemu-img" in requires
    assert not [r for r in requires if r.startswith(("lib", "python(abi)"))]  # no auto deps
    assert sh("rpm", "-qp", "--configfiles", rpm).stdout.split() == [build.CONFFILE]
    scripts = sh("rpm", "-qp", "--scripts", rpm).stdout
    assert "onestorpool install --skip-remotes" in scripts
    assert "onestorpool install --uninstall --skip-remotes" in scripts
    assert "try-restart onestorpool-subscriber.service" in scripts


def test_lintian_reports_no_errors(packages):
    done = sh("lintian", "--fail-on", "error", "--no-tag-display-limit", packages["deb"],
              check=False, timeout=300)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert done.returncode == 0 and not errors, done.stdout


def test_rpmlint_reports_no_errors(packages):
    done = sh("rpmlint", "-r", REPO / "packaging/rpm/onestorpool.rpmlintrc", packages["rpm"],
              check=False, timeout=300)
    assert " 0 errors" in done.stdout, done.stdout


def test_rpm_into_a_scratch_root(packages, tmp_path):
    root = tmp_path / "root"
    sh("rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts",
       "--ignorearch", packages["rpm"], timeout=300)
    cp = root / build.REMOTES.lstrip("/") / "datastore/storpool/cp"
    assert cp.read_text().splitlines()[0] == f"#!{build.PREFIX}/bin/python"
    assert cp.stat().st_mode & 0o777 == 0o755
    for name in SHIPPED:
        assert (root / build.REMOTES.lstrip("/") / name).is_file()
    venv = root / build.PREFIX.lstrip("/")
    assert os.readlink(venv / "bin/python") == PYTHON
    assert (root / "usr/bin/onestorpool").resolve() == venv / "bin/onestorpool"
    assert (root / build.EVENT_LOG_DIR.lstrip("/")).stat().st_mode & 0o777 == 0o750
    assert "ProtectSystem=strict" in (root / "usr/lib/systemd/system" / build.UNIT).read_text()
    listed = sh("rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-qa").stdout
    assert listed.startswith("onestorpool-")


def test_systemd_unit_hardening():
    unit = (REPO / "packaging/systemd" / build.UNIT).read_text()
    for line in ("User=oneadmin", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes",
                 f"ReadWritePaths={build.EVENT_LOG_DIR} /var/lib/one/datastores",
                 "ExecStart=/usr/bin/onestorpool subscriber run"):
        assert line in unit.splitlines()


def test_rpm_and_deb_carry_the_same_files(packages):
    deb, rpm = deb_files(packages["deb"]), rpm_files(packages["rpm"])
    # the DEB lists the system directories it puts files in, the RPM leaves them to the
    # filesystem package; the DEB alone has lintian overrides and a Debian changelog
    only_deb = {p for p in deb if p not in rpm and not deb[p][0].startswith("d")
                and not p.startswith("/usr/share/lintian")
                and p != "/usr/share/doc/onestorpool/changelog.gz"}
    assert not only_deb
    assert not {p for p in rpm if p not in deb}


# -- the DEB installed on this machine --------------------------------------------------------


def _dpkg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """dpkg, waiting for its lock when another installation runs."""
    for _ in range(60):
        done = sh("dpkg", "--force-confdef", "--force-confold", *args, check=False,
                  timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive",
                                    **(env or {})})
        if "lock" not in done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.skipif(os.geteuid() != 0, reason="installing a DEB needs root")
@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a dpkg system")
def test_deb_installs_upgrades_runs_a_driver_and_purges(packages, tmp_path):
    """On a scratch front-end (``ONESTORPOOL_ROOT``, which the maintainer scripts pass on to
    ``onestorpool install``): the post-install configures oned.conf, an upgrade keeps the
    configuration and the event log and leaves oned.conf as it is, the purge restores
    oned.conf byte for byte and keeps a non-empty event log."""
    if sh("dpkg-query", "-W", "-f", "${Status}", "onestorpool", check=False).stdout \
            .endswith("installed"):
        pytest.skip("an onestorpool package is installed here already; not touching it")
    if not Path(PYTHON).exists():
        pytest.skip(f"{PYTHON} (the DEB's interpreter) is not installed")
    if os.path.exists(build.EVENT_LOG_DIR):
        pytest.skip(f"{build.EVENT_LOG_DIR} exists here: an event log not to touch")
    front = tmp_path / "frontend"
    (front / "etc/one/vmm_exec").mkdir(parents=True)
    fixtures = REPO / "tests/fixtures/oned_conf"
    oned_conf = front / "etc/one/oned.conf"
    shutil.copy(fixtures / "oned-7.0.2.conf", oned_conf)
    shutil.copy(fixtures / "vmm_execrc-7.0.2", front / "etc/one/vmm_exec/vmm_execrc")
    original = oned_conf.read_bytes()
    scratch = {"ONESTORPOOL_ROOT": str(front)}
    event_log = Path(build.EVENT_LOG_DIR) / "events.db"

    _dpkg("-i", str(packages["deb"]), env=scratch)
    try:
        configured = oned_conf.read_bytes()
        assert b'TM_MAD_CONF = [\n    NAME = "storpool",' in configured
        version = sh("/usr/bin/onestorpool", "--version").stdout.strip()
        assert version == f"onestorpool {build.version()}"
        assert sh("dpkg-query", "-W", "-f", "${Status}", "onestorpool").stdout == \
            "install ok installed"
        assert list(Path(build.PREFIX).rglob("__pycache__/cli.*.pyc"))  # compiled
        if shutil.which("systemd-analyze"):
            done = sh("systemd-analyze", "verify", f"/usr/lib/systemd/system/{build.UNIT}",
                      check=False, timeout=120)
            assert done.returncode == 0, done.stderr
            # the HA drop-in, installed as its header says, still makes a valid unit
            drop_in = Path(f"/etc/systemd/system/{build.UNIT}.d/ha.conf")
            drop_in.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f"/usr/share/onestorpool/systemd/{build.HA_DROP_IN}", drop_in)
            try:
                done = sh("systemd-analyze", "verify", f"/usr/lib/systemd/system/{build.UNIT}",
                          check=False, timeout=120)
                assert done.returncode == 0, done.stderr
            finally:
                shutil.rmtree(drop_in.parent)
        _driver_run_against_the_sandboxes(tmp_path)

        # upgrade: the admin's configuration and the event log stay, oned.conf too
        conffile = Path(build.CONFFILE)
        conffile.write_text(conffile.read_text() + "ONE_PX=mine\n")
        event_log.write_bytes(b"audit")
        _dpkg("-i", str(packages["deb"]), env=scratch)
        assert conffile.read_text().endswith("ONE_PX=mine\n")
        assert event_log.read_bytes() == b"audit"
        assert oned_conf.read_bytes() == configured
    finally:
        _dpkg("--purge", "onestorpool", env=scratch)
    assert oned_conf.read_bytes() == original
    for path in (build.PREFIX, "/usr/bin/onestorpool", f"{build.REMOTES}/datastore/storpool",
                 build.CONFFILE, f"/usr/lib/systemd/system/{build.UNIT}"):
        assert not os.path.lexists(path), f"{path} left after purge"
    assert sh("dpkg-query", "-W", "onestorpool", check=False).returncode != 0
    assert event_log.read_bytes() == b"audit"  # audit data: the admin removes it knowingly
    shutil.rmtree(build.EVENT_LOG_DIR)
    for leftover in (build.REMOTES, "/var/lib/one"):
        with contextlib.suppress(OSError):
            os.rmdir(leftover)


def _driver_run_against_the_sandboxes(tmp_path: Path) -> None:
    """The installed command starts the sandboxes and oned's sandbox runs the installed
    package's datastore driver (cp, with the package's interpreter) to import an image."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ONESTORPOOL_", "ONE_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"
    sandbox = tmp_path / "sandbox"
    sh("/usr/bin/onestorpool", "sandbox", "up", "--dir", sandbox, env=env, cwd=tmp_path,
       timeout=300)
    try:
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (sandbox / "sandbox.env").read_text().splitlines())
        images = tmp_path / "images"
        images.mkdir()
        sh("qemu-img", "create", "-f", "qcow2", images / "disk.qcow2", "5M")
        script = import_script(images)
        done = sh(f"{build.PREFIX}/bin/python", "-c", script, env={**env, **exports},
                  cwd=tmp_path, timeout=300)
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["state"] == 1, result["error"]
        assert result["file"].startswith(build.PREFIX)  # the package's, not the source tree
        driver = sandbox / "remotes/datastore/storpool/cp"
        assert driver.read_text().splitlines()[0] == f"#!{build.PREFIX}/bin/python"
    finally:
        sh("/usr/bin/onestorpool", "sandbox", "down", "--dir", sandbox, env=env, cwd=tmp_path,
           check=False, timeout=120)
