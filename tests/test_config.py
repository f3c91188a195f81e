"""Configuration: rc parsing (never executed), precedence, datastore overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from onestorpool import config
from onestorpool.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, rc: str = "", override: str = "", storpool: str = "",
         hostname: str = "node1", environ: dict[str, str] | None = None) -> config.Config:
    return config.load(
        rc_paths=[write(tmp_path / "addon-storpoolrc", rc)],
        override_path=write(tmp_path / "addon-storpool.conf", override),
        storpool_paths=[write(tmp_path / "storpool.conf", storpool)],
        hostname=hostname, environ=environ or {})


def test_defaults_match_the_old_addon(tmp_path):
    cfg = load(tmp_path)
    assert cfg.prefix == "one"
    assert cfg["DELAY_DELETE"] == 48 * 3600
    assert cfg["ATTACH_TIMEOUT"] == 20
    assert cfg["READONLY_MODE"] == "rw"
    assert cfg["NO_VOLUME_TEMPLATE"] is True
    assert cfg["SP_SYSTEM"] == "ssh"
    assert cfg.loc_tag_value == "one"
    assert cfg.origins["ONE_PX"] == "default"


def test_the_shipped_rc_file_is_accepted(tmp_path):
    cfg = config.load(rc_paths=[FIXTURES / "addon-storpoolrc"],
                      override_path=tmp_path / "none", storpool_paths=[])
    assert cfg["MKFS"] == "sudo /sbin/mkfs"
    assert cfg["VMSNAPSHOT_ENABLE_LIMIT"] is True
    assert cfg.extra["VMSNAPSHOT_ATOMIC"] == "1"


def test_precedence_rc_then_override_then_datastore(tmp_path):
    cfg = load(tmp_path, rc='ONE_PX=alpha\nDELAY_DELETE=1h\nSP_QOSCLASS=silver\n',
               override="DELAY_DELETE='30m'  # local\n")
    assert cfg.prefix == "alpha"
    assert cfg["DELAY_DELETE"] == 1800
    assert cfg.origins["DELAY_DELETE"].endswith("addon-storpool.conf:1")
    ds = cfg.for_datastore({"SP_QOSCLASS": "gold", "DELAY_DELETE": "5s", "NAME": "x"})
    assert ds["SP_QOSCLASS"] == "gold"
    assert ds["DELAY_DELETE"] == 1800  # not a datastore attribute
    assert cfg["SP_QOSCLASS"] == "silver"  # the original is untouched


def test_shell_syntax_is_parsed_not_executed(tmp_path):
    cfg = load(tmp_path, rc='export ONE_PX="one2"\nLOC_TAG_VAL="${ONE_PX}-site"\n'
                            "DEFAULT_QOSCLASS='$NOT_EXPANDED'\n")
    assert cfg.loc_tag_value == "one2-site"
    assert cfg["DEFAULT_QOSCLASS"] == "$NOT_EXPANDED"


@pytest.mark.parametrize(("rc", "message"), [
    ("ONE_PX=$(touch /tmp/pwned)\n", "addon-storpoolrc:1: ONE_PX"),
    ("ONE_PX=`id`\n", "addon-storpoolrc:1"),
    ("\n\nif true; then\n", "addon-storpoolrc:3: not a VAR=value"),
    ("DELAY_DELETE=2w\n", "addon-storpoolrc:1: DELAY_DELETE: expected N"),
    ("ATTACH_TIMEOUT=soon\n", "addon-storpoolrc:1: ATTACH_TIMEOUT: expected an integer"),
    ("READONLY_MODE=maybe\n", "READONLY_MODE: expected one of rw, ro"),
    ("DELAY_DELTE=1h\n", "addon-storpoolrc:1: unknown variable DELAY_DELTE"),
    ('ONE_PX="unterminated\n', "unterminated double quote"),
])
def test_bad_values_name_file_and_line(tmp_path, rc, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("$", r"\$")):
        load(tmp_path, rc=rc)


def test_legacy_and_tweak_variables_are_accepted(tmp_path):
    cfg = load(tmp_path, rc="DEBUG_oneVmInfo=1\nT_CPU_MODE=host\nMONITOR_SYNC_DEBUG=1\n"
                            "SP_TEMPLATE_STATUS_MINUTES=60\n")
    assert cfg.extra["T_CPU_MODE"] == "host"


def test_storpool_conf_sections_and_env(tmp_path):
    conf = ("SP_API_HTTP_HOST=10.0.0.1\nSP_AUTH_TOKEN=secret-global\n"
            "[node1]\nSP_OURID=7\nSP_API_HTTP_PORT=8081\n[node2]\nSP_OURID=8\n")
    cfg = load(tmp_path, storpool=conf)
    endpoint = cfg.endpoint()
    assert (endpoint.host, endpoint.port, endpoint.token) == ("10.0.0.1", 8081, "secret-global")
    assert "secret" not in repr(endpoint) and "secret" not in str(endpoint)
    env = load(tmp_path, storpool=conf, environ={"SP_API_HTTP_HOST": "10.9.9.9"})
    assert env.endpoint().host == "10.9.9.9"
    paths = [tmp_path / "storpool.conf"]
    assert config.storpool_conf_section("node2", paths) == {"SP_OURID": "8"}


def test_datastore_selects_another_cluster(tmp_path):
    cfg = load(tmp_path, storpool="SP_AUTH_TOKEN=a\n")
    other = cfg.for_datastore({"SP_API_HTTP_HOST": "10.1.1.1", "SP_API_HTTP_PORT": "82",
                               "SP_AUTH_TOKEN": "b"})
    assert (other.endpoint().host, other.endpoint().port, other.endpoint().token) == (
        "10.1.1.1", 82, "b")
    assert cfg.endpoint().port == 81
    with pytest.raises(ConfigError, match="datastore attribute SP_API_HTTP_PORT"):
        cfg.for_datastore({"SP_API_HTTP_PORT": "eighty"})


def test_missing_token_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no StorPool API token"):
        load(tmp_path).endpoint()


def test_remote_backup_delete_forms(tmp_path):
    cfg = load(tmp_path)
    assert cfg.for_datastore({"REMOTE_BACKUP_DELETE": "clusterB:tag del=y"})[
        "REMOTE_BACKUP_DELETE"] == ("clusterB", "tag del=y")
    # The old add-on passed the location twice without ':' (reference §10); not here.
    assert cfg.for_datastore({"REMOTE_BACKUP_DELETE": "clusterB"})[
        "REMOTE_BACKUP_DELETE"] == ("clusterB", "")


def test_root_prefix_moves_default_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    monkeypatch.delenv("ONE_LOCATION", raising=False)
    write(tmp_path / "var/lib/one/remotes/addon-storpoolrc", "ONE_PX=rooted\n")
    write(tmp_path / "etc/storpool.conf", "SP_AUTH_TOKEN=t\nSP_API_HTTP_PORT=9\n")
    cfg = config.load()
    assert cfg.prefix == "rooted"
    assert cfg.endpoint().port == 9


def test_config_command_hides_the_token(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONESTORPOOL_ROOT", str(tmp_path))
    write(tmp_path / "etc/storpool.conf", "SP_AUTH_TOKEN=topsecret\n")
    assert config.main([]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out and "\nONE_PX=one  # default\n" in out
