"""The OpenNebula XML model: typed fields of every golden body and driver action, templates
and vectors, the numeric tables, and errors that name the object and the field."""

from __future__ import annotations

import base64

import pytest

from onestorpool.errors import InputError
from onestorpool.one import (
    LCM_STATE_NAMES,
    DatastoreState,
    DatastoreType,
    DiskType,
    HostState,
    ImageState,
    ImageType,
    LcmState,
    Snapshot,
    Template,
    VmState,
    lcm_name,
    parse_datastore,
    parse_ds_action,
    parse_host,
    parse_image,
    parse_vm,
    parse_vmm_action,
)
from tests.one.goldens import golden, golden_b64


def mutated(name: str, old: str, new: str) -> str:
    text = golden(name)
    assert text.count(old) == 1, f"{old!r} must occur once in {name}"
    return text.replace(old, new)


# -- VM ---------------------------------------------------------------------------------------


def test_vm_identity_state_and_history():
    vm = parse_vm(golden("vm.xml"))
    assert (vm.id, vm.name, vm.uid, vm.gid) == (42, "web-1", 5, 100)
    assert (vm.state, vm.lcm_state) == (VmState.ACTIVE, LcmState.HOTPLUG_SAVEAS)
    assert vm.lcm_name == "HOTPLUG_SAVEAS" and vm.lcm_state == 26
    assert vm.deploy_id == "6a3c7f3e-2b1d-4c55-9f0e-0d6f1c2b3a4d"
    assert [(h.seq, h.hostname, h.host_id) for h in vm.history] == [(0, "node1", 3),
                                                                     (1, "node2", 4)]
    assert (vm.hostname, vm.system_ds_id, vm.system_tm_mad) == ("node2", 101, "storpool")
    assert vm.last_history.vm_mad == "kvm"


DISKS = [  # id, image, source, type, clone, persistent, readonly, save, size, original, ds
    (0, 19, "one-ds-100/one-img-19", "BLOCK", False, True, False, True, 20480, 4096, 100),
    (1, 17, "one-ds-100/one-img-17", "BLOCK", True, False, False, False, 8192, 2048, 100),
    (2, None, "", "fs", False, False, False, False, 1024, None, None),
    (3, None, "", "swap", False, False, False, False, 512, None, None),
    (4, 20, "one-ds-100/one-img-20", "CDROM", False, False, True, False, 650, None, 100),
]


def test_vm_disks_of_every_kind():
    vm = parse_vm(golden("vm.xml"))
    assert [(d.disk_id, d.image_id, d.source, d.type, d.clone, d.persistent, d.readonly,
             d.save, d.size_mb, d.original_size_mb, d.datastore_id) for d in vm.disks] == DISKS
    assert [d.is_volatile for d in vm.disks] == [False, False, True, True, False]
    assert [d.is_cdrom for d in vm.disks] == [False, False, False, False, True]
    assert [d.target for d in vm.disks] == ["vda", "vdb", "vdc", "vdd", "hda"]
    assert [d.tm_mad for d in vm.disks] == ["storpool", "storpool", "", "", "storpool"]
    persistent = vm.disk(0)
    assert (persistent.format, persistent.driver, persistent.disk_type) == ("raw", "raw", "BLOCK")
    assert not persistent.shareable and not persistent.attach
    # inherited and other attributes stay reachable, case-sensitive
    assert persistent.get("SP_QOSCLASS") == "tier2" and persistent.get("sp_qosclass") == ""
    assert persistent.attributes.get_int("IMAGE_STATE") == ImageState.USED_PERS
    assert vm.disk(2).get("FS") == "xfs"
    with pytest.raises(InputError, match="VM 42: no DISK with DISK_ID 9"):
        vm.disk(9)


