"""Every setting `onestorpool config` lists is honoured or says it is unused (issue 8 §4):
the source is scanned for each name, and the oned-side settings are shown at work."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

import pytest

from onestorpool import config, oneapi

REPO = Path(__file__).resolve().parent.parent
# The product: everything the distribution installs except the sandboxes (a stand-in reading
# a setting does not make the product honour it).
PRODUCT = ["onestorpool", "drivers", "subscribers", "eventlog", "hooks"]


def _product_sources() -> dict[str, str]:
    sources = {}
    for top in PRODUCT:
        for path in sorted((REPO / top).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith("onestorpool/sandbox/"):
                continue
            text = path.read_text()
            if relative == "onestorpool/config.py":
                # the table that declares the settings is not a read of them
                start = text.index("SETTINGS: tuple[Setting, ...] = (")
                text = text[:start] + text[text.index("SETTINGS_BY_NAME", start):]
            sources[relative] = text
    return sources


def _readers(name: str, sources: dict[str, str]) -> list[str]:
    """Files that read ``name`` as a configuration value: ``cfg["NAME"]``, ``.get("NAME"``,
    ``origins["NAME"]``."""
    pattern = re.compile(r"""(\[\s*|\.get\(\s*)(["'])%s\2""" % re.escape(name))
    return [path for path, text in sources.items() if pattern.search(text)]


def test_every_setting_claimed_as_used_is_read_somewhere():
    sources = _product_sources()
    unread = [s.name for s in config.SETTINGS if s.used and not _readers(s.name, sources)]
    assert unread == [], f"claimed as honoured but read by no product code: {unread}"


def test_every_setting_read_somewhere_is_claimed_as_used():
    sources = _product_sources()
    read = {s.name: _readers(s.name, sources) for s in config.SETTINGS if not s.used}
    assert {n: f for n, f in read.items() if f} == {}, (
        "read by product code but listed as unused: drop used=False in config.SETTINGS")


def test_the_documented_settings_are_honoured():
    for name in ("EVENT_LOG", "ONE_XMLRPC", "SP_SKIP_MONITOR", "DS_CP_REPORT_FORMAT",
                 "COPY_CMD_DD_BS", "ONE_CALL_RETRIES"):
        assert config.SETTINGS_BY_NAME[name].used, name


# -- oned: ONE_XMLRPC and ONE_CALL_RETRIES from addon-storpoolrc -------------------------------


@pytest.fixture
def rc_root(monkeypatch, tmp_path):
    """A configuration root with credentials and no oned endpoint from the environment."""
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    monkeypatch.delenv("ONE_LOCATION", raising=False)
    monkeypatch.delenv("ONE_XMLRPC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(oneapi, "ONEADMIN_HOME", str(tmp_path / "nowhere"))
    (tmp_path / "auth").write_text("oneadmin:pw\n")
    monkeypatch.setenv("ONE_AUTH", str(tmp_path / "auth"))
    rc = tmp_path / "var/lib/one/remotes/addon-storpoolrc"
    rc.parent.mkdir(parents=True)
    return rc


def test_one_xmlrpc_from_the_rc_file_is_the_endpoint(rc_root):
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda session: [True, "7.0.0", 0], "one.system.version")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/RPC2"
        rc_root.write_text(f"export ONE_XMLRPC={url}\n")
        assert oneapi.endpoint_origin() == (url, f"{rc_root}:1")
        assert oneapi.one_call("one.system.version") == "7.0.0"
    finally:
        server.shutdown()
        server.server_close()


class _Unavailable(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("line", "tries"), [("", 3), ("ONE_CALL_RETRIES=1\n", 1),
                                             ("ONE_CALL_RETRIES=5\n", 5)])
def test_one_call_retries_is_the_number_of_tries(rc_root, line, tries):
    handler = type("Handler", (_Unavailable,), {"calls": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc_root.write_text(f"ONE_XMLRPC=http://127.0.0.1:{server.server_address[1]}/RPC2\n"
                           + line)
        with pytest.raises(oneapi.OneTransportError):
            oneapi.one_call("one.system.version")
        assert handler.calls == tries
    finally:
        server.shutdown()
        server.server_close()
