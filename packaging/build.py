"""Build the RPM and the DEB of the add-on: ``python packaging/build.py [--out dist]``.

One staged file tree is the manifest of both packages; the native tools package it
(``dpkg-deb`` for the DEB, ``rpmbuild`` with ``packaging/rpm/onestorpool.spec.in`` for the
RPM), so ``lintian`` and ``rpmlint`` judge what admins really install.

The tree:

* ``/usr/lib/onestorpool``: a private virtualenv for the interpreter that runs this script
  (its minor version becomes the packages' dependency: ``python3.11``), built from the
  project's wheel and the wheels of its dependencies downloaded into ``build/wheels`` at
  build time; installing the package needs no network and leaves the system Python alone.
  No ``.pyc`` in the payload: the post-install compiles, the pre-removal deletes them.
* ``/usr/bin/onestorpool``: the command (a link into the virtualenv).
* ``/var/lib/one/remotes/...``: every driver executable the package ships
  (:func:`onestorpool.drivers.install.install_remotes`), interpreter fixed to the private
  one; the TM and VMM drivers join by being added under ``drivers/remotes``.
* ``/etc/storpool/addon-storpool.conf``: the sample local configuration (a conffile that
  upgrades never overwrite).
* the subscriber's systemd unit, a tmpfiles.d entry and the event log directory
  ``/var/lib/one/onestorpool`` (owner oneadmin, mode 0750, set by the post-install), the
  ``onehook`` templates under ``/usr/share/onestorpool/hooks``, the man page generated from
  ``--help``, the documentation.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "onestorpool"
PREFIX = "/usr/lib/onestorpool"
REMOTES = "/var/lib/one/remotes"
EVENT_LOG_DIR = "/var/lib/one/onestorpool"
CONFFILE = "/etc/storpool/addon-storpool.conf"
UNIT = "onestorpool-subscriber.service"
HA_DROP_IN = "onestorpool-subscriber-ha.conf"  # copied by the admin for EVENT_LOG_VOLUME
MAINTAINER = "opennebula-storpool maintainers <maintainers@opennebula-storpool.invalid>"
SUMMARY = "StorPool storage add-on for OpenNebula"
DESCRIPTION = """\
The StorPool storage add-on for OpenNebula: the datastore and transfer manager
drivers (DS_MAD and TM_MAD storpool), the onestorpool command (oned.conf
installer, doctor, datastore helper, event log audit and replay) and the
hook subscriber's systemd unit. It runs from a private Python virtualenv.
"""
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
# dependencies besides the interpreter: qemu-img for image imports, usermod for the installer
DEB_DEPENDS = [PYTHON, "qemu-utils", "passwd", "libc6"]
RPM_REQUIRES = [PYTHON, "qemu-img", "shadow-utils"]
RECOMMENDS = ["opennebula-common"]


def version() -> str:
    text = (REPO / "onestorpool/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert match
    return match.group(1)


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv[:4]))} failed:\n{done.stdout}{done.stderr}")
    return done


# -- the tree -----------------------------------------------------------------------------------


def wheels(build: Path) -> Path:
    """The project's wheel and its dependencies' (pip's cache keeps repeated builds local)."""
    target = build / "wheels"
    for old in target.glob("opennebula_storpool-*.whl"):
        old.unlink()
    run(sys.executable, "-m", "pip", "wheel", "-q", "--prefer-binary", "-w", target, REPO)
    return target


def virtualenv(stage: Path, wheel_dir: Path) -> None:
    """A virtualenv at ``stage + PREFIX`` that works once moved to ``PREFIX``."""
    venv = stage / PREFIX.lstrip("/")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    project = next(wheel_dir.glob("opennebula_storpool-*.whl"))
    run(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "-q",
        "--no-index", "--find-links", wheel_dir, "--no-compile", "--no-warn-script-location",
        project)
    # relocate: the interpreter by its versioned name (EL's /usr/bin/python3 is 3.6 or 3.9),
    # scripts and activate files naming the staging path
    for link in ("python", "python3", PYTHON):
        path = venv / "bin" / link
        path.unlink(missing_ok=True)
        path.symlink_to(f"/usr/bin/{PYTHON}")
    for path in (venv / "bin").iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        if path.name.startswith("activate"):  # an installed virtualenv is not activated
            path.unlink()
            continue
        data = path.read_bytes()
        if str(venv).encode() in data:
            path.write_bytes(data.replace(str(venv).encode(), PREFIX.encode()))
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}\n"
        f"executable = /usr/bin/{PYTHON}\n")
    # the driver executables the package carries as data name the private interpreter, so
    # `onestorpool install` and the sandbox install them with it
    from onestorpool.drivers.install import SHEBANG
    site = venv / "lib" / PYTHON / "site-packages"
    for script in (site / "onestorpool/drivers/remotes").rglob("*"):
        data = script.read_bytes() if script.is_file() else b""
        if data.startswith(SHEBANG + b"\n"):
            script.write_bytes(f"#!{PREFIX}/bin/python".encode() + data[len(SHEBANG):])
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache)
    for record in venv.rglob("*.dist-info/RECORD"):  # paths of the staging tree
        record.write_text(record.read_text().replace(str(venv), PREFIX))
    # the StorPool bindings' tests, pip's vendored certificates and similar test data are
    # not needed at run time
    for junk in [*venv.rglob("tests"), *venv.rglob("test")]:
        if junk.is_dir() and "site-packages" in junk.parts:
            shutil.rmtree(junk)