def test_vm_disk_save_as_and_snapshots():
    vm = parse_vm(golden("vm.xml"))
    saving = vm.disk(1)
    assert (saving.hotplug_save_as, saving.hotplug_save_as_source,
            saving.hotplug_save_as_snapshot_id) == (25, "one-ds-100/one-img-25", -1)
    assert vm.disk(0).hotplug_save_as is None
    assert vm.disk(0).snapshots == (
        Snapshot(id=0, name="base", parent=-1, children=(1,), active=False, date=1700000500,
                 size_mb=20480),
        Snapshot(id=1, name="after-update", parent=0, children=(), active=True,
                 date=1700000600, size_mb=20480))
    assert vm.disk(1).snapshots == ()
    assert vm.disk_snapshots == {0: (0, 1)}


def test_vm_context_templates_vectors_and_system_snapshots():
    vm = parse_vm(golden("vm.xml"))
    assert vm.context_disk_id == 5 and vm.context["TARGET"] == "hdb"
    assert vm.template["MEMORY"] == "2048" and vm.template.get_int("VCPU") == 2
    assert vm.template.vector("OS")["FIRMWARE"] == "/usr/share/OVMF/OVMF_CODE.secboot.fd"
    assert vm.template.vector("OS").get_bool("FIRMWARE_SECURE") is True
    assert vm.template.vector("TPM")["MODEL"] == "tpm-crb"
    assert len(vm.template.vectors("DISK")) == 5 and vm.template.vector("NIC") is None
    assert vm.user_template["SP_QOSCLASS"] == "def;1:gold;4:silver"
    assert vm.user_template["T_OS_NVRAM"] == "storpool"
    assert vm.user_template.get_int("DISKSNAPSHOT_LIMIT") == 5
    # a DOCTYPE is only refused where it means one: in a value it is text
    assert "<!DOCTYPE" in vm.user_template["DESCRIPTION"]
    (snapshot,) = vm.vm_snapshots
    assert (snapshot.snapshot_id, snapshot.hypervisor_id, snapshot.name, snapshot.time,
            snapshot.active) == (0, "ONESNAP-0-1700001000", "before-upgrade", 1700001000, True)
    assert snapshot.get("SYSTEM_DISK_SIZE") == "0"
    assert vm.attaching_disk is None


def test_vm_disk_volumes_as_the_drivers_name_them():
    # the drivers' consumer of the model (drivers/vm_volumes.py) on the golden VM
    from onestorpool.drivers.vm_volumes import disk_volume
    from onestorpool.naming import Naming

    vm = parse_vm(golden("vm.xml"))
    assert [disk_volume(Naming(), vm, d) for d in range(6)] == [
        "one-img-19", "one-img-17-42-1", "one-sys-42-2-raw", "one-sys-42-3-swap",
        "one-img-20-42-4", "one-sys-42-5-iso"]


def test_vm_body_as_base64_bytes_or_text():
    expected = parse_vm(golden("vm.xml"))
    assert parse_vm(golden_b64("vm.xml")) == expected
    assert parse_vm(golden("vm.xml").encode()) == expected
    assert parse_vm(golden_b64("vm.xml") + "\n") == expected  # stdin's newline


def test_a_vm_before_its_first_deploy_has_no_host():
    text = golden("vm.xml")
    records = text[text.index("<HISTORY_RECORDS>"):text.index("</HISTORY_RECORDS>")]
    vm = parse_vm(mutated("vm.xml", records + "</HISTORY_RECORDS>", "<HISTORY_RECORDS/>"))
    assert (vm.history, vm.hostname, vm.system_ds_id, vm.system_tm_mad) == ((), "", None, "")


# -- IMAGE, DATASTORE, HOST -------------------------------------------------------------------


def test_image():
    image = parse_image(golden("image.xml"))
    assert (image.id, image.name, image.uid, image.gid) == (19, "db-data", 5, 100)
    assert (image.type, image.disk_type, image.state) == (ImageType.DATABLOCK, DiskType.BLOCK,
                                                          ImageState.USED_PERS)
    assert image.persistent and image.size == 20480 and image.fs == "ext4"
    assert (image.source, image.path, image.format) == ("one-ds-100/one-img-19", "", "raw")
    assert (image.datastore_id, image.target_snapshot, image.cloning_id) == (100, 1, None)
    assert (image.running_vms, image.vm_ids, image.clone_ids) == (1, (42,), (25,))
    assert (image.driver, image.qos_class, image.md5) == ("raw", "gold", "")
    assert image.template["PERSISTENT_TYPE"] == "SHAREABLE"
    assert image.snapshot_ids == (0, 1) and image.snapshots[1].active


