"""XML as oned writes it: object bodies (element order of OpenNebula's XSDs and of oned's
``to_xml`` methods), pools, driver messages, and the parser of OpenNebula template text
(``KEY = "value"`` lines and ``VECTOR = [ A = "1", B = "2" ]``) or of a ``<TEMPLATE>`` XML
document (pyone sends either).
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

from onestorpool.sandbox.oned_objects import (
    Datastore,
    DiskSnapshots,
    History,
    Host,
    Image,
    ImageSnapshot,
    Template,
    Version,
    Vm,
)

# The newest release the sandbox knows; bodies default to its form.
LATEST = Version("7.0")

_KEY_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*')
_VALUE_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[^\n]*')
_PAIR_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\]\n]*)\s*',
                      re.DOTALL)


def parse_template(text: str) -> Template:
    """Attribute names upper-cased as oned does; vectors become lists of dicts."""
    text = text.strip()
    if text.startswith("<"):
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            root = etree.fromstring(text.encode(), parser)
        except etree.XMLSyntaxError as error:
            # Template::parse_str_or_xml (release-6.10.5 src/template/Template.cc:125)
            raise ValueError("XML Template malformed.") from error
        result: Template = {}
        for child in root:
            if len(child):
                result.setdefault(child.tag.upper(), []).append(
                    {c.tag.upper(): (c.text or "") for c in child})
            else:
                result[child.tag.upper()] = child.text or ""
        return result
    result = {}
    position = 0
    while position < len(text):
        match = _KEY_RE.match(text, position)
        if match is None:
            stripped = text[position:].lstrip()
            if not stripped:
                break
            if stripped.startswith("#"):  # a comment line
                position = text.find("\n", position + 1)
                position = len(text) if position < 0 else position
                continue
            raise ValueError(f"syntax error near {stripped[:30]!r}")
        key = match[1].upper()
        position = match.end()
        if text.startswith("[", position):
            pairs, position = _vector_pairs(text, position + 1, key)
            vector = {}
            for pair in pairs:
                found = _PAIR_RE.fullmatch(pair)
                if found is None:
                    raise ValueError(f"syntax error in {key} vector")
                vector[found[1].upper()] = _unquote(found[2].strip())
            result.setdefault(key, []).append(vector)
        else:
            value = _VALUE_RE.match(text, position)
            assert value is not None
            result[key] = _unquote(value[0].strip())
            position = value.end()
    return result


def _vector_pairs(text: str, position: int, key: str) -> tuple[list[str], int]:
    """The ``A=1, B="x, ]"`` pairs of a vector up to its closing ``]`` (quotes respected);
    returns them and the position after the ``]``."""
    pairs, current, quoted = [], [], False
    while position < len(text):
        char = text[position]
        if char == "\\" and quoted:
            current.append(text[position:position + 2])
            position += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char in ",]":
            if "".join(current).strip():
                pairs.append("".join(current))
            current = []
            if char == "]":
                return pairs, position + 1
            position += 1
            continue
        current.append(char)
        position += 1
    raise ValueError(f"syntax error: {key} vector is not closed")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    return value


def cdata(value: Any) -> str:
    return f"<![CDATA[{str(value).replace(']]>', ']]]]><![CDATA[>')}]]>"


# The order vm.xsd gives a VM's TEMPLATE (oned's own output is close to name order).
VM_TEMPLATE_ORDER = """AUTOMATIC_DS_REQUIREMENTS AUTOMATIC_NIC_REQUIREMENTS AUTOMATIC_REQUIREMENTS
    CLONING_TEMPLATE_ID CONTEXT CPU CPU_COST DISK DISK_COST EMULATOR FEATURES HYPERV_OPTIONS
    GRAPHICS VIDEO IMPORTED INPUT MEMORY MEMORY_COST MEMORY_MAX MEMORY_SLOTS
    MEMORY_RESIZE_MODE NIC NIC_ALIAS NIC_DEFAULT NUMA_NODE OS PCI QEMU_GA_EXEC RAW
    SECURITY_GROUP_RULE SNAPSHOT SPICE_OPTIONS SUBMIT_ON_HOLD TEMPLATE_ID TM_MAD_SYSTEM
    TOPOLOGY TPM MEMORY_ENCRYPTION VCPU VCPU_MAX VMGROUP VMID VROUTER_ID
    VROUTER_KEEPALIVED_ID VROUTER_KEEPALIVED_PASSWORD SCHED_ACTION""".split()
_VM_RANK = {name: rank for rank, name in enumerate(VM_TEMPLATE_ORDER)}


def template_xml(template: Template, tag: str = "TEMPLATE", vm: bool = False) -> str:
    """Attributes in name order (oned keeps a template in a sorted multimap); a VM's
    TEMPLATE in the schema's order. Values are CDATA, as oned writes them."""
    parts = []
    order = (lambda item: (_VM_RANK.get(item[0], len(_VM_RANK)), item[0])) if vm else None
    for key, value in sorted(template.items(), key=order):
        if isinstance(value, list):
            for vector in value:
                # VectorAttribute keeps its values in a std::map: sorted by name
                inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in sorted(vector.items()))
                parts.append(f"<{key}>{inner}</{key}>")
        else:
            parts.append(f"<{key}>{cdata(value)}</{key}>")
    return f"<{tag}>{''.join(parts)}</{tag}>" if parts else f"<{tag}/>"


