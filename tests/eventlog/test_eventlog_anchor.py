"""Heads anchored outside the log: checkpoints published, and verify against them."""

from __future__ import annotations

import sqlite3

import pytest

from onestorpool.eventlog import EventLog, EventLogError
from onestorpool.eventlog import anchor as anchor_module
from onestorpool.eventlog.anchor import (
    CHECKPOINT,
    TAG,
    checkpoint,
    configured_target,
    parse_anchors,
    read_anchors,
)
from onestorpool.eventlog.cli import main
from onestorpool.eventlog.verify import verify


class FakeStorPool:
    def __init__(self):
        self.tags: dict[str, dict[str, str]] = {}

    def volume_update(self, name: str, *, tags: dict[str, str]) -> dict:
        self.tags.setdefault(name, {}).update(tags)
        return {"ok": True}


def test_a_checkpoint_is_in_the_chain_and_published_everywhere(filled_log, tmp_path,
                                                               monkeypatch):
    logged: list[str] = []
    monkeypatch.setattr(anchor_module, "_to_syslog", logged.append)
    storpool = FakeStorPool()
    with EventLog(filled_log) as log:
        before = log.head()
        point = checkpoint(log, file=tmp_path / "anchors", volume="one-eventlog",
                           client=storpool)
        record = log.get(point.seq)
        assert (point.seq, point.hash) == log.head() == (11, record.hash)
    assert record.type == CHECKPOINT
    assert record.payload == {"previous": f"{before[0]}:{before[1].hex()}"}
    assert logged == [point.line] and point.anchor in point.line
    assert (tmp_path / "anchors").read_text() == point.line + "\n"
    assert (tmp_path / "anchors").stat().st_mode & 0o777 == 0o640
    assert storpool.tags == {"one-eventlog": {TAG: point.anchor}}
    with EventLog(filled_log) as log:
        second = checkpoint(log, file=tmp_path / "anchors", syslog=False)
    assert read_anchors(tmp_path / "anchors") == [(11, point.hash), (12, second.hash)]
    with EventLog(filled_log) as log, pytest.raises(EventLogError, match="client"):
        checkpoint(log, volume="v", syslog=False)


