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
    pattern = re.compile(r"""(\[\s*|\.get\(\s*)(["'])""" + re.escape(name) + r"\2")
    return [path for path, text in sources.items() if pattern.search(text)]


def test_every_setting_claimed_as_used_is_read_somewhere():
    sources = _product_sources()
    unread = [s.name for s in config.SETTINGS if s.used and not _readers(s.name, sources)]
    assert unread == [], f"claimed as honoured but read by no product code: {unread}"


# Read by product code that no action runs yet: still unused.
INERT_READS = {"VM_TAG": "only Tags.for_vm uses it, and no action tags a VM's volume yet"}


def test_every_setting_read_somewhere_is_claimed_as_used():
    sources = _product_sources()
    read = {s.name: _readers(s.name, sources) for s in config.SETTINGS
            if not s.used and s.name not in INERT_READS}
    assert {n: f for n, f in read.items() if f} == {}, (
        "read by product code but listed in config.UNUSED: take it off that list")


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

    def do_POST(self):
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


# -- onestorpool config ---------------------------------------------------------------------------


def test_config_prints_rc_syntax_that_reads_back_the_same(rc_root, capsys):
    rc_root.write_text("ONE_PX=two\nSTORPOOL_CLIENT_ID_SOURCES='LOCAL ONEHOST'\n"
                       "DELAY_DELETE=\nREMOTE_BACKUP_DELETE=\"clusterB:tag del=y\"\n")
    (rc_root.parents[4] / "etc").mkdir()
    (rc_root.parents[4] / "etc/storpool.conf").write_text("SP_AUTH_TOKEN=topsecret\n")
    assert config.main([]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out and "(" not in out.split("# paths")[0].replace(
        "(set, hidden)", "").replace("(not set here)", "")  # no Python tuples or reprs
    settings = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(settings) == len(config.SETTINGS) - 1  # the token line is a comment
    reread = rc_root.parent / "reread"
    reread.write_text("\n".join(settings) + "\n")
    again = config.load(rc_paths=[reread], override_path=reread.parent / "none",
                        storpool_paths=[], environ={})
    original = config.load()
    assert {n: again[n] for n in again.values if n != "SP_AUTH_TOKEN"} == {
        n: original[n] for n in original.values if n != "SP_AUTH_TOKEN"}
    assert f"ONE_PX=two  # {rc_root}:1" in out


def test_config_marks_unused_settings_and_shows_endpoint_token_origin_and_log(rc_root,
                                                                              capsys):
    etc = rc_root.parents[4] / "etc"
    etc.mkdir()
    (etc / "storpool.conf").write_text("SP_API_HTTP_HOST=10.1.2.3\nSP_AUTH_TOKEN=secret\n")
    rc_root.write_text("EVENT_LOG=/srv/audit/events.db\n")
    assert config.main([]) == 0
    out = capsys.readouterr().out
    assert "AUTO_TEMPLATE=0  # default; accepted for compatibility, unused" in out
    assert "DS_CP_REPORT_FORMAT=1  # default\n" in out
    assert f"# StorPool API: http://10.1.2.3:81  (host: {etc / 'storpool.conf'}; " \
           "port: default)" in out
    assert f"# StorPool token: from {etc / 'storpool.conf'} (never shown)" in out
    assert f"# event log: /srv/audit/events.db  ({rc_root}:1)" in out
    assert "secret" not in out


def test_config_without_a_token_says_so_and_fails(rc_root, capsys):
    assert config.main([]) == 1
    assert "# StorPool API: unusable: no StorPool API token" in capsys.readouterr().out


def test_config_of_one_datastore(rc_root, capsys):
    (rc_root.parents[4] / "etc").mkdir()
    (rc_root.parents[4] / "etc/storpool.conf").write_text("SP_AUTH_TOKEN=main\n")
    body = ("<DATASTORE><ID>101</ID><NAME>remote</NAME><DS_MAD>storpool</DS_MAD>"
            "<TM_MAD>storpool</TM_MAD><BASE_PATH>/var/lib/one//datastores/101</BASE_PATH>"
            "<TYPE>0</TYPE><STATE>0</STATE><CLUSTERS><ID>0</ID></CLUSTERS><TEMPLATE>"
            "<SP_API_HTTP_HOST>10.9.9.9</SP_API_HTTP_HOST><SP_AUTH_TOKEN>other</SP_AUTH_TOKEN>"
            "<SP_SKIP_MONITOR>YES</SP_SKIP_MONITOR></TEMPLATE></DATASTORE>")
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda session, ds_id, decrypt=False: [True, body, 0],
                             "one.datastore.info")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc_root.write_text(f"ONE_XMLRPC=http://127.0.0.1:{server.server_address[1]}/RPC2\n")
        assert config.main(["--datastore", "101"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    assert "datastore 101 (remote)" in out
    assert "SP_SKIP_MONITOR=YES  # datastore 101\n" in out
    assert "# StorPool API: http://10.9.9.9:81  (host: datastore 101;" in out
    assert "# StorPool token: from datastore 101 (never shown)" in out
    assert "other" not in out.replace("another", "")


def test_event_log_anchor_is_a_setting_checked_when_read(tmp_path):
    rc = tmp_path / "rc"
    rc.write_text("EVENT_LOG_ANCHOR=volume:one-eventlog\n")
    loaded = config.load(rc_paths=[rc], override_path=tmp_path / "none", storpool_paths=[],
                         environ={})
    assert loaded["EVENT_LOG_ANCHOR"] == "volume:one-eventlog"
    rc.write_text("EVENT_LOG_ANCHOR=somewhere\n")
    with pytest.raises(config.ConfigError, match=r"rc:1: EVENT_LOG_ANCHOR: expected file:/"):
        config.load(rc_paths=[rc], override_path=tmp_path / "none", storpool_paths=[],
                    environ={})


def test_storpool_client_id_sources_is_the_lookup_order(tmp_path, monkeypatch):
    from onestorpool import hosts

    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    from onestorpool.sandbox.hosts import env as sandbox_hosts_env

    for name, value in sandbox_hosts_env(tmp_path / "hosts").items():
        monkeypatch.setenv(name, value)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/storpool.conf").write_text("SP_AUTH_TOKEN=x\n[a]\nSP_OURID=5\n")
    (tmp_path / "hosts/a").mkdir(parents=True)
    rc = tmp_path / "rc"

    def client_id(sources: str, template: dict[str, str] | None) -> int:
        rc.write_text(sources)
        cfg = config.load(rc_paths=[rc], override_path=tmp_path / "none")
        return hosts.client_id(hosts.get("a"), cfg, template)

    assert client_id("", {"SP_OURID": "9"}) == 5  # LOCAL first by default
    assert client_id("STORPOOL_CLIENT_ID_SOURCES='ONEHOST LOCAL'\n", {"SP_OURID": "9"}) == 9
    with pytest.raises(config.ConfigError, match="tried ONEHOST"):
        client_id("STORPOOL_CLIENT_ID_SOURCES=ONEHOST\n", None)
