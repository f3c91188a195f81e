"""XML bodies as oned returns them (element order of OpenNebula's XSDs), and the parser of
OpenNebula template text (``KEY = "value"`` lines and ``VECTOR = [ A = "1", B = "2" ]``)."""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

Template = dict[str, Any]  # values: str, or list of dicts for vectors (DISK, CONTEXT, ...)

_PAIR_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\]\n]*)\s*',
                      re.DOTALL)


def parse_template(text: str) -> Template:
    """OpenNebula template syntax, or a ``<TEMPLATE>`` XML document (pyone sends either)."""
    text = text.strip()
    if text.startswith("<"):
        from onestorpool.one import parse_xml

        root = parse_xml(text, "template")
        result: Template = {}
        for child in root:
            if len(child):
                result.setdefault(child.tag, []).append(
                    {c.tag: (c.text or "") for c in child})
            else:
                result[child.tag] = child.text or ""
        return result
    result = {}
    position = 0
    while position < len(text):
        match = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*').match(text, position)
        if match is None:
            stripped = text[position:].lstrip()
            if not stripped:
                break
            raise ValueError(f"template syntax error near {stripped[:30]!r}")
        key = match[1].upper()
        position = match.end()
        if text.startswith("[", position):
            pairs, position = _vector_pairs(text, position + 1, key)
            vector = {}
            for pair in pairs:
                found = _PAIR_RE.fullmatch(pair)
                if found is None:
                    raise ValueError(f"template syntax error in {key} vector")
                vector[found[1].upper()] = _unquote(found[2].strip())
            result.setdefault(key, []).append(vector)
        else:
            value = re.compile(r'"(?:[^"\\]|\\.)*"|[^\n]*').match(text, position)
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
    raise ValueError(f"template syntax error: {key} vector is not closed")


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
    TEMPLATE in the schema's order."""
    parts = []
    order = (lambda item: (_VM_RANK.get(item[0], len(_VM_RANK)), item[0])) if vm else None
    for key, value in sorted(template.items(), key=order):
        if isinstance(value, list):
            for vector in value:
                inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in vector.items())
                parts.append(f"<{key}>{inner}</{key}>")
        else:
            parts.append(f"<{key}>{cdata(value)}</{key}>")
    return f"<{tag}>{''.join(parts)}</{tag}>"


def permissions() -> str:
    return ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
            "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
            "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")


def owner(uid: int = 0, gid: int = 0) -> str:
    return (f"<UID>{uid}</UID><GID>{gid}</GID><UNAME>oneadmin</UNAME>"
            f"<GNAME>oneadmin</GNAME>")


def datastore_body(ds: dict[str, Any]) -> str:
    images = "".join(f"<ID>{i}</ID>" for i in ds["images"])
    return (f"<DATASTORE><ID>{ds['id']}</ID>{owner()}<NAME>{cdata(ds['name'])}</NAME>"
            f"{permissions()}<DS_MAD>{cdata(ds['ds_mad'])}</DS_MAD>"
            f"<TM_MAD>{cdata(ds['tm_mad'])}</TM_MAD>"
            f"<BASE_PATH>{cdata(ds['base_path'])}</BASE_PATH><TYPE>{ds['type']}</TYPE>"
            f"<DISK_TYPE>{ds['disk_type']}</DISK_TYPE><STATE>0</STATE>"
            f"<CLUSTERS><ID>0</ID></CLUSTERS><TOTAL_MB>{ds['total_mb']}</TOTAL_MB>"
            f"<FREE_MB>{ds['free_mb']}</FREE_MB><USED_MB>{ds['used_mb']}</USED_MB>"
            f"<IMAGES>{images}</IMAGES>{template_xml(ds['template'])}</DATASTORE>")


