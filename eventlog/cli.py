"""``onestorpool log``: audit, verify, export, replay and archive the event log."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from onestorpool.eventlog import default_path
from onestorpool.eventlog.record import Record
from onestorpool.eventlog.store import EventLog, EventLogError


def parse_since(text: str) -> float:
    """``2026-11-24T10:00``, ``2026-11-24``, or relative ``90s``/``15m``/``2h``/``3d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1] in units:
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since: expected a date or N[s|m|h|d], "
                                         f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", type=int)
    parser.add_argument("--image", type=int)
    parser.add_argument("--datastore", type=int)
    parser.add_argument("--volume")
    parser.add_argument("--type", action="append", dest="types", help="repeatable")
    parser.add_argument("--since", type=parse_since)
    parser.add_argument("--from-seq", type=int, default=0, help="records after this number")
    parser.add_argument("--failed", action="store_true", help="failed actions only")


def _select(log: EventLog, args: argparse.Namespace, since_seq: int | None = None):
    records = log.read(since_seq=args.from_seq if since_seq is None else since_seq,
                       since_time=args.since, types=args.types, vm=args.vm,
                       image=args.image, datastore=args.datastore, volume=args.volume)
    if args.failed:
        records = (r for r in records if r.type.endswith(".failed") or "error" in r.payload)
    return records


def _line(record: Record) -> str:
    when = datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
    subjects = " ".join(f"{k}={v}" for k, v in (("vm", record.vm), ("image", record.image),
                                                 ("ds", record.datastore),
                                                 ("volume", record.volume)) if v is not None)
    payload = json.dumps(record.payload, sort_keys=True, default=str)
    return f"{record.seq:>8} {when} {record.type:<22} {subjects} {payload} [{record.writer}]"


def cmd_show(log: EventLog, args: argparse.Namespace) -> int:
    for record in _select(log, args):
        print(_line(record))
    return 0


def cmd_tail(log: EventLog, args: argparse.Namespace) -> int:
    last = max(0, log.head()[0] - args.lines)
    while True:
        for record in _select(log, args, since_seq=last):
            print(_line(record), flush=True)
            last = record.seq
        if not args.follow:
            return 0
        time.sleep(args.interval)


def cmd_verify(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.archive import verify_archive
    from onestorpool.eventlog.verify import verify

    status = 0
    for archive in args.archive or ():
        ok, message = verify_archive(Path(archive), log)
        print(message if ok else f"FAILED: {message}")
        status |= 0 if ok else 1
    result = verify(log)
    if result.ok:
        print(f"ok: {result.checked} records, chain head {result.head}")
    else:
        print(f"FAILED at record {result.first_bad}: {result.reason}")
        status = 1
    return status


def cmd_export(log: EventLog, args: argparse.Namespace) -> int:
    out = sys.stdout
    for record in _select(log, args):
        out.write(json.dumps(record.to_json(), sort_keys=True, default=str) + "\n")
    return 0


def cmd_stats(log: EventLog, args: argparse.Namespace) -> int:
    rows = log.db.execute("SELECT type, COUNT(*), MIN(time), MAX(time) FROM events "
                          "GROUP BY type ORDER BY type").fetchall()
    seq, head = log.head()
    archived, _ = log.anchor()
    print(f"records: {log.count()} (archived through {archived}), last seq {seq}")
    print(f"chain head: {head.hex()}")
    print(f"effects done: {len(log.done_keys())}")
    for event_type, count, first, last in rows:
        print(f"  {event_type:<24} {count:>8}  "
              f"{datetime.fromtimestamp(first, UTC):%Y-%m-%d} .. "
              f"{datetime.fromtimestamp(last, UTC):%Y-%m-%d}")
    return 0


def cmd_pending(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.projections import pending_effects

    for pending in pending_effects(log, effect_type=args.effect):
        print(f"{pending.key}  {pending.type}  requested by #{pending.requested_by.seq}"
              f"  failures={pending.failures} {pending.last_error}")
    return 0


def cmd_objects(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.projections import believed_objects

    for name, info in sorted(believed_objects(log).items()):
        print(f"{name:<40} #{info['seq']} {info['event']}")
    return 0


def cmd_replay(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog import replay

    replay.load_handlers()
    outcomes = replay.replay(log, since_seq=args.from_seq, dry_run=not args.execute,
                             effect_type=args.effect)
    for outcome in outcomes:
        print(f"{outcome.status:<10} {outcome.effect_type:<16} {outcome.key}  {outcome.detail}")
    if not outcomes:
        print("nothing to do: every requested effect is done")
    return 1 if any(o.status in ("failed", "no-handler") for o in outcomes) else 0


def cmd_archive(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.archive import archive

    result = archive(log, Path(args.dir), older_than=args.older_than_days * 86400
                     if args.through is None else None, through_seq=args.through)
    if result is None:
        print("nothing to archive")
    else:
        print(f"archived records {result.first}..{result.through} ({result.count}) "
              f"to {result.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestorpool log",
                                     description="Audit and replay the add-on's event log.")
    parser.add_argument("--log", default=None, help=f"database (default {default_path()})")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print records")
    _filters(show)
    tail = sub.add_parser("tail", help="print the last records, -f to follow")
    _filters(tail)
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=1.0)
    verify = sub.add_parser("verify", help="check the hash chain and the database")
    verify.add_argument("--archive", action="append", help="also verify an archive file")
    export = sub.add_parser("export", help="records as JSON lines")
    _filters(export)
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    sub.add_parser("stats", help="counts per type, chain head")
    pending = sub.add_parser("pending", help="side effects requested and not done")
    pending.add_argument("--effect", help="only this effect type")
    sub.add_parser("objects", help="StorPool objects the log says exist")
    replay = sub.add_parser("replay", help="run requested effects not done yet "
                                           "(dry run unless --execute)")
    replay.add_argument("--from-seq", type=int, default=0)
    replay.add_argument("--effect", help="only this effect type")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True, help="(default)")
    mode.add_argument("--execute", action="store_true", help="perform the effects")
    archive = sub.add_parser("archive", help="move old records to a .jsonl.gz archive")
    archive.add_argument("--dir", required=True)
    archive.add_argument("--older-than-days", type=float, default=90)
    archive.add_argument("--through", type=int, help="archive up to this sequence number")
    return parser


COMMANDS = {"show": cmd_show, "tail": cmd_tail, "verify": cmd_verify, "export": cmd_export,
            "stats": cmd_stats, "pending": cmd_pending, "objects": cmd_objects,
            "replay": cmd_replay, "archive": cmd_archive}
READ_ONLY = {"show", "tail", "verify", "export", "stats", "pending", "objects"}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = args.log or default_path()
    if not Path(path).exists():
        raise EventLogError(f"no event log at {path}")
    with EventLog(path, readonly=args.command in READ_ONLY) as log:
        return COMMANDS[args.command](log, args)