PERMISSIONS = ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
               "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0"
               "</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")


def _owner(uid: int, gid: int) -> str:
    # Names are validated on allocate (no <, >, &), so oned prints them raw.
    return (f"<UID>{uid}</UID><GID>{gid}</GID><UNAME>oneadmin</UNAME>"
            f"<GNAME>oneadmin</GNAME>")


def _ids(tag: str, ids: list[int]) -> str:
    inner = "".join(f"<ID>{i}</ID>" for i in ids)
    return f"<{tag}>{inner}</{tag}>" if inner else f"<{tag}/>"


def datastore_body(ds: Datastore, version: Version = LATEST) -> str:
    """``Datastore::to_xml`` (unchanged 5.10 ... 7.0 for what the sandbox keeps)."""
    return (f"<DATASTORE><ID>{ds.id}</ID>{_owner(0, 0)}<NAME>{ds.name}</NAME>{PERMISSIONS}"
            f"<DS_MAD>{cdata(ds.ds_mad)}</DS_MAD><TM_MAD>{cdata(ds.tm_mad)}</TM_MAD>"
            f"<BASE_PATH>{cdata(ds.base_path)}</BASE_PATH><TYPE>{ds.type}</TYPE>"
            f"<DISK_TYPE>{ds.disk_type}</DISK_TYPE><STATE>{ds.state}</STATE>"
            f"<CLUSTERS><ID>0</ID></CLUSTERS><TOTAL_MB>{ds.total_mb}</TOTAL_MB>"
            f"<FREE_MB>{ds.free_mb}</FREE_MB><USED_MB>{ds.used_mb}</USED_MB>"
            f"{_ids('IMAGES', ds.images)}{template_xml(ds.template)}</DATASTORE>")


def _snapshot_xml(snapshot: ImageSnapshot, children: list[int]) -> str:
    active = "<ACTIVE>YES</ACTIVE>" if snapshot.active else ""
    kids = f"<CHILDREN>{','.join(map(str, children))}</CHILDREN>" if children else ""
    return (f"<SNAPSHOT>{active}{kids}<DATE>{snapshot.date}</DATE><ID>{snapshot.id}</ID>"
            f"<NAME>{cdata(snapshot.name)}</NAME><PARENT>{snapshot.parent}</PARENT>"
            f"<SIZE>{snapshot.size}</SIZE></SNAPSHOT>")


