"""Hostile input is refused with one clear error, and nothing but InputError ever escapes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onestorpool.errors import InputError
from onestorpool.one import (
    MAX_XML_BYTES,
    decode_base64,
    parse_ds_action,
    parse_hook_message,
    parse_image,
    parse_vm,
    parse_xml,
)
from tests.one.goldens import b64, golden

DOCTYPE = "DOCTYPE and entity declarations are not accepted"
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{n} "{("&lol" + str(n - 1 if n > 1 else "") + ";") * 10}">'
                    for n in range(1, 10))
          + ']><IMAGE><ID>1</ID><NAME>&lol9;</NAME></IMAGE>')


@pytest.mark.parametrize(("hostile", "message"), [
    (LAUGHS, DOCTYPE),
    ('<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><IMAGE><ID>&e;</ID></IMAGE>',
     DOCTYPE),
    ('<!DOCTYPE IMAGE SYSTEM "http://127.0.0.1:9/x.dtd"><IMAGE><ID>1</ID></IMAGE>', DOCTYPE),
    ('<?xml version="1.0"?>\n<!-- hello -->\n<?pi x?>\n<!DOCTYPE IMAGE><IMAGE/>', DOCTYPE),
    ("\ufeff<!DOCTYPE IMAGE><IMAGE/>", DOCTYPE),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE IMAGE><IMAGE/>', DOCTYPE),
    ("<IMAGE><ID>1</ID><NAME>&e;</NAME></IMAGE>", "malformed XML: Entity 'e' not defined"),
    ("<IMAGE>" + "<a>" * 300 + "</a>" * 300 + "</IMAGE>", "malformed XML: Excessive depth"),
])
def test_hostile_xml_is_refused(hostile, message):
    with pytest.raises(InputError) as caught:
        parse_image(hostile)
    error = str(caught.value)
    assert error.startswith("IMAGE: ") and message in error and "\n" not in error
    assert "root:" not in error  # nothing read from the host ends up in the message


def test_a_utf16_document_cannot_smuggle_a_doctype():
    hostile = '<!DOCTYPE a [<!ENTITY x "y">]><IMAGE><ID>&x;</ID></IMAGE>'.encode("utf-16")
    with pytest.raises(InputError, match=r"^IMAGE: malformed XML"):
        parse_image(hostile)


def test_oversized_input_is_refused_before_parsing():
    oversized = b"<IMAGE><NAME>" + b"x" * MAX_XML_BYTES + b"</NAME></IMAGE>"
    with pytest.raises(InputError, match=r"^IMAGE: larger than 16 MiB$"):
        parse_image(oversized)
    with pytest.raises(InputError, match=r"^DS driver action: larger than 16 MiB$"):
        parse_ds_action(base64.b64encode(oversized))
    with pytest.raises(InputError, match=r"^x: larger than 100 bytes$"):
        parse_xml(b"<a>" + b" " * 100 + b"</a>", "x", max_bytes=100)


def test_input_just_below_the_limit_is_parsed():
    item = b"<A>" + b"x" * 1000 + b"</A>"
    count = (MAX_XML_BYTES - 20) // len(item)
    root = parse_xml(b"<R>" + item * count + b"</R>", "R")
    assert len(root) == count


@pytest.mark.parametrize("payload", [
    "%%%not-base64%%%",
    "PEE",  # padding missing
    "PEE+PEE=PEE=",  # padding in the middle
    base64.urlsafe_b64encode(b"<DS_DRIVER_ACTION_DATA>\xfb\xff</DS_DRIVER_ACTION_DATA>").decode(),
    "PERT\u00e9",
])
def test_bad_base64_is_refused(payload):
    with pytest.raises(InputError, match=r"^DS driver action: not valid base64$"):
        parse_ds_action(payload)


def test_base64_may_be_wrapped_or_end_in_a_newline():
    encoded = base64.encodebytes(golden("ds_cp.xml").encode())  # 76-column lines
    assert b"\n" in encoded.strip()
    assert parse_ds_action(encoded).image.id == 17
    assert decode_base64("PGEvPg==\n") == b"<a/>"


def test_an_api_message_with_a_doctype_in_a_parameter_expands_nothing():
    # a user-supplied template lands raw in the message: it must stay inert text
    bomb = '<!DOCTYPE x [<!ENTITY a "' + "A" * 1000 + '">]>&a;&a;&a;'
    xml = golden("hook_api_update_malformed.xml").replace(
        'DESCRIPTION="cache <b>hot</b> & cold <i>"\nSP_QOSCLASS="gold"', bomb)
    event = parse_hook_message("EVENT API one.vm.update 1", b64(xml))
    assert event.parameter(3) == bomb
    text = "".join(event.message.itertext())
    assert "A" * 1000 not in text.replace("A" * 1000, "", 1)  # defined, never expanded


def test_an_api_message_cannot_open_with_a_doctype():
    xml = "<!DOCTYPE HOOK_MESSAGE>" + golden("hook_api_allocate.xml")
    with pytest.raises(InputError, match=f"^HOOK_MESSAGE: {DOCTYPE}$"):
        parse_hook_message("EVENT API one.image.allocate 1", b64(xml))


# -- nothing but InputError, whatever comes in ------------------------------------------------

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def only_input_errors(parse, payload) -> None:
    try:
        parse(payload)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_bytes(payload):
    for parse in (parse_vm, parse_image, parse_ds_action):
        only_input_errors(parse, payload)


@FUZZ
@given(st.data())
def test_damaged_golden_documents(data):
    name = data.draw(st.sampled_from(["vm.xml", "ds_cp.xml", "ds_stat.xml", "image.xml"]))
    text = golden(name)
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    damaged = text[:start] + data.draw(st.text(max_size=20)) + text[end:]
    parse = parse_vm if name == "vm.xml" else parse_image if name == "image.xml" \
        else parse_ds_action
    only_input_errors(parse, damaged)


@FUZZ
@given(key=st.sampled_from(["EVENT API one.vm.update 1", "EVENT VM 42/ACTIVE/RUNNING ",
                            "RETRY", "EVENT SERVICE 7 "]),
       start=st.integers(0, 500), junk=st.text(max_size=30))
def test_damaged_hook_messages(key, start, junk):
    source = {"R": "hook_retry.xml", "EVENT API": "hook_api_update_malformed.xml"}
    name = next((v for k, v in source.items() if key.startswith(k)), "hook_state_vm.xml")
    text = golden(name)
    damaged = text[:start] + junk + text[start + len(junk):]
    only_input_errors(lambda payload: parse_hook_message(key, payload), b64(damaged))


def test_huge_numbers_are_malformed_values_not_a_crash():
    # int() refuses more than 4300 digits with a ValueError; errors stay short
    xml = golden("image.xml").replace("<SIZE>20480</SIZE>", f"<SIZE>{'9' * 5000}</SIZE>")
    with pytest.raises(InputError) as caught:
        parse_image(xml)
    assert str(caught.value) == f"IMAGE/SIZE: expected an integer, got {'9' * 40!r}..."
    for key in (f"EVENT SERVICE {'9' * 5000} ", f"EVENT VM {'9' * 5000}/ACTIVE/RUNNING "):
        with pytest.raises(InputError, match="unknown key"):
            parse_hook_message(key, b64(golden("hook_state_vm.xml")))