def image_body(img: dict[str, Any]) -> str:
    snapshots = "".join(
        f"<SNAPSHOT><ACTIVE>{'YES' if s['active'] else 'NO'}</ACTIVE><DATE>{s['date']}</DATE>"
        f"<ID>{s['id']}</ID><NAME>{cdata(s['name'])}</NAME><PARENT>-1</PARENT>"
        f"<SIZE>{img['size']}</SIZE></SNAPSHOT>" for s in img["snapshots"])
    vms = "".join(f"<ID>{v}</ID>" for v in img["vms"])
    return (f"<IMAGE><ID>{img['id']}</ID>{owner(img['uid'], img['gid'])}"
            f"<NAME>{cdata(img['name'])}</NAME>{permissions()}<TYPE>{img['type']}</TYPE>"
            f"<DISK_TYPE>2</DISK_TYPE><PERSISTENT>{int(img['persistent'])}</PERSISTENT>"
            f"<REGTIME>{img['regtime']}</REGTIME><MODTIME>{img['regtime']}</MODTIME>"
            f"<SOURCE>{cdata(img['source'])}</SOURCE><PATH>{cdata(img['path'])}</PATH>"
            f"<FORMAT>{cdata(img['format'])}</FORMAT><FS>{cdata(img['fs'])}</FS>"
            f"<SIZE>{img['size']}</SIZE><STATE>{img['state']}</STATE>"
            f"<PREV_STATE>{img['prev_state']}</PREV_STATE>"
            f"<RUNNING_VMS>{len(img['vms'])}</RUNNING_VMS><CLONING_OPS>0</CLONING_OPS>"
            f"<CLONING_ID>-1</CLONING_ID><TARGET_SNAPSHOT>{img['target_snapshot']}"
            f"</TARGET_SNAPSHOT><DATASTORE_ID>{img['ds_id']}</DATASTORE_ID>"
            f"<DATASTORE>{cdata(img['ds_name'])}</DATASTORE><VMS>{vms}</VMS><CLONES/>"
            f"<APP_CLONES/>{template_xml(img['template'])}"
            f"<SNAPSHOTS><ALLOW_ORPHANS>YES</ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE>"
            f"<NEXT_SNAPSHOT>{img['next_snapshot']}</NEXT_SNAPSHOT>{snapshots}</SNAPSHOTS>"
            f"<BACKUP_INCREMENTS/></IMAGE>")


def host_body(host: dict[str, Any]) -> str:
    share = ("<HOST_SHARE><MEM_USAGE>0</MEM_USAGE><CPU_USAGE>0</CPU_USAGE>"
             "<TOTAL_MEM>16777216</TOTAL_MEM><TOTAL_CPU>800</TOTAL_CPU>"
             "<MAX_MEM>16777216</MAX_MEM><MAX_CPU>800</MAX_CPU>"
             f"<RUNNING_VMS>{len(host['vms'])}</RUNNING_VMS><VMS_THREAD>1</VMS_THREAD>"
             "<DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>0</FREE_DISK>"
             "<MAX_DISK>0</MAX_DISK><USED_DISK>0</USED_DISK></DATASTORES>"
             "<PCI_DEVICES/><NUMA_NODES/></HOST_SHARE>")
    vms = "".join(f"<ID>{v}</ID>" for v in host["vms"])
    return (f"<HOST><ID>{host['id']}</ID><NAME>{cdata(host['name'])}</NAME>"
            f"<STATE>{host['state']}</STATE><PREV_STATE>{host['state']}</PREV_STATE>"
            f"<IM_MAD>{cdata(host['im_mad'])}</IM_MAD><VM_MAD>{cdata(host['vm_mad'])}</VM_MAD>"
            f"<CLUSTER_ID>0</CLUSTER_ID><CLUSTER>default</CLUSTER>{share}<VMS>{vms}</VMS>"
            f"{template_xml(host['template'])}<MONITORING/></HOST>")


