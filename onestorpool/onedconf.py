"""oned.conf as text: a parser that keeps every byte, and edits that can be undone.

oned.conf is OpenNebula's template syntax: ``NAME = value`` or ``NAME = [ K = V, ... ]``,
values bare words or double-quoted strings, ``#`` comments to the end of the line. The
parser records where each top-level attribute and each vector member starts and ends, so an
edit replaces exactly the characters it means to and the rest of the file (comments, blank
lines, alignment) stays as the admin left it.

An :class:`Edit` replaces one exact piece of text by another (``old`` → ``new``, whole
lines, ``new`` containing the anchor it was made at); undoing it replaces ``new`` by ``old``
again, which gives the original bytes back as long as nobody changed those lines since.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ParseError(ValueError):
    """The text is not in oned's template syntax (message names the line)."""


@dataclass
class Value:
    """A value as written: ``text`` is the unquoted string, ``start``/``end`` the span of the
    token (quotes included) in the file."""

    text: str
    start: int
    end: int
    quoted: bool


@dataclass
class Attribute:
    """A top-level attribute: ``value`` for a single value, ``members`` for a vector (upper
    case names; a vector may repeat a name, the last one wins as in oned)."""

    name: str
    start: int  # the name's first character
    end: int  # after the value or the closing bracket
    value: Value | None = None
    members: list[tuple[str, Value]] = field(default_factory=list)

    def get(self, name: str) -> Value | None:
        found = None
        for key, value in self.members:
            if key == name.upper():
                found = value
        return found


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str) -> ParseError:
        return ParseError(f"line {_line_of(self.text, self.pos)}: {message}")

    def skip(self) -> None:
        """Whitespace and comments."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                newline = text.find("\n", self.pos)
                self.pos = len(text) if newline < 0 else newline + 1
            else:
                return

    def name(self) -> tuple[str, int]:
        self.skip()
        match = _NAME.match(self.text, self.pos)
        if not match:
            found = self.text[self.pos:self.pos + 20]
            raise self.error(f"attribute name expected, found {found!r}")
        self.pos = match.end()
        return match.group(0).upper(), match.start()

    def expect(self, char: str) -> None:
        self.skip()
        if not self.text.startswith(char, self.pos):
            raise self.error(f"{char!r} expected")
        self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos:self.pos + 1]

    def value(self, in_vector: bool) -> Value:
        self.skip()
        text, start = self.text, self.pos
        if text.startswith('"', start):
            pos, chars = start + 1, []
            while pos < len(text) and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                chars.append(text[pos])
                pos += 1
            if pos >= len(text):
                raise self.error("unterminated string")
            self.pos = pos + 1
            return Value("".join(chars), start, self.pos, True)
        stop = ",]\n#" if in_vector else "\n#"
        pos = start
        while pos < len(text) and text[pos] not in stop:
            pos += 1
        word = text[start:pos].rstrip()
        if not word:
            raise self.error("value expected")
        self.pos = start + len(word)
        return Value(word, start, self.pos, False)


def parse(text: str) -> list[Attribute]:
    """Every top-level attribute of ``text`` in order, with positions."""
    lexer = _Lexer(text)
    attributes = []
    while True:
        lexer.skip()
        if lexer.pos >= len(text):
            return attributes
        name, start = lexer.name()
        lexer.expect("=")
        if lexer.peek() == "[":
            lexer.pos += 1
            attribute = Attribute(name, start, start)
            while lexer.peek() != "]":
                if not lexer.peek():
                    raise ParseError(f"line {_line_of(text, start)}: vector {name} not "
                                     "closed with ]")
                key, _ = lexer.name()
                lexer.expect("=")
                attribute.members.append((key, lexer.value(in_vector=True)))
                if lexer.peek() == ",":
                    lexer.pos += 1
            lexer.pos += 1
            attribute.end = lexer.pos
        else:
            value = lexer.value(in_vector=False)
            attribute = Attribute(name, start, value.end, value=value)
        attributes.append(attribute)


def find(attributes: list[Attribute], name: str, **members: str) -> list[Attribute]:
    """The attributes called ``name`` whose members have the given values (case-insensitive
    for the values, as oned compares driver names)."""
    found = []
    for attribute in attributes:
        if attribute.name != name.upper():
            continue
        if all((v := attribute.get(k)) is not None and v.text.lower() == want.lower()
               for k, want in members.items()):
            found.append(attribute)
    return found


def line_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The span of the whole lines holding ``text[start:end]`` (newline included)."""
    line_start = text.rfind("\n", 0, start) + 1
    newline = text.find("\n", end)
    return line_start, len(text) if newline < 0 else newline + 1


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (whole lines, found exactly once) by ``new``; ``what`` says why."""

    what: str
    old: str
    new: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "old": self.old, "new": self.new}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Edit:
        return cls(data["what"], data["old"], data["new"])


class EditConflict(Exception):
    """An edit's text is not where it was (or is there more than once)."""


def apply(text: str, edit: Edit) -> str:
    if text.count(edit.old) != 1:
        raise EditConflict(f"{edit.what}: the lines it changes are not found exactly once")
    return text.replace(edit.old, edit.new, 1)


def undo(text: str, edit: Edit) -> str:
    if text.count(edit.new) != 1:
        raise EditConflict(f"{edit.what}: the lines it wrote were changed since; undo by hand:"
                           f"\n--- written\n{edit.new}--- originally\n{edit.old}")
    return text.replace(edit.new, edit.old, 1)
