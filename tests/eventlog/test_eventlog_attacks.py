"""The attacks of issue 10, each through the sqlite3 shell or module with every trigger in
place: refused by the database, or detected by verify."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from onestorpool.eventlog import Event, EventLog
from onestorpool.eventlog.archive import archive
from onestorpool.eventlog.projections import pending_effects
from onestorpool.eventlog.record import GENESIS, chain_hash
from onestorpool.eventlog.replay import register_handler, replay
from onestorpool.eventlog.store import COLUMNS, INSERT_SQL
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import effect


def shell(path: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sqlite3", str(path), sql], capture_output=True, text=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from onestorpool.errors import "
                           "run_main; from onestorpool.eventlog.cli import main; "
                           "sys.exit(run_main(main, sys.argv[1:]))", *args],
                          capture_output=True, text=True)


def forge(path: Path, type_: str, payload: bytes, *, witness: bool = True) -> int:
    """Append a record as the code would, from outside it: a correct link and hash."""
    db = sqlite3.connect(path, isolation_level=None)
    seq, prev = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    fields = (seq + 1, time.time(), "forger", "h", 1, type_, None, None, None, None, None,
              None, 1, payload, prev)
    digest = chain_hash(*fields)
    db.execute("BEGIN")
    db.execute(INSERT_SQL, (*fields, digest))
    if witness:
        db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"{seq + 1} {digest.hex()}",))
    db.execute("COMMIT")
    db.close()
    return seq + 1


def verified(path: Path, **kwargs) -> object:
    with EventLog(path, readonly=True) as log:
        return verify(log, **kwargs)


@pytest.fixture
def pending_log(tmp_path) -> Path:
    """Records 1..10; record 2 asks for effect k2, not done."""
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append_batch([Event("ds.rm", "t", effect("k2") if n == 2 else {"n": n}, image=n)
                          for n in range(1, 11)])
    return path


# 1. Deleting the oldest records: meta is guarded, the cut is in the chain.

@pytest.mark.parametrize("sql", [
    "INSERT INTO meta VALUES ('archived_through', '4')",
    "UPDATE meta SET value = '4' WHERE key = 'archived_through'",
    "INSERT OR REPLACE INTO meta VALUES ('archived_through', '4')",
    "UPDATE meta SET value = (SELECT lower(hex(hash)) FROM events WHERE seq = 4) "
    "WHERE key = 'anchor_hash'",
    "UPDATE meta SET value = '9 ' || (SELECT lower(hex(hash)) FROM events WHERE seq = 9) "
    "WHERE key = 'head'",
    "INSERT INTO meta VALUES ('other', 'x')",
    "DELETE FROM meta",
    "DELETE FROM events WHERE seq <= 4",
])
def test_the_anchor_cannot_be_moved_to_drop_old_records(pending_log, sql):
    done = shell(pending_log, sql)
    assert done.returncode != 0 and "append-only" in done.stderr
    with EventLog(pending_log, readonly=True) as log:
        assert log.count() == 10 and [p.key for p in pending_effects(log)] == ["k2"]
        assert verify(log).ok


@pytest.mark.parametrize("named_dir", [False, True])
def test_a_forged_cut_moves_the_head_and_has_no_archive(pending_log, tmp_path, named_dir):
    with EventLog(pending_log, readonly=True) as log:
        head = (3, log.get(3).hash)  # published by a checkpoint at the time
    # Forge the archive path: a log.archived record, then the anchor, then the deletion.
    hash4 = shell(pending_log, "SELECT lower(hex(hash)) FROM events WHERE seq = 4").stdout
    cut = {"first": 1, "through": 4, "file": "events-000000000001-000000000004.jsonl.gz",
           "head_hash": hash4.strip()}
    if named_dir:
        cut["dir"] = str(tmp_path / "archive")
    forge(pending_log, "log.archived", msgpack.packb(cut))
    done = shell(pending_log, "UPDATE meta SET value = '4' WHERE key = 'archived_through'; "
                              f"UPDATE meta SET value = '{hash4.strip()}' "
                              "WHERE key = 'anchor_hash'; DELETE FROM events WHERE seq <= 4")
    assert done.returncode == 0, done.stderr
    if named_dir:  # verify looks where the chain says the archives are
        result = verified(pending_log)
        assert not result.ok and "which is missing" in result.reason
    else:  # a cut the chain records, with no directory: only the archives can tell
        result = verified(pending_log)
        assert result.ok and "records 1..4 are archived and were not checked" in result.notes[0]
    result = verified(pending_log, archives=[tmp_path / "archive"])
    assert not result.ok and "archive" in result.reason
    result = verified(pending_log, anchors=[head], find_archives=False)  # went with the cut
    assert not result.ok and result.first_bad == 3 and "archived" in result.reason


# 2. REPLACE and UPSERT.

def _last_rehashed(path: Path) -> list:
    db = sqlite3.connect(path)
    row = list(db.execute(f"SELECT {COLUMNS} FROM events ORDER BY seq DESC LIMIT 1").fetchone())
    db.close()
    row[13] = msgpack.packb({"n": 666})
    row[15] = chain_hash(*row[:15])
    return row


@pytest.mark.parametrize("verb", [
    "REPLACE INTO", "INSERT OR REPLACE INTO", "INSERT OR IGNORE INTO", "INSERT INTO"])
def test_replace_and_upsert_are_refused(filled_log, verb):
    row = _last_rehashed(filled_log)
    db = sqlite3.connect(filled_log)
    db.execute("PRAGMA recursive_triggers = OFF")
    sql = f"{verb} events ({COLUMNS}) VALUES ({','.join('?' * 16)})"
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(sql, row)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(sql + " ON CONFLICT(seq) DO UPDATE SET payload = excluded.payload", row)
    db.close()
    assert "append-only" in shell(filled_log, "REPLACE INTO events SELECT * FROM events "
                                              "WHERE seq = 10").stderr
    with EventLog(filled_log, readonly=True) as log:
        assert log.get(10).payload == {"n": 9} and verify(log).ok


def test_an_insert_must_extend_the_chain(filled_log):
    for seq, prev in ((12, "hash"), (11, "zeroblob(32)"), (5, "hash")):
        sql = (f"INSERT INTO events SELECT {seq}, time, writer, host, pid, type, vm, image, "
               "datastore, volume, snapshot, effect_key, schema, payload, "
               f"{prev}, hash FROM events WHERE seq = 10")
        assert "append-only" in shell(filled_log, sql).stderr
    with EventLog(filled_log, readonly=True) as log:
        assert log.count() == 10


def test_a_replaced_tail_is_caught_by_an_earlier_head(filled_log, tmp_path):
    """Triggers dropped, the last record replaced and the witness with it: the head
    published before (a checkpoint file) no longer matches."""
    from onestorpool.eventlog.anchor import checkpoint

    anchors = tmp_path / "anchors"
    with EventLog(filled_log) as log:
        point = checkpoint(log, file=anchors, syslog=False)
    assert point.seq == 11
    row = _last_rehashed(filled_log)
    db = sqlite3.connect(filled_log)
    db.executescript("DROP TRIGGER events_extend_chain; DROP TRIGGER meta_follows_chain;")
    db.execute(f"REPLACE INTO events ({COLUMNS}) VALUES ({','.join('?' * 16)})", row)
    db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"11 {row[15].hex()}",))
    db.commit()
    db.close()
    assert verified(filled_log).ok
    done = cli("--log", str(filled_log), "verify", "--anchors", str(anchors))
    assert done.returncode == 1 and "FAILED at record 11" in done.stdout, done


# 5. Tracking rows must be justified by outcome records.

@pytest.mark.parametrize("sql", [
    "INSERT INTO tracking VALUES ('effects', 'k2', 3, 2)",  # not the record just appended
    "INSERT INTO tracking VALUES ('effects', 'k2', 99, 2)",  # no such record
    "INSERT INTO tracking VALUES ('effects', 'k2', 10, NULL)",
    "INSERT OR REPLACE INTO tracking VALUES ('effects', 'k2', 10, 2)",
])
def test_tracking_rows_need_their_outcome_record(pending_log, sql):
    if "REPLACE" in sql:
        forge(pending_log, "effect.done", msgpack.packb({"key": "k2"}))
        shell(pending_log, "INSERT INTO tracking VALUES ('effects', 'k2', 11, 2)")
        sql = sql.replace("10, 2", "11, 2")
        refused = shell(pending_log, sql)
        assert refused.returncode != 0
        assert "UNIQUE" in refused.stderr or "append-only" in refused.stderr
        return
    refused = shell(pending_log, sql)
    assert refused.returncode != 0 and "append-only" in refused.stderr
    with EventLog(pending_log, readonly=True) as log:
        assert [p.key for p in pending_effects(log)] == ["k2"]


def test_a_tracking_row_on_another_record_is_detected(pending_log):
    # Accepted by the triggers (a new record after the position), but record 10 is no
    # outcome of k2: verify says so, and so does a tracking row pointing at a failure.
    assert shell(pending_log, "INSERT INTO tracking VALUES ('effects', 'k2', 10, 2)"
                 ).returncode == 0
    with EventLog(pending_log, readonly=True) as log:
        assert pending_effects(log) == []  # replay would skip it...
    result = verified(pending_log)  # ...and verify says why
    assert not result.ok and result.first_bad == 10 and "not justified" in result.reason


def test_a_tracking_row_on_a_failure_is_detected(pending_log):
    seq = forge(pending_log, "effect.failed", msgpack.packb({"key": "k2", "error": "x"}))
    shell(pending_log, f"INSERT INTO tracking VALUES ('effects', 'k2', {seq}, 2)")
    result = verified(pending_log)
    assert not result.ok and "not justified" in result.reason


def test_a_tracking_row_inserted_without_triggers_is_detected(pending_log):
    done = shell(pending_log, "DROP TRIGGER tracking_justified; "
                              "INSERT INTO tracking VALUES ('effects', 'k2', 1, 0)")
    assert done.returncode == 0
    result = verified(pending_log)
    assert not result.ok and result.first_bad == 1


def test_real_outcomes_verify_live_and_archived(pending_log, tmp_path):
    register_handler("test_effect", lambda record, log: {"ok": True})
    with EventLog(pending_log) as log:
        assert [o.status for o in replay(log, dry_run=False)] == ["done"]
        assert verify(log).ok
        archive(log, tmp_path / "archive", through_seq=11)  # the effect.done is archived
        result = verify(log)  # in the directory the chain names
        assert result.ok and result.notes == (
            "archive events-000000000001-000000000011.jsonl.gz: records 1..11 ok",)
        result = verify(log, find_archives=False)
        assert result.ok and "1 tracking rows name archived records" in result.notes[-1]
        (tmp_path / "archive").rename(tmp_path / "moved")
        result = verify(log)
        assert not result.ok and "which is missing" in result.reason
        assert verify(log, archives=[tmp_path / "moved"]).ok


# 6. Archives are checked as one sequence from the genesis, against the chain's digests.

def _rewrite(path: Path, prev: bytes, edit: dict[int, int]) -> bytes:
    """Rewrite an archive consistently from ``prev``: payloads edited, every hash redone."""
    import base64

    with gzip.open(path, "rt") as handle:
        header, *records, trailer = [json.loads(line) for line in handle]
    header["prev_hash"] = prev.hex()
    for record in records:
        if record["seq"] in edit:
            raw = msgpack.packb({"n": edit[record["seq"]]})
            record["raw"] = base64.b64encode(raw).decode()
            record["payload"] = {"n": edit[record["seq"]]}
        record["prev_hash"] = prev.hex()
        fields = (record["seq"], record["time"], record["writer"], record["host"],
                  record["pid"], record["type"], record["vm"], record["image"],
                  record["datastore"], record["volume"], record["snapshot"],
                  record["effect_key"], record["schema"], base64.b64decode(record["raw"]), prev)
        prev = chain_hash(*fields)
        record["hash"] = prev.hex()
    trailer["head_hash"] = prev.hex()
    with gzip.open(path, "wt") as out:
        for line in (header, *records, trailer):
            out.write(json.dumps(line, sort_keys=True) + "\n")
    return prev


def test_a_consistently_rewritten_older_archive_is_detected(filled_log, tmp_path):
    directory = tmp_path / "archive"
    with EventLog(filled_log) as log:
        old = archive(log, directory, through_seq=3)
        newer = archive(log, directory, through_seq=6)
        assert verify(log, archives=[directory]).ok
    _rewrite(old.path, GENESIS, {2: 666})
    result = verified(filled_log, archives=[old.path, newer.path])
    assert not result.ok
    # Rewriting the newer one too, so that the two join: the live anchor does not match.
    head = _rewrite(old.path, GENESIS, {2: 667})
    _rewrite(newer.path, head, {})
    result = verified(filled_log, archives=[directory])
    assert not result.ok and any("hash differs" in n for n in result.notes)
    done = cli("--log", str(filled_log), "verify", "--archives", str(directory))
    assert done.returncode == 1 and "FAILED" in done.stdout


def test_an_archive_replaced_by_another_file_is_detected(filled_log, tmp_path):
    directory = tmp_path / "archive"
    with EventLog(filled_log) as log:
        cut = archive(log, directory, through_seq=3)
    with gzip.open(cut.path, "rt") as handle:
        text = handle.read()
    with gzip.open(cut.path, "wt", compresslevel=1) as out:  # same records, other bytes
        out.write(text)
    result = verified(filled_log, archives=[directory])
    assert not result.ok and any("SHA-256 differs" in n for n in result.notes)


def test_an_archive_of_an_effect_not_done_is_detected(pending_log, tmp_path):
    with EventLog(pending_log) as log:
        archive(log, tmp_path / "archive", through_seq=1)
        assert verify(log, archives=[tmp_path / "archive"]).ok
    # Archive k2's request by hand (the archive code never does): verify names it.
    from onestorpool.eventlog import archive as archive_module

    with EventLog(pending_log) as log:
        original = archive_module.pending_effects
        archive_module.pending_effects = lambda log: []
        try:
            archive(log, tmp_path / "archive", through_seq=5)
        finally:
            archive_module.pending_effects = original
        result = verify(log, archives=[tmp_path / "archive"])
    assert not result.ok and result.first_bad == 2 and "not done" in result.reason


# 7. A log whose creator died, and databases of another kind.

def test_an_uninitialised_log_is_a_clear_message(tmp_path):
    path = tmp_path / "events.db"
    path.touch(mode=0o640)  # the creator made the file, then died
    for command in ("verify", "stats", "show"):
        done = cli("--log", str(path), command)
        assert done.returncode == 1 and "is not initialised" in done.stderr, done
        assert "internal error" not in done.stderr
    with EventLog(path) as log:  # the next writer creates it
        log.append(Event("x", "t"))
        assert verify(log).ok


def test_a_foreign_database_is_a_clear_message(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE things (x)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    for command in ("verify", "stats", "replay"):
        done = cli("--log", str(path), command)
        assert done.returncode == 1 and "is not an event log" in done.stderr, done
    done = cli("--log", str(path), "replay", "--execute")
    assert "is not an event log" in done.stderr and "internal error" not in done.stderr


# 3, 4. Payloads the rules refuse, written by an older release: the rest stays readable.

def test_records_from_before_the_payload_rules_stay_readable(filled_log, capsys):
    from onestorpool.eventlog.cli import main

    forge(filled_log, "old", msgpack.packb({1: "int key", "x": float("nan"), "b": b"\0"},
                                           use_bin_type=True))
    with EventLog(filled_log) as log:
        log.append(Event("after", "t", {"n": 12}))
        assert verify(log).ok
    for command in ("show", "export"):
        assert main(["--log", str(filled_log), command]) == 0
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 12 and "after" in out[-1]
    def refuse(constant: str):
        raise ValueError(constant)
    old = json.loads(out[10], parse_constant=refuse)
    assert old["payload"] == {"1": "int key", "x": "nan", "b": {"$bytes": "AA=="}}


def test_archives_in_several_directories_are_all_found(filled_log, tmp_path):
    with EventLog(filled_log) as log:
        archive(log, tmp_path / "old", through_seq=3)
        archive(log, tmp_path / "new", through_seq=11)  # holds the cut naming "old"
        result = verify(log)
        assert result.ok and len(result.notes) == 2, result.notes
        (tmp_path / "old").rename(tmp_path / "gone")
        result = verify(log)
        assert not result.ok and f"archived to {tmp_path / 'old'}, which is missing" in (
            result.reason)
        assert verify(log, archives=[tmp_path / "gone", tmp_path / "new"]).ok