def manpage() -> str:
    """onestorpool(1) from the ``--help`` of every command."""
    from onestorpool import __version__
    from onestorpool.cli import COMMANDS, main

    def help_of(words: list[str], fallback: str = "") -> str:
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            try:
                main([*words, "--help"])
            except SystemExit:
                pass
            except Exception as exc:  # a command whose module fails to import
                print(f"(man page) {' '.join(words)}: {exc}", file=sys.stderr)
                return fallback
        return buffer.getvalue()

    def roff(text: str) -> str:
        lines = []
        for line in text.replace("\\", "\\e").splitlines():
            lines.append("\\&" + line if line.startswith((".", "'")) else line)
        return "\n".join(lines)

    os.environ["COLUMNS"] = "78"
    out = [f'.TH ONESTORPOOL 1 "" "onestorpool {__version__}" "User Commands"',
           ".SH NAME", "onestorpool \\- " + SUMMARY.replace("-", "\\-"),
           ".SH SYNOPSIS", ".B onestorpool", "\\fICOMMAND\\fR [\\fIoptions\\fR]",
           ".SH DESCRIPTION", ".nf", roff(help_of([])), ".fi", ".SH COMMANDS"]
    for command in COMMANDS:
        text = help_of(list(command.words), command.help)
        out += [".SS " + " ".join(command.words), ".nf", roff(text), ".fi"]
    out += [".SH FILES", ".TP", f".I {CONFFILE}", "local configuration", ".TP",
            f".I {EVENT_LOG_DIR}/events.db", "the event log", ".TP",
            f".I {REMOTES}/datastore/storpool/", "the datastore driver",
            ".SH SEE ALSO", "\\fBsystemctl\\fR(1), /usr/share/doc/onestorpool/README.md"]
    return "\n".join(out) + "\n"


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def stage_tree(stage: Path, wheel_dir: Path, unit_dir: str) -> None:
    """Everything but the package metadata, under ``stage``."""
    def put(path: str, data: bytes | str, mode: int = 0o644) -> Path:
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
        return target

    virtualenv(stage, wheel_dir)
    (stage / "usr/bin").mkdir(parents=True)
    (stage / "usr/bin/onestorpool").symlink_to(f"..{PREFIX.removeprefix('/usr')}/bin/onestorpool")

    from onestorpool.drivers.install import install_remotes
    install_remotes(stage / REMOTES.lstrip("/"), f"{PREFIX}/bin/python")

    put(CONFFILE, (HERE / "addon-storpool.conf").read_text(), 0o644)
    put(f"{unit_dir}/{UNIT}", (HERE / "systemd" / UNIT).read_text())
    put(f"/usr/share/onestorpool/systemd/{HA_DROP_IN}",
        (HERE / "systemd" / HA_DROP_IN).read_text())
    put("/usr/lib/tmpfiles.d/onestorpool.conf", (HERE / "systemd/onestorpool.tmpfiles").read_text())
    (stage / EVENT_LOG_DIR.lstrip("/")).mkdir(parents=True, mode=0o750)
    (stage / EVENT_LOG_DIR.lstrip("/")).chmod(0o750)
    for hook in sorted((REPO / "hooks").glob("*.hook")):  # onehook templates, as they come
        put(f"/usr/share/onestorpool/hooks/{hook.name}", hook.read_text())
    put("/usr/share/man/man1/onestorpool.1.gz", _gzip(manpage().encode()))
    doc = "/usr/share/doc/onestorpool"
    put(f"{doc}/README.md", (REPO / "README.md").read_text())
    put(f"{doc}/copyright", (HERE / "deb/copyright").read_text())


