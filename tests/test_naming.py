"""Naming: every builder round-trips through parse; foreign names are not ours."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onestorpool.errors import InputError
from onestorpool.naming import Naming, ParsedName, volume_from_source

ids = st.integers(min_value=0, max_value=10**9)
prefixes = st.from_regex(r"[A-Za-z0-9_]{1,8}(-[A-Za-z0-9_]{1,5})?", fullmatch=True)
randoms = st.from_regex(r"[A-Za-z0-9]{7}[A-Za-z]", fullmatch=True)
timestamps = st.integers(min_value=0, max_value=2**40)


def volumes(naming: Naming):
    """Every kind of volume name, with what parse must return for it."""
    return st.one_of(
        ids.map(lambda i: (naming.image(i), ParsedName("image", image_id=i))),
        st.tuples(ids, ids, ids).map(lambda t: (naming.clone(*t), ParsedName(
            "clone", image_id=t[0], vm_id=t[1], disk_id=t[2]))),
        ids.map(lambda i: (naming.staging(i), ParsedName("staging", image_id=i))),
        st.tuples(ids, ids, st.sampled_from(["raw", "swap", "qcow2"])).map(
            lambda t: (naming.volatile(*t), ParsedName("volatile", vm_id=t[0], disk_id=t[1],
                                                       fmt=t[2]))),
        st.tuples(ids, ids).map(lambda t: (naming.context(*t), ParsedName(
            "context", vm_id=t[0], disk_id=t[1]))),
        ids.map(lambda v: (naming.nvram(v), ParsedName("nvram", vm_id=v))),
        ids.map(lambda v: (naming.swtpm(v), ParsedName("swtpm", vm_id=v))),
        ids.map(lambda v: (naming.rawcheckpoint(v), ParsedName("rawcheckpoint", vm_id=v))),
        ids.map(lambda v: (naming.checkpoint(v), ParsedName("checkpoint", vm_id=v))),
        ids.map(lambda v: (naming.memory(v), ParsedName("memory", vm_id=v))),
    )


def derived(naming: Naming, volume: tuple[str, ParsedName]):
    name, parsed = volume
    return st.one_of(
        st.just(volume),
        ids.map(lambda s: (naming.disk_snapshot(name, s), ParsedName(
            "disk_snapshot", snap_id=s, base=parsed))),
        st.tuples(ids, timestamps).map(lambda t: (naming.vm_snapshot(name, *t), ParsedName(
            "vm_snapshot", vmsnap_id=t[0], timestamp=t[1], base=parsed))),
        timestamps.map(lambda t: (naming.backup_snapshot(name, t), ParsedName(
            "backup", timestamp=t, base=parsed))),
        timestamps.map(lambda t: (naming.tombstone(name, t), ParsedName(
            "tombstone", timestamp=t, base=parsed))),
        randoms.map(lambda r: r[:6]).filter(lambda r: not r.isdigit()).map(
            lambda r: (naming.export_snapshot(name, r), ParsedName(
                "export", suffix=r, base=parsed))),
        st.tuples(timestamps, randoms).map(lambda t: (naming.revert_temp(name, *t), ParsedName(
            "revert_temp", timestamp=t[0], suffix=t[1], base=parsed))),
        st.tuples(timestamps, randoms).map(lambda t: (
            naming.vmsnap_revert_temp(name, *t), ParsedName(
                "vmsnap_revert_temp", timestamp=t[0], suffix=t[1], base=parsed))),
        randoms.map(lambda r: (naming.restore_temp(name, r), ParsedName(
            "restore_temp", suffix=r, base=parsed))),
    )


@st.composite
def names(draw):
    naming = Naming(draw(prefixes), draw(st.sampled_from(["ONESNAP", "VMSNAP", "X_1"])))
    volume = draw(volumes(naming))
    return naming, draw(derived(naming, volume))


@given(names())
def test_build_then_parse_round_trips(case):
    naming, (name, expected) = case
    assert naming.parse(name) == expected


@given(prefixes, prefixes, ids)
def test_another_instance_does_not_see_our_names(px1, px2, image_id):
    if px1 == px2 or px2.startswith(px1 + "-") or px1.startswith(px2 + "-"):
        return
    assert Naming(px2).parse(Naming(px1).image(image_id)) is None


@given(ids, ids)
def test_template_and_source(ds_id, image_id):
    naming = Naming()
    source = naming.image_source(ds_id, image_id)
    assert source == f"one-ds-{ds_id}/one-img-{image_id}"
    assert volume_from_source(source) == naming.image(image_id)
    assert naming.parse(naming.template(ds_id)) == ParsedName("template", ds_id=ds_id)


@pytest.mark.parametrize(("build", "expected"), [
    (lambda n: n.template(100), "one-ds-100"),
    (lambda n: n.image(7), "one-img-7"),
    (lambda n: n.clone(7, 42, 1), "one-img-7-42-1"),
    (lambda n: n.volatile(42, 2, "swap"), "one-sys-42-2-swap"),
    (lambda n: n.context(42, 3), "one-sys-42-3-iso"),
    (lambda n: n.nvram(42), "one-sys-42-NVRAM"),
    (lambda n: n.swtpm(42), "one-sys-42-SWTPM"),
    (lambda n: n.rawcheckpoint(42), "one-sys-42-rawcheckpoint"),
    (lambda n: n.memory(42), "one-sys-42"),
    (lambda n: n.staging(7), "one-img-7-c1a9b5bb7ab0f4bb44bd2ef1f3d1d75f"),
    (lambda n: n.disk_snapshot("one-img-7", 0), "one-img-7-snap0"),
    (lambda n: n.vm_snapshot("one-img-7-42-1", 3, 1700000000),
     "one-img-7-42-1-ONESNAP-3-1700000000"),
    (lambda n: n.backup_snapshot("one-img-7", 1700000000), "one-img-7-ONEBACKUP-1700000000"),
])
def test_names_match_the_old_addon(build, expected):
    """A cluster run by the Bash add-on must be taken over as is: same names, byte for byte."""
    if expected.startswith("one-img-7-c1"):
        import hashlib

        expected = "one-img-7-" + hashlib.md5(b"one-img-7").hexdigest()
    assert build(Naming()) == expected


def test_prefix_separates_instances():
    assert Naming("two").image(5) == "two-img-5"
    assert Naming("two").parse("one-img-5") is None


@pytest.mark.parametrize("bad", ["", "a b", "one.x", "-one", "one-", "x" * 65, "on/e"])
def test_bad_prefix_refused(bad):
    with pytest.raises(InputError, match="ONE_PX"):
        Naming(bad)


@pytest.mark.parametrize("foreign", [
    "one-img-", "one-img-01", "one-img-5-", "one-img-5-x", "one-sys-", "one-sys-1-2-",
    "one-ds-x", "one-img-5-snapx", "one-img-5-7-2-3", "volume-one-img-5", "one",
])
def test_foreign_names_are_not_ours(foreign):
    assert Naming().parse(foreign) is None


def test_invalid_arguments_are_refused():
    naming = Naming()
    with pytest.raises(InputError):
        naming.image(-1)
    with pytest.raises(InputError):
        naming.volatile(1, 2, "iso")
    with pytest.raises(InputError):
        naming.volatile(1, 2, "ext4")  # would read like a revert temporary of one-sys-1
    with pytest.raises(InputError):
        naming.revert_temp("one-img-1", 5, "12345678")  # all digits would read as a clone
    with pytest.raises(InputError):
        volume_from_source("one-ds-1/bad name")
    with pytest.raises(InputError):
        naming.disk_snapshot("x" * 199, 1)