def test_datastore():
    ds = parse_datastore(golden("datastore.xml"))
    assert (ds.id, ds.name, ds.type, ds.state) == (101, "storpool-system", DatastoreType.SYSTEM,
                                                   DatastoreState.READY)
    assert (ds.ds_mad, ds.tm_mad, ds.base_path) == ("-", "storpool",
                                                    "/var/lib/one//datastores/101")
    assert (ds.cluster_ids, ds.cluster_id, ds.disk_type) == ((0,), 0, DiskType.FILE)
    assert (ds.total_mb, ds.free_mb, ds.used_mb, ds.image_ids) == (524288, 524000, 288, ())
    assert ds.shared and ds.template["SP_SYSTEM"] == "ssh"
    assert ds.template.get_int("VMSNAPSHOT_LIMIT") == 4
    assert ds.template.get_int("SP_API_HTTP_PORT", 81) == 81  # absent: the default


def test_host():
    host = parse_host(golden("host.xml"))
    assert (host.id, host.name, host.state, host.im_mad, host.vm_mad, host.cluster_id) == (
        4, "node2", HostState.MONITORED, "kvm", "kvm", 0)
    assert host.storpool_client_id == 12 and host.template["SP_CLUSTER_ID"] == "b.c"


@pytest.mark.parametrize("value", ["", "auto", "١٢", "-3"])
def test_a_host_client_id_that_is_not_a_number_is_ignored(value):
    xml = mutated("host.xml", "<![CDATA[12]]>", f"<![CDATA[{value}]]>")
    assert parse_host(xml).storpool_client_id is None


# -- driver actions ---------------------------------------------------------------------------


def test_ds_cp_action():
    action = parse_ds_action(golden_b64("ds_cp.xml"))
    image, ds = action.image, action.datastore
    assert (image.id, image.uid, image.gid, image.state) == (17, 5, 100, ImageState.LOCKED)
    assert image.path == "https://cloud.example.org/debian-12.qcow2?token=a&b"
    assert (image.size, image.format, image.source) == (2048, "qcow2", "")
    assert (image.md5, image.sha1, image.driver, image.qos_class) == (
        "9e107d9d372bb6826bd81d3542a419d6", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "raw",
        "tier1")
    assert image.target_snapshot is None and image.cloning_id is None
    assert (ds.id, ds.type, ds.ds_mad, ds.tm_mad, ds.cluster_ids) == (
        100, DatastoreType.IMAGE, "storpool", "storpool", (0, 101))
    assert ds.template["SP_AUTH_TOKEN"] == "6464646464646464"
    assert ds.template["REMOTE_BACKUP_DELETE"] == "clusterB:tag del=y"
    assert action.vm is None and action.source_bridge_list == ""
    assert not action.monitor_vm_disks


def test_ds_mkfs_and_rm_actions():
    mkfs = parse_ds_action(golden("ds_mkfs.xml")).image
    assert (mkfs.id, mkfs.type, mkfs.persistent, mkfs.size, mkfs.fs, mkfs.path) == (
        18, ImageType.DATABLOCK, True, 10240, "ext4", "")
    rm = parse_ds_action(golden_b64("ds_rm.xml")).image
    assert (rm.id, rm.state, rm.source) == (19, ImageState.DELETE, "one-ds-100/one-img-19")
    assert [(s.id, s.parent, s.children) for s in rm.snapshots] == [(0, -1, (1,)), (1, 0, ())]


def test_ds_monitor_and_stat_actions():
    monitor = parse_ds_action(golden_b64("ds_monitor.xml"))
    assert monitor.image is None and monitor.datastore.id == 101
    assert monitor.monitor_vm_disks and monitor.datastore_location == "/var/lib/one/datastores"
    # stat: oned sends the PATH alone, escaped; no id and no owner
    stat = parse_ds_action(golden_b64("ds_stat.xml")).image
    assert (stat.id, stat.path, stat.size, stat.uid) == (-1, "/var/tmp/upload/disk & data.img",
                                                         None, 0)


