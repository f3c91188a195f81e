"""The event log store: round trips, secrets, files, tracking, schema versions, reading."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onestorpool.errors import AddonError
from onestorpool.eventlog import (
    AlreadyDone,
    Event,
    EventLog,
    EventLogError,
    append_event,
    cli,
    default_path,
    record,
    scrub,
    store,
)
from onestorpool.eventlog.verify import verify
from tests.eventlog.helpers import fill

names = st.text(alphabet="abcdefghijklmnop-_.0123456789", min_size=1, max_size=20)
payload_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=30)
    | st.binary(max_size=30) | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12)
events = st.builds(
    Event, type=names, writer=names,
    payload=st.dictionaries(st.sampled_from(["a", "b", "size", "nested"]), payload_values,
                            max_size=4),
    vm=st.none() | st.integers(0, 10**6), image=st.none() | st.integers(0, 10**6),
    datastore=st.none() | st.integers(0, 1000), volume=st.none() | names,
    snapshot=st.none() | names, schema=st.just(record.SCHEMA_VERSION))


def _as_read(value):
    """msgpack reads tuples back as lists."""
    if isinstance(value, dict):
        return {k: _as_read(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_read(v) for v in value]
    return value


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(events, min_size=1, max_size=5), min_size=1, max_size=6),
       start=st.integers(0, 30))
def test_any_appends_read_back_identically_and_verify(tmp_path_factory, batches, start):
    path = tmp_path_factory.mktemp("log") / "events.db"
    expected: list[Event] = []
    with EventLog(path) as log:
        for batch in batches:
            if len(batch) == 1:
                assert log.append(batch[0]) == len(expected) + 1
            else:
                assert log.append_batch(batch) == list(range(len(expected) + 1,
                                                             len(expected) + len(batch) + 1))
            expected.extend(batch)
    with EventLog(path, readonly=True) as log:  # a fresh connection: what is on disk
        records = list(log.read())
        assert [r.seq for r in records] == list(range(1, len(expected) + 1))
        for got, event in zip(records, expected, strict=True):
            assert (got.type, got.writer, got.vm, got.image, got.datastore, got.volume,
                    got.snapshot) == (event.type, event.writer, event.vm, event.image,
                                      event.datastore, event.volume, event.snapshot)
            assert got.payload == _as_read(event.payload)
            assert got.schema == record.SCHEMA_VERSION and got.pid == os.getpid()
        # Iterating from any position gives exactly the rest.
        assert list(log.iterate(since_seq=start)) == records[start:]
        result = verify(log)
        assert result.ok and result.checked == len(expected)
        assert result.head == records[-1].hash.hex()


# Anything a caller might pass, storable or not: non-string and reserved keys, integers
# past msgpack's range, NaN and infinities, lone surrogates, tuples, other objects.
any_keys = (st.text(max_size=8) | st.integers(-3, 3) | st.just("$bytes") | st.just("token")
            | st.none())
any_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20) | st.just("\ud800") | st.just(1j)
    | st.just("Authorization: Storpool v1:secret1"),
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(any_keys, inner, max_size=3)),
    max_leaves=10)


def _strict_json(text: str):
    """RFC 8259 only: no NaN/Infinity, no duplicate keys."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    def pairs(items):
        assert len({k for k, _ in items}) == len(items), "duplicate key"
        return dict(items)
    return json.loads(text, parse_constant=refuse, object_pairs_hook=pairs)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=st.dictionaries(any_keys, any_values, max_size=4))
def test_any_accepted_payload_reads_back_identically_everywhere(tmp_path_factory, payload):
    """Accepted: the API, ``show`` and ``export`` (strict JSON) give it back unchanged.
    Refused: a clear error at append, and nothing written."""
    path = tmp_path_factory.mktemp("log") / "events.db"
    try:
        record.check_payload(payload)
    except record.PayloadError:
        accepted = False
    else:
        accepted = True
    with EventLog(path) as log:
        log.append(Event("before", "t", {"n": 1}))
        if not accepted:
            with pytest.raises(EventLogError, match="payload cannot be stored: payload"):
                log.append(Event("t", "w", payload))
            assert log.count() == 1
            return
        seq = log.append(Event("t", "w", payload))
        log.append(Event("after", "t", {"n": 2}))
    expected = _as_read(scrub(payload))  # secrets are cut before anything is written
    with EventLog(path, readonly=True) as log:
        assert log.get(seq).payload == expected
        assert verify(log).ok
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--log", str(path), "export"]) == 0
    exported = [_strict_json(line) for line in out.getvalue().splitlines()]
    assert [r["seq"] for r in exported] == [1, 2, 3]
    assert record.from_json_value(exported[1]["payload"]) == expected
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--log", str(path), "show", "--type", "t"]) == 0
    line = out.getvalue().strip()
    shown, end = json.JSONDecoder().raw_decode(line, line.index("{"))
    _strict_json(line[line.index("{"):end])
    assert record.from_json_value(shown) == expected and line[end:] == " [w]"