def _snapshots_xml(snapshots: list[ImageSnapshot], next_id: int, current_base: int,
                   disk_id: int | None = None, allow_orphans: str = "YES") -> str:
    body = "".join(_snapshot_xml(s, [c.id for c in snapshots if c.parent == s.id])
                   for s in snapshots)
    disk = f"<DISK_ID>{disk_id}</DISK_ID>" if disk_id is not None else ""
    return (f"<SNAPSHOTS><ALLOW_ORPHANS>{allow_orphans}</ALLOW_ORPHANS>"
            f"<CURRENT_BASE>{current_base}</CURRENT_BASE>{disk}"
            f"<NEXT_SNAPSHOT>{next_id}</NEXT_SNAPSHOT>{body}</SNAPSHOTS>")


def image_body(img: Image, version: Version = LATEST) -> str:
    """``Image::to_xml``: MODTIME from 7.0 (``src/image/Image.cc`` at release-7.0.0; absent
    at release-6.10.0), BACKUP_INCREMENTS from 6.6; before 6.0 FSTYPE stands where FORMAT
    and FS are, and there is no PREV_STATE (release-5.12.0)."""
    modtime = f"<MODTIME>{img.regtime}</MODTIME>" if version >= (7, 0) else ""
    increments = "<BACKUP_INCREMENTS/>" if version >= (6, 6) else ""
    if version >= (6, 0):
        formats = f"<FORMAT>{cdata(img.format)}</FORMAT><FS>{cdata(img.fs)}</FS>"
        prev = f"<PREV_STATE>{img.prev_state}</PREV_STATE>"
    else:
        formats, prev = f"<FSTYPE>{cdata(img.fs)}</FSTYPE>", ""
    return (f"<IMAGE><ID>{img.id}</ID>{_owner(img.uid, img.gid)}<NAME>{img.name}</NAME>"
            f"{PERMISSIONS}<TYPE>{img.type}</TYPE><DISK_TYPE>{img.disk_type}</DISK_TYPE>"
            f"<PERSISTENT>{int(img.persistent)}</PERSISTENT><REGTIME>{img.regtime}</REGTIME>"
            f"{modtime}<SOURCE>{cdata(img.source)}</SOURCE>"
            f"<PATH>{cdata(img.path)}</PATH>{formats}"
            f"<SIZE>{img.size}</SIZE><STATE>{img.state}</STATE>"
            f"{prev}<RUNNING_VMS>{len(img.vms)}"
            f"</RUNNING_VMS><CLONING_OPS>{img.cloning_ops}</CLONING_OPS>"
            f"<CLONING_ID>{img.cloning_id}</CLONING_ID>"
            f"<TARGET_SNAPSHOT>{img.target_snapshot}</TARGET_SNAPSHOT>"
            f"<DATASTORE_ID>{img.ds_id}</DATASTORE_ID><DATASTORE>{img.ds_name}</DATASTORE>"
            f"{_ids('VMS', img.vms)}{_ids('CLONES', img.clones)}<APP_CLONES/>"
            f"{template_xml(img.template)}"
            f"{_snapshots_xml(img.snapshots, img.next_snapshot, -1)}"
            f"{increments}</IMAGE>")


