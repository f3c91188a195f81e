"""Golden OpenNebula XML (``tests/one/golden/``) and the schemas to check it against.

The golden files follow what oned sends (``src/image/ImageManagerActions.cc``,
``src/vmm/VirtualMachineManager.cc``, ``src/hm/Hook*.cc``; reference
``opennebula-interfaces.md`` §1-3, §6): full bodies in the XSDs' element order, template
values in CDATA, hook API messages in oned's compact one-line layout.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from lxml import etree

GOLDEN = Path(__file__).parent / "golden"
XSD_DIR = Path(__file__).parents[1] / "fixtures" / "xsd"
NS = "http://opennebula.org/XMLSchema"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def golden_b64(name: str) -> str:
    """The file as oned would encode it: one line of standard base64 (EVP_EncodeBlock) of
    the document without the file's final newline."""
    return base64.b64encode(golden(name).rstrip("\n").encode()).decode()


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


@functools.cache
def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_DIR / name)))


def in_namespace(xml: str | bytes | etree._Element) -> etree._Element:
    """oned's XML has no namespace, the schemas have one (tests/fixtures/xsd/README.md)."""
    source = etree.tostring(xml) if isinstance(xml, etree._Element) else xml
    root = etree.fromstring(source.encode() if isinstance(source, str) else source)
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = f"{{{NS}}}{element.tag}"
    return root


def schema_errors(name: str, xml: str | bytes | etree._Element) -> list[str]:
    """What ``name`` finds wrong with ``xml`` (empty: valid)."""
    checker = schema(name)
    if checker.validate(in_namespace(xml)):
        return []
    return [error.message for error in checker.error_log]