def _build_time() -> int:
    """``$SOURCE_DATE_EPOCH``, else the last commit's time (rpm trims changelog entries
    dated 1970)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True)
    return int(done.stdout.strip() or time.time())


def _walk(stage: Path) -> list[Path]:
    return sorted(p for p in stage.rglob("*") if p != stage)


def _normalize(stage: Path) -> None:
    for path in _walk(stage):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            if path != stage / EVENT_LOG_DIR.lstrip("/"):
                path.chmod(0o755)
        elif ".so" in path.suffixes:  # shared objects are mapped, not executed
            path.chmod(0o644)
        else:
            path.chmod(0o755 if mode & 0o111 else 0o644)


# -- DEB ----------------------------------------------------------------------------------------


def _deb_changelog(ver: str) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(_build_time()))
    return (f"{NAME} ({ver}) unstable; urgency=medium\n\n"
            f"  * Release {ver}: see the README.\n\n -- {MAINTAINER}  {date}\n")


def build_deb(build: Path, wheel_dir: Path, out: Path) -> Path:
    ver = version()
    stage = build / "deb"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    stage_tree(stage, wheel_dir, "/usr/lib/systemd/system")
    (stage / "usr/share/doc/onestorpool/changelog.gz").write_bytes(
        _gzip(_deb_changelog(ver).encode()))
    overrides = stage / "usr/share/lintian/overrides" / NAME
    overrides.parent.mkdir(parents=True)
    overrides.write_text((HERE / "deb/lintian-overrides").read_text())
    _normalize(stage)
    control = stage / "DEBIAN"
    control.mkdir()
    size = sum(p.lstat().st_size for p in _walk(stage) if p.is_file()) // 1024
    arch = run("dpkg", "--print-architecture").stdout.strip()
    (control / "control").write_text(
        f"Package: {NAME}\nVersion: {ver}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n"
        f"Installed-Size: {size}\nDepends: {', '.join(DEB_DEPENDS)}\n"
        f"Recommends: {', '.join(RECOMMENDS)}\nSection: admin\nPriority: optional\n"
        f"Homepage: https://github.com/OpenNebula/addon-storpool\n"
        f"Description: {SUMMARY}\n"
        + "".join(f" {line}\n" if line else " .\n" for line in DESCRIPTION.splitlines()))
    (control / "conffiles").write_text(f"{CONFFILE}\n")
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(HERE / "deb" / script, control / script)
        (control / script).chmod(0o755)
    md5 = run("find", ".", "-path", "./DEBIAN", "-prune", "-o", "-type", "f", "-printf",
              "%P\\0", cwd=stage).stdout.split("\0")
    sums = run("md5sum", *[m for m in md5 if m], cwd=stage).stdout
    (control / "md5sums").write_text(sums)
    (control / "md5sums").chmod(0o644)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{NAME}_{ver}_{arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, deb)
    return deb


# -- RPM ----------------------------------------------------------------------------------------


def _rpm_files(stage: Path) -> str:
    """``%files`` from the tree: owners and modes explicit, the conffile noreplace."""
    lines = []
    for path in _walk(stage):
        name = "/" + str(path.relative_to(stage))
        quoted = f'"{name}"' if " " in name else name
        if path.is_dir() and not path.is_symlink():
            if name in ("/usr", "/usr/bin", "/usr/lib", "/usr/share", "/etc", "/var",
                        "/var/lib", "/usr/share/man", "/usr/share/man/man1",
                        "/usr/share/doc", "/usr/lib/systemd", "/usr/lib/systemd/system",
                        "/usr/lib/tmpfiles.d"):
                continue  # the filesystem package's
            mode = "0750" if name == EVENT_LOG_DIR else "0755"
            lines.append(f"%dir %attr({mode},root,root) {quoted}")
        elif name == CONFFILE:
            lines.append(f"%config(noreplace) %attr(0644,root,root) {quoted}")
        elif name.startswith("/usr/share/doc/"):
            lines.append(f"%doc %attr(0644,root,root) {quoted}")
        elif path.is_symlink():
            lines.append(quoted)
        else:
            mode = "0755" if path.stat().st_mode & 0o111 else "0644"
            lines.append(f"%attr({mode},root,root) {quoted}")
    return "\n".join(lines) + "\n"


def build_rpm(build: Path, wheel_dir: Path, out: Path) -> Path:
    ver = version()
    topdir = build / "rpm"
    shutil.rmtree(topdir, ignore_errors=True)
    stage = topdir / "stage"
    stage.mkdir(parents=True)
    stage_tree(stage, wheel_dir, "/usr/lib/systemd/system")
    _normalize(stage)
    files = topdir / "files.list"
    files.write_text(_rpm_files(stage))
    spec = topdir / f"{NAME}.spec"
    template = (HERE / "rpm/onestorpool.spec.in").read_text()
    spec.write_text(template.format(
        name=NAME, version=ver, summary=SUMMARY, description=DESCRIPTION.strip(),
        requires="\n".join(f"Requires:       {r}" for r in RPM_REQUIRES),
        recommends="\n".join(f"Recommends:     {r}" for r in RECOMMENDS),
        stage=stage, files=files, prefix=PREFIX, python=PYTHON,
        conffile=CONFFILE, unit=UNIT, event_log_dir=EVENT_LOG_DIR,
        changelog_date=time.strftime("%a %b %d %Y", time.gmtime(_build_time())),
        maintainer=MAINTAINER))
    arch = run("uname", "-m").stdout.strip()
    run("rpmbuild", "-bb", "--quiet", "--define", f"_topdir {topdir}",
        "--define", "_build_id_links none", "--target", arch, spec)
    (built,) = (topdir / "RPMS").rglob("*.rpm")
    out.mkdir(parents=True, exist_ok=True)
    target = out / built.name
    shutil.copy(built, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--build", type=Path, default=REPO / "build/packages")
    parser.add_argument("--only", choices=("deb", "rpm"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # onestorpool itself: the drivers' installer, the man page
    args.build.mkdir(parents=True, exist_ok=True)
    wheel_dir = wheels(args.build)
    built = []
    if args.only != "rpm":
        built.append(build_deb(args.build, wheel_dir, args.out))
    if args.only != "deb":
        built.append(build_rpm(args.build, wheel_dir, args.out))
    for path in built:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