def test_expect_head_catches_a_cut_tail(filled_log, capsys):
    with EventLog(filled_log, readonly=True) as log:
        head = log.head()
    # Triggers dropped, the last three records deleted, the witness set to the new end.
    db = sqlite3.connect(filled_log)
    db.executescript("DROP TRIGGER events_no_delete; DROP TRIGGER meta_follows_chain; "
                     "DELETE FROM events WHERE seq > 7; UPDATE meta SET value = "
                     "(SELECT seq || ' ' || lower(hex(hash)) FROM events WHERE seq = 7) "
                     "WHERE key = 'head';")
    db.close()
    with EventLog(filled_log, readonly=True) as log:
        assert verify(log).ok  # nothing inside the file tells
    code = main(["--log", str(filled_log), "verify", "--expect-head",
                 f"{head[0]}:{head[1].hex()}"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED at record 10: anchor record 10 is missing" in out


def test_anchors_file_takes_any_text_with_heads(filled_log, tmp_path, capsys):
    with EventLog(filled_log, readonly=True) as log:
        heads = [(seq, log.get(seq).hash) for seq in (3, 10)]
    text = (f"Nov 26 00:40:00 front onestorpool-eventlog[7]: ... checkpoint "
            f"{heads[0][0]}:{heads[0][1].hex()}\nticket #42: head "
            f"{heads[1][0]}:{heads[1][1].hex().upper()} noted\n")
    (tmp_path / "anchors").write_text(text)
    assert parse_anchors(text.splitlines()) == heads
    assert main(["--log", str(filled_log), "verify", "--anchors",
                 str(tmp_path / "anchors")]) == 0
    wrong = f"5:{heads[0][1].hex()}\n"
    (tmp_path / "wrong").write_text(wrong)
    assert main(["--log", str(filled_log), "verify", "--anchors", str(tmp_path / "wrong")]) == 1
    assert "record 5 is not the one anchored" in capsys.readouterr().out
    (tmp_path / "empty").write_text("nothing here\n")
    with pytest.raises(EventLogError, match="no SEQ:HASH"):
        main(["--log", str(filled_log), "verify", "--anchors", str(tmp_path / "empty")])


def test_the_checkpoint_command(filled_log, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(anchor_module, "_to_syslog", lambda line: None)
    assert main(["--log", str(filled_log), "checkpoint", "--file",
                 str(tmp_path / "anchors")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(read_anchors(tmp_path / "anchors")[0][1].hex())
    assert main(["--log", str(filled_log), "verify", "--anchors",
                 str(tmp_path / "anchors")]) == 0


@pytest.mark.parametrize(("setting", "target"), [
    ("", (None, None)), ("file:/var/lib/one/anchors", ("/var/lib/one/anchors", None)),
    ("volume:one-eventlog", (None, "one-eventlog"))])
def test_the_configured_target(setting, target):
    assert configured_target(setting) == target


@pytest.mark.parametrize("setting", ["file:relative", "volume:", "syslog", "tag:x"])
def test_a_bad_configured_target_is_refused(setting):
    with pytest.raises(EventLogError, match="EVENT_LOG_ANCHOR"):
        configured_target(setting)


@pytest.mark.parametrize("kind", ["file", "volume"])
def test_the_checkpoint_command_publishes_where_the_configuration_says(
        filled_log, tmp_path, capsys, monkeypatch, kind):
    from onestorpool import config
    from onestorpool.storpool import StorPoolClient

    rc = tmp_path / "rc"
    rc.write_text(f"EVENT_LOG_ANCHOR={kind}:{tmp_path / 'anchors' if kind == 'file' else 'v1'}\n")
    loaded = config.load(rc_paths=[rc], override_path=tmp_path / "none", storpool_paths=[],
                         environ={})
    storpool = FakeStorPool()
    monkeypatch.setattr(config, "load", lambda *args, **kwargs: loaded)
    monkeypatch.setattr(StorPoolClient, "from_config", classmethod(lambda cls, c: storpool))
    monkeypatch.setattr(anchor_module, "_to_syslog", lambda line: None)
    assert main(["--log", str(filled_log), "checkpoint"]) == 0
    anchor = capsys.readouterr().out.split()[-1]
    if kind == "file":
        assert (tmp_path / "anchors").read_text().split()[-1] == anchor
    else:
        assert storpool.tags == {"v1": {TAG: anchor}}


def test_a_checkpoint_is_due_after_new_records_and_the_interval(tmp_path):
    from onestorpool.eventlog import Event
    from onestorpool.eventlog.anchor import checkpoint_due

    with EventLog(tmp_path / "events.db") as log:
        assert not checkpoint_due(log, 60)  # an empty log has nothing to anchor
        log.append(Event("x", "t"))
        assert checkpoint_due(log, 60)
        point = checkpoint(log, syslog=False)
        when = log.get(point.seq).time
        assert not checkpoint_due(log, 60, now=when + 3600)  # nothing new since
        log.append(Event("y", "t"))
        assert not checkpoint_due(log, 60, now=when + 59)
        assert checkpoint_due(log, 60, now=when + 60)


def test_a_transaction_is_kept_short_for_the_writers_behind_it(tmp_path, monkeypatch):
    from onestorpool.eventlog import Event, store

    monkeypatch.setattr(store, "MAX_TRANSACTION_RECORDS", 5)
    with EventLog(tmp_path / "events.db") as log:
        assert log.append_batch([Event("x", "t")] * 5) == [1, 2, 3, 4, 5]
        with pytest.raises(EventLogError, match="more than 5 records in one transaction"):
            log.append_batch([Event("x", "t")] * 6)
        assert log.count() == 5 and verify(log).ok