def test_secrets_are_scrubbed_on_every_append(tmp_path):
    path = tmp_path / "events.db"
    append_event("test.secrets", writer="t", path=str(path), payload={
        "SP_AUTH_TOKEN": "abc1", "nested": {"auth": "x2", "Password": "y3", "size": 1},
        "list": [{"token": "z4"}], "error": "HTTP 500 for Authorization: Storpool v1:tok5 x",
        "token_empty": ""})
    with EventLog(path) as log:
        log.append_batch([Event("x", "t", {"db_passwd": "p6"}),
                          Event("y", "t", {"client_secret": ["s7"]})])
        first, second, third = log.read()
    assert first.payload == {"SP_AUTH_TOKEN": "***",
                             "nested": {"auth": "***", "Password": "***", "size": 1},
                             "list": [{"token": "***"}],
                             "error": "HTTP 500 for Authorization: Storpool v1:*** x",
                             "token_empty": ""}
    assert second.payload == {"db_passwd": "***"} and third.payload == {"client_secret": "***"}
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # db, -wal, -shm
    for secret in (b"abc1", b"x2", b"y3", b"z4", b"tok5", b"p6", b"s7"):
        assert secret not in data


def test_scrub_leaves_other_values_and_the_input_alone():
    payload = {"volume": "one-img-1", "sizes": [1, 2], "data": b"\x00", "auth": {"t": 1}}
    assert scrub(payload) == {"volume": "one-img-1", "sizes": [1, 2], "data": b"\x00",
                              "auth": "***"}
    assert payload["auth"] == {"t": 1}


def test_files_are_private_to_oneadmin(tmp_path):
    path = tmp_path / "var" / "onestorpool" / "events.db"
    old_umask = os.umask(0)  # even a permissive umask does not open them up
    try:
        with EventLog(path) as log:
            log.append(Event("x", "t"))
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    finally:
        os.umask(old_umask)
    assert modes == {"events.db": 0o640, "events.db-wal": 0o640, "events.db-shm": 0o640,
                     "events.db.lock": 0o640}
    assert path.parent.stat().st_mode & 0o777 == 0o750


def test_appends_are_durable_by_configuration(tmp_path):
    """Power loss cannot be tested here; what makes a commit survive it can: WAL with a
    sync of the log at every commit."""
    with EventLog(tmp_path / "events.db") as log:
        assert log.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert log.db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert log.db.in_transaction is False  # autocommit: nothing waits for a commit


def test_default_path_and_open(tmp_path, monkeypatch):
    monkeypatch.delenv("ONESTORPOOL_EVENTLOG", raising=False)
    monkeypatch.delenv("ONESTORPOOL_ROOT", raising=False)
    assert default_path() == "/var/lib/one/onestorpool/events.db"
    monkeypatch.setenv("ONESTORPOOL_EVENTLOG", str(tmp_path / "elsewhere.db"))
    assert default_path() == str(tmp_path / "elsewhere.db")
    assert append_event("x", writer="t", payload={}) == 1
    with EventLog.open() as log:
        assert log.path == str(tmp_path / "elsewhere.db") and log.count() == 1


def test_tracking_refuses_a_second_completion_and_rolls_it_back(tmp_path):
    with EventLog(tmp_path / "events.db") as log:
        request = log.append(Event("ds.rm", "d", {"effect": {"type": "t", "key": "k1"}}))
        with log.transaction() as tx:
            seq = tx.append(Event("effect.done", "h", {"key": "k1"}))
            tx.track("handler", "k1", position=request, seq=seq)
        with pytest.raises(AlreadyDone) as caught, log.transaction() as tx:
            seq = tx.append(Event("effect.done", "h", {"key": "k1"}))
            tx.track("handler", "k1", position=request, seq=seq)
        assert (caught.value.consumer, caught.value.key) == ("handler", "k1")
        assert isinstance(caught.value, AddonError)
        assert log.count() == 2  # the second "done" event went with the refused row
        # The same key for another consumer is that consumer's business.
        with log.transaction() as tx:
            seq = tx.append(Event("other.done", "h", {"key": "k1"}))
            tx.track("auditor", "k1", position=request, seq=seq)
        assert log.done_keys("handler") == {"k1"} and log.is_done("k1", "auditor")
        assert log.position("handler") == request and log.position("nobody") == 0
        assert verify(log).ok