def test_ds_action_extras_and_a_backup_vm():
    xml = golden("ds_cp.xml").replace(
        "</DS_DRIVER_ACTION_DATA>",
        "<SOURCE_BRIDGE_LIST>fe1 fe2</SOURCE_BRIDGE_LIST>" + golden("vm.xml")
        + "</DS_DRIVER_ACTION_DATA>")
    action = parse_ds_action(xml)
    assert action.source_bridge_list == "fe1 fe2" and action.vm.id == 42


def test_vmm_attach_action():
    action = parse_vmm_action(golden_b64("vmm_attach.xml"))
    assert (action.host, action.migrate_host, action.checkpoint_file) == ("node2", "", "")
    assert action.deploy_id == "6a3c7f3e-2b1d-4c55-9f0e-0d6f1c2b3a4d"
    assert action.tm_command.startswith("CLONE storpool fe:one-ds-100/one-img-21 node2:")
    assert action.tm_command_rollback.startswith("DELETE storpool node2:")
    assert action.disk_target_path == "/var/lib/one//datastores/101/42/disk.6"
    assert action.vm.lcm_state == LcmState.HOTPLUG and action.datastore.id == 101
    disk = action.vm.attaching_disk
    assert (disk.disk_id, disk.image_id, disk.clone, disk.attach) == (6, 21, True, True)


# -- templates --------------------------------------------------------------------------------


def test_template_is_a_read_only_case_sensitive_mapping():
    template = parse_datastore(golden("datastore.xml")).template
    assert dict(template)["SHARED"] == "YES" and "shared" not in template
    assert template == dict(template) and len(template) == len(dict(template))
    with pytest.raises(TypeError):
        template["SHARED"] = "NO"  # type: ignore[index]
    assert "DATASTORE/TEMPLATE" in repr(template)


def test_template_first_value_wins_and_vectors_keep_their_order():
    xml = golden("host.xml").replace(
        "<ARCH><![CDATA[x86_64]]></ARCH>",
        "<ARCH>x86_64</ARCH><ARCH>aarch64</ARCH><PCI><ID>1</ID></PCI><PCI><ID>2</ID></PCI>")
    template = parse_host(xml).template
    assert template["ARCH"] == "x86_64"
    assert [pci["ID"] for pci in template.vectors("PCI")] == ["1", "2"]
    assert template.vectors("NONE") == () and template.vector("NONE") is None


def test_template_typed_getters_name_the_attribute():
    template = Template("VM/USER_TEMPLATE", {"LIMIT": "ten", "FLAG": "maybe", "OK": "no"})
    with pytest.raises(InputError, match=r"^VM/USER_TEMPLATE/LIMIT: expected an integer, "
                                         r"got 'ten'$"):
        template.get_int("LIMIT")
    with pytest.raises(InputError, match=r"^VM/USER_TEMPLATE/FLAG: expected YES or NO, "
                                         r"got 'maybe'$"):
        template.get_bool("FLAG")
    assert template.get_bool("OK", True) is False and template.get_bool("ABSENT", True)
    assert template.get_int("ABSENT") is None and template.get_int("ABSENT", 3) == 3


# -- numeric tables ---------------------------------------------------------------------------


def test_tables_agree_with_pyone_where_pyone_is_right():
    # pyone's tables are an independent copy of OpenNebula's headers. Its LCM table stops at
    # 68 and keeps 58 (gone before 5.10); its image types are wrong from 6 on (reference §4).
    import pyone

    assert [s.name for s in pyone.VM_STATE] == [VmState(s.value).name for s in pyone.VM_STATE]
    assert [(s.name, s.value) for s in pyone.LCM_STATE if s.value != 58] == [
        (s.name, s.value) for s in LcmState if s.value <= max(pyone.LCM_STATE)]
    assert [(s.name, s.value) for s in pyone.IMAGE_STATES] == [(s.name, s.value)
                                                               for s in ImageState]
    assert [(s.name, s.value) for s in pyone.HOST_STATES] == [(s.name, s.value)
                                                              for s in HostState]
    assert [(s.name, s.value) for s in pyone.DATASTORE_TYPES] == [
        (s.name, s.value) for s in DatastoreType if s.value < 3]


