"""VM templates in the oned sandbox: ``one.template.*`` and ``one.templatepool.info``, how
most scripts create VMs (``onetemplate instantiate``).

Follows ``src/rm/RequestManagerVMTemplate.cc`` (release-6.10.5): instantiate clones the
template, merges the extra attributes (they replace the template's), sets TEMPLATE_NAME and
TEMPLATE_ID, NAME when one is given, then allocates the VM as ``one.vm.allocate`` does (on
hold when asked). ``persistent`` first clones the template as ``<name>-copy`` and records
CLONING_TEMPLATE_ID. The body is ``VMTemplate::to_xml`` (``src/vm_template/VMTemplate.cc``):
ID UID GID UNAME GNAME NAME [LOCK] PERMISSIONS REGTIME TEMPLATE, the same 5.10 ... 7.0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onestorpool.sandbox import oned_xml as X
from onestorpool.sandbox.oned_objects import (
    ACTION,
    ALLOCATE,
    INTERNAL,
    NO_EXISTS,
    OneFailure,
    Template,
    check_name,
    now,
)


@dataclass
class VmTemplate:
    id: int
    name: str
    template: Template
    regtime: int = field(default_factory=now)


def _text(template: Template) -> str:
    """A template back to OpenNebula's text syntax (what one.vm.allocate parses)."""
    lines = []
    for key, value in template.items():
        if isinstance(value, list):
            for vector in value:
                inner = ", ".join(f'{k}="{_quote(v)}"' for k, v in vector.items())
                lines.append(f"{key}=[{inner}]")
        else:
            lines.append(f'{key}="{_quote(value)}"')
    return "\n".join(lines)


def _quote(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


class TemplatePool:
    """``methods()`` gives the XML-RPC calls; ``vm_allocate`` is the VM pool's allocate
    (template text, hold) returning (vm id, body)."""

    def __init__(self, vm_allocate: Callable[[str, bool], tuple[int, str]]):
        self.vm_allocate = vm_allocate
        self.lock = threading.RLock()
        self.templates: dict[int, VmTemplate] = {}
        self._next_id = 0

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "one.template.allocate": self.allocate, "one.template.info": self.info,
            "one.template.update": self.update, "one.template.delete": self.delete,
            "one.template.clone": self.clone, "one.template.rename": self.rename,
            "one.template.instantiate": self.instantiate,
            "one.templatepool.info": self.pool_info,
        }

    def _get(self, template_id: int, method: str) -> VmTemplate:
        found = self.templates.get(template_id)
        if found is None:
            raise OneFailure(NO_EXISTS, f"[{method}] Error getting VM template "
                                        f"[{template_id}].", template_id)
        return found

    def _body(self, tmpl: VmTemplate) -> str:
        return (f"<VMTEMPLATE><ID>{tmpl.id}</ID><UID>0</UID><GID>0</GID>"
                f"<UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME><NAME>{tmpl.name}</NAME>"
                f"{X.PERMISSIONS}<REGTIME>{tmpl.regtime}</REGTIME>"
                f"{X.template_xml(tmpl.template)}</VMTEMPLATE>")

    def _new(self, name: str, template: Template, method: str) -> VmTemplate:
        error = check_name(name)
        taken = next((t.id for t in self.templates.values() if t.name == name), None)
        if not error and taken is not None:
            error = f"NAME is already taken by TEMPLATE {taken}."
        if error:
            raise OneFailure(ALLOCATE, f"[{method}] Error allocating a new virtual machine "
                                       f"template. {error}")
        tmpl = VmTemplate(self._next_id, name, template)
        self._next_id += 1
        self.templates[tmpl.id] = tmpl
        return tmpl

    def allocate(self, text: str) -> tuple[int, str]:
        method = "one.template.allocate"
        template = _parse(text, method)
        with self.lock:
            tmpl = self._new(str(template.pop("NAME", "")), template, method)
            return tmpl.id, self._body(tmpl)

    def info(self, template_id: int, extended: bool = False, decrypt: bool = False) -> str:
        with self.lock:
            return self._body(self._get(template_id, "one.template.info"))

    def pool_info(self, *filters: Any) -> str:
        with self.lock:
            return X.pool("VMTEMPLATE_POOL", [self._body(t) for t in self.templates.values()])

    def update(self, template_id: int, text: str, merge: int = 0) -> int:
        method = "one.template.update"
        template = _parse(text, method)
        template.pop("NAME", None)
        with self.lock:
            tmpl = self._get(template_id, method)
            tmpl.template = {**tmpl.template, **template} if merge else template
            return template_id

    def rename(self, template_id: int, name: str) -> int:
        method = "one.template.rename"
        with self.lock:
            tmpl = self._get(template_id, method)
            error = check_name(name)
            taken = next((t.id for t in self.templates.values() if t.name == name), None)
            if not error and taken not in (None, template_id):
                error = f"NAME is already taken by TEMPLATE {taken}."
            if error:
                raise OneFailure(ACTION, f"[{method}] {error}", template_id)
            tmpl.name = name
            return template_id

    def delete(self, template_id: int, recursive: bool = False) -> tuple[int, str]:
        with self.lock:
            tmpl = self._get(template_id, "one.template.delete")
            body = self._body(tmpl)
            del self.templates[template_id]
            return template_id, body

    def clone(self, template_id: int, name: str, recursive: bool = False
              ) -> tuple[int, str]:
        method = "one.template.clone"
        with self.lock:
            source = self._get(template_id, method)
            copy = {k: ([dict(v) for v in value] if isinstance(value, list) else value)
                    for k, value in source.template.items()}
            tmpl = self._new(name, copy, method)
            return tmpl.id, self._body(tmpl)

    def instantiate(self, template_id: int, name: str = "", hold: bool = False,
                    extra: str = "", persistent: bool = False) -> int:
        """``VMTemplateInstantiate::request_execute``."""
        method = "one.template.instantiate"
        with self.lock:
            source = self._get(template_id, method)
            if persistent:
                clone_id, _ = self.clone(template_id, name or f"{source.name}-copy")
                extra = f"CLONING_TEMPLATE_ID={template_id}\n"
                source = self.templates[clone_id]
            merged: Template = dict(source.template)
            merged.update(_parse(extra, method) if extra.strip() else {})
            for key in ("NAME", "TEMPLATE_NAME", "TEMPLATE_ID"):
                merged.pop(key, None)
            merged["TEMPLATE_NAME"] = source.name
            merged["TEMPLATE_ID"] = str(source.id)
            if name:
                merged["NAME"] = name
        try:
            vm_id, _ = self.vm_allocate(_text(merged), bool(hold))
        except OneFailure as failure:  # the allocation's reason, under this call's name
            raise OneFailure(failure.code, failure.message.replace(
                "[one.vm.allocate]", f"[{method}]"), failure.object_id) from None
        return vm_id


def _parse(text: str, method: str) -> Template:
    try:
        return X.parse_template(text)
    except ValueError as error:
        raise OneFailure(INTERNAL, f"[{method}] Parse error: {error}") from None