def vm_body(vm: dict[str, Any]) -> str:
    history = "".join(
        f"<HISTORY><OID>{vm['id']}</OID><SEQ>{h['seq']}</SEQ>"
        f"<HOSTNAME>{cdata(h['hostname'])}</HOSTNAME><HID>{h['hid']}</HID><CID>0</CID>"
        f"<STIME>{h['stime']}</STIME><ETIME>0</ETIME><VM_MAD>kvm</VM_MAD>"
        f"<TM_MAD>{cdata(h['tm_mad'])}</TM_MAD><DS_ID>{h['ds_id']}</DS_ID><PLAN_ID>-1</PLAN_ID>"
        f"<ACTION_ID>-1</ACTION_ID><PSTIME>0</PSTIME><PETIME>0</PETIME><RSTIME>0</RSTIME>"
        f"<RETIME>0</RETIME><ESTIME>0</ESTIME><EETIME>0</EETIME><ACTION>0</ACTION>"
        f"<UID>-1</UID><GID>-1</GID><REQUEST_ID>-1</REQUEST_ID></HISTORY>"
        for h in vm["history"])
    snapshots = "".join(
        f"<SNAPSHOTS><ALLOW_ORPHANS>YES</ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE>"
        f"<DISK_ID>{disk_id}</DISK_ID><NEXT_SNAPSHOT>{max(ids, default=-1) + 1}"
        f"</NEXT_SNAPSHOT>" + "".join(
            f"<SNAPSHOT><DATE>0</DATE><ID>{i}</ID><PARENT>-1</PARENT><SIZE>0</SIZE></SNAPSHOT>"
            for i in ids) + "</SNAPSHOTS>"
        for disk_id, ids in sorted(vm["disk_snapshots"].items()) if ids)
    return (f"<VM><ID>{vm['id']}</ID>{owner(vm['uid'], vm['gid'])}"
            f"<NAME>{cdata(vm['name'])}</NAME>{permissions()}<LAST_POLL>0</LAST_POLL>"
            f"<STATE>{vm['state']}</STATE><LCM_STATE>{vm['lcm_state']}</LCM_STATE>"
            f"<PREV_STATE>{vm['prev_state']}</PREV_STATE>"
            f"<PREV_LCM_STATE>{vm['prev_lcm_state']}</PREV_LCM_STATE><RESCHED>0</RESCHED>"
            f"<STIME>{vm['stime']}</STIME><ETIME>{vm['etime']}</ETIME>"
            f"<DEPLOY_ID>{cdata(vm['deploy_id'])}</DEPLOY_ID>{monitoring_xml(vm)}"
            f"<SCHED_ACTIONS/>"
            f"{template_xml(vm_template(vm), vm=True)}"
            f"{template_xml(vm['user_template'], 'USER_TEMPLATE')}"
            f"<HISTORY_RECORDS>{history}</HISTORY_RECORDS>{snapshots}"
            f"<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS></VM>")


def monitoring_xml(vm: dict[str, Any]) -> str:
    monitoring = vm.get("monitoring")
    if not monitoring:
        return "<MONITORING/>"
    disks = "".join(f"<DISK_SIZE><ID>{disk}</ID><SIZE>{size}</SIZE></DISK_SIZE>"
                    for disk, size in sorted(monitoring["disks"].items()))
    return (f"<MONITORING>{disks}<ID>{vm['id']}</ID>"
            f"<TIMESTAMP>{monitoring['timestamp']}</TIMESTAMP></MONITORING>")


def vm_template(vm: dict[str, Any]) -> Template:
    """oned moves NAME out of the template and adds VMID and TM_MAD_SYSTEM."""
    template = {k: v for k, v in vm["template"].items() if k != "NAME"}
    system_tm = vm["history"][-1]["tm_mad"] if vm["history"] else ""
    return {**template, "VMID": str(vm["id"]), "TM_MAD_SYSTEM": system_tm}


def pool(tag: str, bodies: list[str]) -> str:
    return f"<{tag}>{''.join(bodies)}</{tag}>"


def api_message(method: str, params: list[Any], reply: list[Any], extra: str = "") -> str:
    """``HOOK_MESSAGE`` of an API call: the session hidden, strings inserted raw (as oned
    does: a template with ``<`` or ``&`` makes the message malformed XML), then the OUT
    parameters (success: true, value, 0; failure: false, message, code, object id)."""
    parts = ["<PARAMETER><POSITION>1</POSITION><TYPE>IN</TYPE><VALUE>****</VALUE></PARAMETER>"]
    for position, value in enumerate(params, start=2):
        rendered = int(value) if isinstance(value, bool) else value
        parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>IN</TYPE>"
                     f"<VALUE>{rendered}</VALUE></PARAMETER>")
    if reply[0]:
        outs = ["true", reply[1], 0]
    else:
        outs = ["false", escape(str(reply[1])), reply[2], reply[3] if len(reply) > 3 else -1]
    for position, value in enumerate(outs, start=1):
        if isinstance(value, str) and value.startswith("<"):
            value = ""  # info bodies are not repeated in the message
        parts.append(f"<PARAMETER><POSITION>{position}</POSITION><TYPE>OUT</TYPE>"
                     f"<VALUE>{value}</VALUE></PARAMETER>")
    return (f"<HOOK_MESSAGE><HOOK_TYPE>API</HOOK_TYPE><CALL>{method}</CALL><CALL_INFO>"
            f"<RESULT>{int(bool(reply[0]))}</RESULT><PARAMETERS>{''.join(parts)}</PARAMETERS>"
            f"<EXTRA>{extra}</EXTRA></CALL_INFO></HOOK_MESSAGE>")