def host_body(host: Host, version: Version = LATEST) -> str:
    """``Host::to_xml`` + ``HostShare::to_xml``: 5.10 has LAST_MON_TIME and the disk and
    free/used counters in HOST_SHARE, and no MONITORING element (``src/host/Host.cc``,
    ``src/host/HostShare.cc`` at release-5.10.0); 5.12+ as below."""
    vms = len(host.vms)
    if version < (5, 12):
        share = ("<HOST_SHARE><DISK_USAGE>0</DISK_USAGE><MEM_USAGE>0</MEM_USAGE>"
                 "<CPU_USAGE>0</CPU_USAGE><TOTAL_MEM>16777216</TOTAL_MEM>"
                 "<TOTAL_CPU>800</TOTAL_CPU><MAX_DISK>0</MAX_DISK><MAX_MEM>16777216</MAX_MEM>"
                 "<MAX_CPU>800</MAX_CPU><FREE_DISK>0</FREE_DISK><FREE_MEM>16777216</FREE_MEM>"
                 "<FREE_CPU>800</FREE_CPU><USED_DISK>0</USED_DISK><USED_MEM>0</USED_MEM>"
                 f"<USED_CPU>0</USED_CPU><RUNNING_VMS>{vms}</RUNNING_VMS>"
                 "<VMS_THREAD>1</VMS_THREAD><DATASTORES/><PCI_DEVICES/><NUMA_NODES/>"
                 "</HOST_SHARE>")
        return (f"<HOST><ID>{host.id}</ID><NAME>{host.name}</NAME><STATE>{host.state}</STATE>"
                f"<PREV_STATE>{host.prev_state}</PREV_STATE><IM_MAD>{cdata(host.im_mad)}"
                f"</IM_MAD><VM_MAD>{cdata(host.vm_mad)}</VM_MAD>"
                f"<LAST_MON_TIME>0</LAST_MON_TIME><CLUSTER_ID>0</CLUSTER_ID>"
                f"<CLUSTER>default</CLUSTER>{share}{_ids('VMS', host.vms)}"
                f"{template_xml(host.template)}</HOST>")
    share = ("<HOST_SHARE><MEM_USAGE>0</MEM_USAGE><CPU_USAGE>0</CPU_USAGE>"
             "<TOTAL_MEM>16777216</TOTAL_MEM><TOTAL_CPU>800</TOTAL_CPU>"
             "<MAX_MEM>16777216</MAX_MEM><MAX_CPU>800</MAX_CPU>"
             f"<RUNNING_VMS>{vms}</RUNNING_VMS><VMS_THREAD>1</VMS_THREAD>"
             "<DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>0</FREE_DISK>"
             "<MAX_DISK>0</MAX_DISK><USED_DISK>0</USED_DISK></DATASTORES>"
             "<PCI_DEVICES/><NUMA_NODES/></HOST_SHARE>")
    return (f"<HOST><ID>{host.id}</ID><NAME>{host.name}</NAME><STATE>{host.state}</STATE>"
            f"<PREV_STATE>{host.prev_state}</PREV_STATE><IM_MAD>{cdata(host.im_mad)}"
            f"</IM_MAD><VM_MAD>{cdata(host.vm_mad)}</VM_MAD><CLUSTER_ID>0</CLUSTER_ID>"
            f"<CLUSTER>default</CLUSTER>{share}{_ids('VMS', host.vms)}"
            f"{template_xml(host.template)}<MONITORING/></HOST>")


def _history_xml(vm: Vm, record: History, version: Version = LATEST) -> str:
    """``History::to_xml``: PLAN_ID and ACTION_ID from 7.0 (``src/vm/History.cc`` at
    release-7.0.0, absent at release-6.10.0)."""
    plan = "<PLAN_ID>-1</PLAN_ID><ACTION_ID>-1</ACTION_ID>" if version >= (7, 0) else ""
    return (f"<HISTORY><OID>{vm.id}</OID><SEQ>{record.seq}</SEQ>"
            f"<HOSTNAME>{record.hostname}</HOSTNAME><HID>{record.hid}</HID><CID>0</CID>"
            f"<STIME>{record.stime}</STIME><ETIME>{record.etime}</ETIME>"
            f"<VM_MAD>{cdata(record.vm_mad)}</VM_MAD><TM_MAD>{cdata(record.tm_mad)}</TM_MAD>"
            f"<DS_ID>{record.ds_id}</DS_ID>{plan}"
            f"<PSTIME>0</PSTIME><PETIME>0</PETIME><RSTIME>0</RSTIME><RETIME>0</RETIME>"
            f"<ESTIME>0</ESTIME><EETIME>0</EETIME><ACTION>{record.action}</ACTION>"
            f"<UID>-1</UID><GID>-1</GID><REQUEST_ID>-1</REQUEST_ID></HISTORY>")


def _disk_snapshots_xml(tree: DiskSnapshots) -> str:
    return _snapshots_xml(tree.snapshots, tree.next_snapshot, tree.current_base,
                          tree.disk_id)