def test_the_newer_states_of_the_reference():
    assert (LcmState.BACKUP, LcmState.BACKUP_POWEROFF, LcmState.RESTORE) == (69, 70, 71)
    assert (ImageType.BACKUP, ImageType.FILESYSTEM, DatastoreType.BACKUP) == (6, 7, 3)
    assert LCM_STATE_NAMES[3] == "RUNNING" and LCM_STATE_NAMES[71] == "RESTORE"
    assert lcm_name(59) == "DISK_SNAPSHOT_DELETE" and lcm_name(58) == "UNKNOWN_58"


def test_unknown_numbers_from_a_newer_oned_are_kept_not_refused():
    vm = parse_vm(mutated("vm.xml", "<LCM_STATE>26</LCM_STATE>", "<LCM_STATE>72</LCM_STATE>"))
    assert vm.lcm_state == 72 and vm.lcm_name == "UNKNOWN_72"
    assert isinstance(vm.lcm_state, LcmState) and vm.lcm_state != LcmState.RESTORE
    assert parse_image(mutated("image.xml", "<TYPE>2</TYPE>", "<TYPE>8</TYPE>")).type.name == \
        "UNKNOWN_8"
    with pytest.raises(ValueError):
        VmState("ACTIVE")  # only numbers are tolerated


# -- errors name the object and the field -----------------------------------------------------

ERRORS = [
    ("image.xml", "<SIZE>20480</SIZE>", "<SIZE>abc</SIZE>",
     "IMAGE/SIZE: expected an integer, got 'abc'"),
    ("image.xml", "<UID>5</UID>", "", "IMAGE/UID: missing"),
    ("image.xml", "<ID>19</ID>", "<ID>1_9</ID>", "IMAGE/ID: expected an integer, got '1_9'"),
    ("image.xml", "<ID>19</ID>", "<ID>١٩</ID>", "IMAGE/ID: expected an integer, got '١٩'"),
    ("image.xml", "<PERSISTENT>1</PERSISTENT>", "<PERSISTENT>2</PERSISTENT>",
     "IMAGE/PERSISTENT: expected YES or NO, got '2'"),
    ("image.xml", "<ID>25</ID>", "<ID>x</ID>", "IMAGE/CLONES/ID: expected an integer, got 'x'"),
    ("vm.xml", "<STATE>3</STATE>", "<STATE>x</STATE>", "VM/STATE: expected an integer, got 'x'"),
    ("vm.xml", "<LCM_STATE>26</LCM_STATE>", "", "VM/LCM_STATE: missing"),
    ("vm.xml", "<CLONE><![CDATA[YES]]>", "<CLONE><![CDATA[maybe]]>",
     "VM/TEMPLATE/DISK[DISK_ID=1]/CLONE: expected YES or NO, got 'maybe'"),
    ("vm.xml", "<SIZE><![CDATA[1024]]>", "<SIZE><![CDATA[1G]]>",
     "VM/TEMPLATE/DISK[DISK_ID=2]/SIZE: expected an integer, got '1G'"),
    ("vm.xml", "<DISK_ID><![CDATA[3]]>", "<DISK_ID><![CDATA[three]]>",
     "VM/TEMPLATE/DISK[4]/DISK_ID: expected an integer, got 'three'"),
    ("vm.xml", "<HOTPLUG_SAVE_AS><![CDATA[25]]>", "<HOTPLUG_SAVE_AS><![CDATA[img]]>",
     "VM/TEMPLATE/DISK[DISK_ID=1]/HOTPLUG_SAVE_AS: expected an integer, got 'img'"),
    ("vm.xml", "<HID>4</HID>", "<HID></HID>",
     "VM/HISTORY_RECORDS/HISTORY/HID: expected an integer, got ''"),
    ("vm.xml", "<CHILDREN><![CDATA[1]]>", "<CHILDREN><![CDATA[1,x]]>",
     "VM/SNAPSHOTS/SNAPSHOT/CHILDREN: expected an integer, got 'x'"),
    ("vm.xml", "<SNAPSHOT_ID><![CDATA[0]]></SNAPSHOT_ID>", "",
     "VM/TEMPLATE/SNAPSHOT/SNAPSHOT_ID: missing"),
    ("vm.xml", "<DISK_ID><![CDATA[5]]>", "<DISK_ID><![CDATA[five]]>",
     "VM/TEMPLATE/CONTEXT/DISK_ID: expected an integer, got 'five'"),
    ("datastore.xml", "<TYPE>1</TYPE>", "", "DATASTORE/TYPE: missing"),
    ("datastore.xml", "<ID>0</ID>", "<ID>zero</ID>",
     "DATASTORE/CLUSTERS/ID: expected an integer, got 'zero'"),
    ("host.xml", "<STATE>2</STATE>", "<STATE>2.0</STATE>",
     "HOST/STATE: expected an integer, got '2.0'"),
    ("host.xml", "<NAME>node2</NAME>", "", "HOST/NAME: missing"),
    ("ds_cp.xml", "<SIZE>2048</SIZE>", "<SIZE>2 GB</SIZE>",
     "DS_DRIVER_ACTION_DATA/IMAGE/SIZE: expected an integer, got '2 GB'"),
    ("ds_cp.xml", "<TYPE>0</TYPE>\n    <DISK_TYPE>2</DISK_TYPE>\n    <STATE>0</STATE>",
     "<DISK_TYPE>2</DISK_TYPE>\n    <STATE>0</STATE>",
     "DS_DRIVER_ACTION_DATA/DATASTORE/TYPE: missing"),
    ("vmm_attach.xml", "<HOST>node2</HOST>", "", "VMM_DRIVER_ACTION_DATA/HOST: missing"),
    ("vmm_attach.xml", "<DISK_ID><![CDATA[6]]>", "<DISK_ID><![CDATA[]]>",
     "VMM_DRIVER_ACTION_DATA/VM/TEMPLATE/DISK[6]/DISK_ID: expected an integer, got ''"),
]

