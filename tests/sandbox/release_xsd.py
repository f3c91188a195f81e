"""OpenNebula's schemas release by release (tests/fixtures/xsd/<version>/, copied unchanged
from ``share/doc/xsd`` at ``release-<version>.0``), loaded so libxml2 accepts them, and the
validation of the sandbox's bodies against the release it claims."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

NS = "http://opennebula.org/XMLSchema"
XS = "http://www.w3.org/2001/XMLSchema"
RELEASE_XSD = Path(__file__).resolve().parents[1] / "fixtures" / "xsd"
_release_schemas: dict[tuple[str, str], etree.XMLSchema | None] = {}


def _loosened(path: Path) -> etree._ElementTree:
    """A release's schema as libxml2 can load it: before 7.2 the schemas put named
    elements between ``xs:any`` wildcards (not deterministic, refused by libxml2); such a
    sequence becomes a single wildcard (those are the free-form TEMPLATE-like parts), and
    included schemas are inlined the same way."""
    doc = etree.parse(str(path))
    root = doc.getroot()
    for include in root.findall(f"{{{XS}}}include"):
        included = _loosened(path.parent / include.get("schemaLocation"))
        position = list(root).index(include)
        root.remove(include)
        for offset, child in enumerate(included.getroot()):
            root.insert(position + offset, child)
    for sequence in list(doc.iter(f"{{{XS}}}sequence")):
        if sequence.find(f"{{{XS}}}any") is not None and len(sequence) > 1:
            for child in list(sequence):
                sequence.remove(child)
            etree.SubElement(sequence, f"{{{XS}}}any", minOccurs="0",
                             maxOccurs="unbounded", processContents="skip")
    return doc


def release_xsd(version: str, name: str) -> etree.XMLSchema | None:
    """The schema ``name`` of OpenNebula ``version`` (tests/fixtures/xsd/<version>/, copied
    from share/doc/xsd at release-<version>.0), or None when that release has none."""
    key = (version, name)
    if key not in _release_schemas:
        path = RELEASE_XSD / version / name
        _release_schemas[key] = etree.XMLSchema(_loosened(path)) if path.is_file() else None
    return _release_schemas[key]


def assert_valid_for(version: str, schema_name: str, xml: str) -> None:
    """``xml`` valid for release ``version``; a VM pool of full bodies (infoextended) is
    checked VM by VM against vm.xsd before 7.0, which had no vm_pool_extended.xsd."""
    schema = release_xsd(version, schema_name)
    if schema is None and schema_name == "vm_pool_extended.xsd":
        for vm in etree.fromstring(xml.encode()):
            assert_valid_for(version, "vm.xsd", etree.tostring(vm).decode())
        return
    if schema is None:
        return
    assert schema.validate(in_namespace(xml)), (version, schema_name,
                                                schema.error_log.last_error)




def in_namespace(xml: str) -> etree._Element:
    """oned's XML has no namespace; the schemas have one."""
    root = etree.fromstring(xml.encode())
    for element in root.iter():
        if isinstance(element.tag, str) and not element.tag.startswith("{"):
            element.tag = f"{{{NS}}}{element.tag}"
    return root