def vm_body(vm: Vm, all_history: bool = True, version: Version = LATEST) -> str:
    """``VirtualMachine::to_xml_extended``: every history record for ``one.vm.info`` and
    hook messages, the last one for pools and driver messages. SCHED_ACTIONS from 6.8,
    BACKUPS from 6.6 (``src/vm/VirtualMachine.cc`` at release-6.6.0 and release-6.8.0)."""
    records = vm.history if all_history else vm.history[-1:]
    history = "".join(_history_xml(vm, h, version) for h in records)
    snapshots = "".join(_disk_snapshots_xml(t) for _, t in sorted(vm.disk_snapshots.items())
                        if t.snapshots)
    sched = "<SCHED_ACTIONS/>" if version >= (6, 8) else ""
    backups = "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS>" if version >= (6, 6) else ""
    return (f"<VM><ID>{vm.id}</ID>{_owner(vm.uid, vm.gid)}<NAME>{vm.name}</NAME>"
            f"{PERMISSIONS}<LAST_POLL>{vm.monitoring.get('timestamp', 0)}</LAST_POLL>"
            f"<STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}</LCM_STATE>"
            f"<PREV_STATE>{vm.prev_state}</PREV_STATE>"
            f"<PREV_LCM_STATE>{vm.prev_lcm_state}</PREV_LCM_STATE>"
            f"<RESCHED>{vm.resched}</RESCHED>"
            f"<STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{vm.deploy_id}</DEPLOY_ID>{monitoring_xml(vm)}{sched}"
            f"{template_xml(vm.template, vm=True)}"
            f"{template_xml(vm.user_template, 'USER_TEMPLATE')}"
            + (f"<HISTORY_RECORDS>{history}</HISTORY_RECORDS>" if history
               else "<HISTORY_RECORDS/>")
            + f"{snapshots}{backups}</VM>")


SHORT_DISK = ("DISK_ID", "DATASTORE", "DATASTORE_ID", "IMAGE", "IMAGE_ID", "SIZE", "TYPE",
              "CLONE", "CLONE_TARGET", "LN_TARGET", "DISK_SNAPSHOT_TOTAL_SIZE")
SHORT_USER = ("LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_DS_RANK",
              "SCHED_REQUIREMENTS", "SCHED_DS_REQUIREMENTS", "USER_PRIORITY")


def vm_short_body(vm: Vm, version: Version = LATEST) -> str:
    """``VirtualMachine::to_xml_short`` (``one.vmpool.info``): no SOURCE, no TM_MAD in the
    disks; VCPU from 6.8, the history's VM_MAD/TM_MAD from 6.4 (``src/vm/VirtualMachine.cc``
    and ``src/vm/History.cc`` ``to_xml_short`` at release-6.4.0 and release-6.8.0)."""
    tmpl = vm.template
    disks = "".join("<DISK>" + "".join(f"<{k}>{escape(str(d.get(k, '')))}</{k}>"
                                       for k in SHORT_DISK) + "</DISK>" for d in vm.disks)
    user = "".join(f"<{k}>{escape(str(vm.user_template[k]))}</{k}>" for k in SHORT_USER
                   if isinstance(vm.user_template.get(k), str))
    user_xml = f"<USER_TEMPLATE>{user}</USER_TEMPLATE>" if vm.user_template else \
        "<USER_TEMPLATE/>"
    mads = (f"<VM_MAD>{vm.last.vm_mad}</VM_MAD><TM_MAD>{vm.last.tm_mad}</TM_MAD>"
            if vm.history and version >= (6, 4) else "")
    history = (f"<HISTORY_RECORDS><HISTORY><OID>{vm.id}</OID><SEQ>{vm.last.seq}</SEQ>"
               f"<HOSTNAME>{vm.last.hostname}</HOSTNAME><HID>{vm.last.hid}</HID><CID>0</CID>"
               f"<DS_ID>{vm.last.ds_id}</DS_ID>{mads}<ACTION>{vm.last.action}</ACTION>"
               f"</HISTORY></HISTORY_RECORDS>") if vm.history else "<HISTORY_RECORDS/>"
    vcpu = f"<VCPU>{escape(str(tmpl.get('VCPU', '')))}</VCPU>" if version >= (6, 8) else ""
    return (f"<VM><ID>{vm.id}</ID>{_owner(vm.uid, vm.gid)}<NAME>{vm.name}</NAME>"
            f"<LAST_POLL>{vm.monitoring.get('timestamp', 0)}</LAST_POLL>"
            f"<STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}</LCM_STATE>"
            f"<RESCHED>{vm.resched}</RESCHED><STIME>{vm.stime}</STIME>"
            f"<ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{vm.deploy_id}</DEPLOY_ID><TEMPLATE>"
            f"<CPU>{escape(str(tmpl.get('CPU', '')))}</CPU>"
            f"<MEMORY>{escape(str(tmpl.get('MEMORY', '')))}</MEMORY>"
            f"{vcpu}{disks}</TEMPLATE>"
            f"<MONITORING/>{user_xml}{history}</VM>")