PARSERS = {"image.xml": parse_image, "vm.xml": parse_vm, "datastore.xml": parse_datastore,
           "host.xml": parse_host, "ds_cp.xml": parse_ds_action,
           "vmm_attach.xml": parse_vmm_action}


@pytest.mark.parametrize(("name", "old", "new", "message"), ERRORS)
def test_missing_or_malformed_fields_are_named(name, old, new, message):
    with pytest.raises(InputError) as caught:
        PARSERS[name](mutated(name, old, new))
    assert str(caught.value) == message


@pytest.mark.parametrize(("parser", "payload", "message"), [
    (parse_image, golden("datastore.xml"), "IMAGE: expected IMAGE, got DATASTORE"),
    (parse_image, "<IMAGE><ID>1</ID>", "IMAGE: malformed XML"),
    (parse_vm, "", "VM: empty document"),
    (parse_vm, "   \n", "VM: empty document"),
    (parse_ds_action, base64.b64encode(b"<foo/>").decode(),
     "DS driver action: expected DS_DRIVER_ACTION_DATA, got foo"),
    (parse_ds_action, "<DS_DRIVER_ACTION_DATA/>", "DS_DRIVER_ACTION_DATA/DATASTORE: missing"),
    (parse_vmm_action, "<VMM_DRIVER_ACTION_DATA><HOST>h</HOST></VMM_DRIVER_ACTION_DATA>",
     "VMM_DRIVER_ACTION_DATA/VM: missing"),
])
def test_wrong_documents_are_one_clear_error(parser, payload, message):
    with pytest.raises(InputError) as caught:
        parser(payload)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_errors_after_parsing_name_the_field_too():
    action = parse_ds_action(mutated("ds_monitor.xml", "<MONITOR_VM_DISKS>1<",
                                     "<MONITOR_VM_DISKS>sometimes<"))
    with pytest.raises(InputError, match=r"^DS_DRIVER_ACTION_DATA/MONITOR_VM_DISKS: expected "
                                         r"YES or NO, got 'sometimes'$"):
        _ = action.monitor_vm_disks