def test_an_exception_in_a_transaction_appends_nothing(tmp_path):
    with EventLog(tmp_path / "events.db") as log:
        with pytest.raises(RuntimeError), log.transaction() as tx:
            tx.append(Event("a", "t"))
            raise RuntimeError("handler crashed before recording")
        assert log.count() == 0
        assert log.append(Event("b", "t")) == 1 and verify(log).ok


def test_write_errors_reach_the_caller_and_the_log_stays_readable(tmp_path):
    path = fill(tmp_path / "events.db", 3)
    with EventLog(path) as log:
        log.db.execute("PRAGMA max_page_count = 1")  # a full disk, as SQLite sees it
        with pytest.raises(EventLogError, match="full"):
            log.append(Event("big", "t", {"blob": b"x" * 100_000}))
    with EventLog(path, readonly=True) as log:
        assert log.count() == 3 and verify(log).ok


def test_unstorable_payloads_and_fields_are_clear_errors(tmp_path):
    with EventLog(tmp_path / "events.db") as log:
        with pytest.raises(EventLogError, match="payload cannot be stored"):
            log.append(Event("x", "t", {"when": object()}))
        with pytest.raises(EventLogError, match="NOT NULL"):
            log.append(Event("x", None))  # type: ignore[arg-type]
        assert log.count() == 0


def test_unopenable_log_is_a_clear_error(tmp_path):
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(EventLogError, match="dir-not-file"):
        EventLog(tmp_path / "dir-not-file")
    with pytest.raises(EventLogError, match="no-such"):
        EventLog(tmp_path / "no-such.db", readonly=True)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)")
    with pytest.raises(EventLogError, match="not an event log"):
        EventLog(other, readonly=True)


def test_a_log_from_a_newer_version_is_refused(filled_log):
    sqlite3.connect(filled_log).execute(f"PRAGMA user_version = {store.DB_SCHEMA + 1}")
    with pytest.raises(EventLogError, match="newer"):
        EventLog(filled_log)


def test_readonly_log_refuses_writes(filled_log):
    with EventLog(filled_log, readonly=True) as log, pytest.raises(EventLogError):
        log.append(Event("x", "t"))
    with pytest.raises(sqlite3.Error):
        sqlite3.connect(f"file:{filled_log}?mode=ro", uri=True).execute(
            "INSERT INTO tracking VALUES ('a', 'b', 1, 1)")


def test_readonly_open_of_a_path_with_uri_characters(tmp_path):
    path = fill(tmp_path / "odd?name#1%.db", 2)
    with EventLog(path, readonly=True) as log:
        assert log.count() == 2


def test_a_schema_1_log_reads_then_migrates_and_still_verifies(tmp_path):
    """A log made by the first release (schema step 1 only) with a record it wrote."""
    path = tmp_path / "events.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for statement in store._statements(store.SCHEMA_STEPS[0]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    fields = (1, 1.7e9, "replay", "old-host", 42, "effect.done", None, 3, 1, "one-img-3",
              None, None, 1, msgpack.packb({"n": 1, "key": "k0"}), record.GENESIS)
    db.execute(store.INSERT_SQL, (*fields, record.chain_hash(*fields)))
    db.execute("INSERT INTO tracking VALUES ('effects', 'k0', 1)")
    db.close()
    with EventLog(path, readonly=True) as log:  # readers need no migration
        assert [r.payload for r in log.read()] == [{"n": 1, "key": "k0"}]
        assert verify(log).ok
    with EventLog(path) as log:  # the first writer migrates
        assert log.db.execute("PRAGMA user_version").fetchone()[0] == store.DB_SCHEMA
        assert log.meta()["head"] == f"1 {log.get(1).hash.hex()}"
        assert log.done_keys() == {"k0"} and log.position("effects") == 0
        log.append(Event("new", "t", {"n": 2}))
        assert verify(log).ok and [r.payload["n"] for r in log.read()] == [1, 2]