def monitoring_xml(vm: Vm) -> str:
    disks = vm.monitoring.get("disks")
    if not disks:
        return "<MONITORING/>"
    sizes = "".join(f"<DISK_SIZE><ID>{disk}</ID><SIZE>{size}</SIZE></DISK_SIZE>"
                    for disk, size in sorted(disks.items()))
    return (f"<MONITORING>{sizes}<ID>{vm.id}</ID>"
            f"<TIMESTAMP>{vm.monitoring['timestamp']}</TIMESTAMP></MONITORING>")


def pool(tag: str, bodies: list[str]) -> str:
    return f"<{tag}>{''.join(bodies)}</{tag}>"


RAFT_SOLO = ("<RAFT><SERVER_ID>-1</SERVER_ID><STATE>3</STATE><TERM>0</TERM>"
             "<VOTEDFOR>-1</VOTEDFOR><COMMIT>0</COMMIT><LOG_INDEX>0</LOG_INDEX>"
             "<LOG_TERM>0</LOG_TERM><FEDLOG_INDEX>-1</FEDLOG_INDEX></RAFT>")


def configuration_xml(attributes: Template) -> str:
    """``one.system.config``: oned.conf as ``OPENNEBULA_CONFIGURATION`` (names sorted, as
    oned's template keeps them; the schema lists them in that order)."""
    return template_xml(attributes, "OPENNEBULA_CONFIGURATION")


def ds_action_data(*bodies: str) -> str:
    """``ImageManager::format_message``: image body (if any), datastore body, extras."""
    return f"<DS_DRIVER_ACTION_DATA>{''.join(bodies)}</DS_DRIVER_ACTION_DATA>"


def parse_recovering(xml: str) -> Any:
    """A message as Nokogiri reads it: recovering from the raw (unescaped) strings oned
    inserts into API messages."""
    from lxml import etree

    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(xml.encode(), parser)
    return root if root is not None else etree.fromstring(b"<HOOK_MESSAGE/>")


def vmm_action_data(*, host: str, vm: Vm, system_ds: Datastore, migr_host: str = "",
                    local_file: str = "", remote_file: str = "", checkpoint: str = "",
                    tm_command: str = "", tm_rollback: str = "", disk_path: str = "",
                    version: Version = LATEST) -> str:
    """``VirtualMachineManager::format_message``: empty values as empty elements."""

    def element(tag: str, value: str) -> str:
        return f"<{tag}>{value}</{tag}>" if value else f"<{tag}/>"

    deploy_files = (element("LOCAL_DEPLOYMENT_FILE", local_file)
                    + element("REMOTE_DEPLOYMENT_FILE", remote_file if local_file else ""))
    return ("<VMM_DRIVER_ACTION_DATA>" + element("HOST", host)
            + element("MIGR_HOST", migr_host) + element("DEPLOY_ID", vm.deploy_id)
            + deploy_files + element("CHECKPOINT_FILE", checkpoint)
            + element("TM_COMMAND", escape(tm_command))
            + element("TM_COMMAND_ROLLBACK", escape(tm_rollback))
            + element("DISK_TARGET_PATH", disk_path)
            + vm_body(vm, all_history=False, version=version)
            + datastore_body(system_ds, version)
            + "</VMM_DRIVER_ACTION_DATA>")