def test_filters_use_the_indexes(filled_log):
    with EventLog(filled_log) as log:
        log.append_batch([Event("tm.clone", "t", {}, vm=7, image=2, volume="one-img-2-7-0"),
                          Event("ds.rm", "t", {}, image=2, datastore=1, snapshot="s1")])
        assert [r.seq for r in log.read(image=2)] == [3, 11, 12]
        assert [r.seq for r in log.read(vm=7)] == [11]
        assert [r.seq for r in log.read(types=["ds.rm", "tm.clone"])] == [11, 12]
        assert [r.seq for r in log.read(snapshot="s1", datastore=1)] == [12]
        assert [r.seq for r in log.read(since_seq=5, until_seq=7)] == [6, 7]
        assert [r.seq for r in log.read(limit=2)] == [1, 2]
        assert log.get(11).volume == "one-img-2-7-0" and log.get(99) is None
        for column, value in (("vm", 7), ("image", 2), ("volume", "x"), ("type", "x")):
            plan = " ".join(row[-1] for row in log.db.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM events WHERE {column} = ?", (value,)))
            assert "USING INDEX" in plan, (column, plan)


def test_iterate_follows_new_records(filled_log):
    seen: list[int] = []
    stop = threading.Event()
    with EventLog(filled_log, readonly=True) as reader:

        def follow() -> None:
            for rec in reader.iterate(since_seq=8, follow=True, interval=0.02,
                                      should_stop=stop.is_set, types=["ds.cp"]):
                seen.append(rec.seq)
                if rec.seq == 12:
                    stop.set()

        follower = threading.Thread(target=follow)
        follower.start()
        with EventLog(filled_log) as writer:
            writer.append(Event("ds.rm", "t"))  # filtered out: 11
            writer.append(Event("ds.cp", "t"))  # 12
        follower.join(timeout=10)
    assert not follower.is_alive() and seen == [9, 10, 12]


def test_the_writer_is_recorded(tmp_path):
    path = tmp_path / "events.db"
    append_event("ds.stat", writer="ds/stat", payload={"duration_ms": 1}, image=1, path=str(path))
    with EventLog(path) as log:
        (rec,) = log.read()
    assert (rec.writer, rec.host, rec.pid) == ("ds/stat", os.uname().nodename, os.getpid())
    assert abs(rec.time - time.time()) < 60


def test_an_event_default_payload_is_not_shared():
    first, second = Event("a", "t"), Event("b", "t")
    first.payload["x"] = 1
    assert second.payload == {} and Event("c", "t", None).payload == {}


def test_path_objects_work(tmp_path: Path):
    assert append_event("x", writer="t", payload={}, path=tmp_path / "e.db") == 1


def test_the_documented_example_runs(tmp_path, monkeypatch):
    docs = Path(__file__).resolve().parents[2] / "docs" / "eventlog.md"
    text = docs.read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("ONESTORPOOL_EVENTLOG", str(tmp_path / "events.db"))
    printed: list[str] = []
    exec(compile(snippet, str(docs), "exec"), {"print": printed.append})
    assert printed == ["already done"]
    with EventLog(tmp_path / "events.db", readonly=True) as log:
        assert [r.type for r in log.read()] == ["ds.rm", "hook.received", "hook.received",
                                                "effect.done"]
        assert log.position("fixer") == 1 and verify(log).ok


def test_a_schema_2_log_with_an_archive_migrates_and_still_verifies(tmp_path):
    """A log made by the previous release (schema steps 1 and 2): records 1..2 archived,
    the anchor written into meta directly, then the cut record 4."""
    path = tmp_path / "events.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for step in store.SCHEMA_STEPS[:2]:
        for statement in store._statements(step):
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    prev, hashes = record.GENESIS, {}
    for seq in range(1, 5):
        payload = ({"first": 1, "through": 2, "file": "events-1-2.jsonl.gz"} if seq == 4
                   else {"n": seq})
        if seq == 4:
            payload["head_hash"] = hashes[2].hex()
        fields = (seq, 1.7e9 + seq, "t", "h", 1, "log.archived" if seq == 4 else "x", None,
                  None, None, None, None, None, 1, msgpack.packb(payload), prev)
        prev = hashes[seq] = record.chain_hash(*fields)
        db.execute(store.INSERT_SQL, (*fields, prev))
    db.execute("INSERT INTO meta VALUES ('archived_through', '2')")
    db.execute("INSERT INTO meta VALUES ('anchor_hash', ?)", (hashes[2].hex(),))
    db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"4 {prev.hex()}",))
    db.execute("DELETE FROM events WHERE seq <= 2")
    db.close()
    with EventLog(path) as log:  # the writer migrates; the anchor stays
        assert log.db.execute("PRAGMA user_version").fetchone()[0] == store.DB_SCHEMA
        assert log.anchor() == (2, hashes[2])
        assert log.append(Event("new", "t")) == 5
        result = verify(log)
        assert result.ok and "records 1..2 are archived" in result.notes[0]
    assert "append-only" in subprocess.run(
        ["sqlite3", str(path), "UPDATE meta SET value = '3' WHERE key = 'archived_through'"],
        capture_output=True, text=True).stderr
