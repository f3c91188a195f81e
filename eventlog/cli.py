"""``onestorpool log``: audit, verify, export, replay and archive the event log."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from onestorpool.config import DEFAULT_EVENT_LOG
from onestorpool.errors import InputError
from onestorpool.eventlog.record import Record, to_json_value
from onestorpool.eventlog.store import EventLog, EventLogError

SUBJECTS = ("vm", "image", "datastore", "volume", "snapshot")


def parse_since(text: str) -> float:
    """``2026-11-24T10:00``, ``2026-11-24``, or relative ``90s``/``15m``/``2h``/``3d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date or N[s|m|h|d], got {text!r}"
                                         ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``SEQ:HASH`` as ``stats`` prints the head."""
    seq, _, digest = text.partition(":")
    try:
        anchor = int(seq), bytes.fromhex(digest)
    except ValueError:
        anchor = (0, b"")
    if len(anchor[1]) != 32:  # SHA-256
        raise argparse.ArgumentTypeError(f"expected SEQ:HASH (64 hex digits), got {text!r}")
    return anchor


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vm", type=int, help="records about this VM")
    parser.add_argument("--image", type=int, help="records about this image")
    parser.add_argument("--datastore", type=int, help="records about this datastore")
    parser.add_argument("--volume", help="records about this StorPool volume")
    parser.add_argument("--snapshot", help="records about this StorPool snapshot")
    parser.add_argument("--type", action="append", dest="types", metavar="TYPE",
                        help="event type, repeatable")
    parser.add_argument("--since", type=parse_since, metavar="WHEN",
                        help="a date (UTC unless given) or an age: 90s, 15m, 2h, 3d")
    parser.add_argument("--from-seq", type=int, default=0, metavar="SEQ",
                        help="records after this sequence number")
    parser.add_argument("--failed", action="store_true",
                        help="failed actions and effects only")


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.types or args.since or args.failed
                or any(getattr(args, s) is not None for s in SUBJECTS))


def _select(log: EventLog, args: argparse.Namespace, *, since_seq: int | None = None,
            until_seq: int | None = None, follow: bool = False) -> Iterator[Record]:
    subjects = {s: getattr(args, s) for s in SUBJECTS}
    start = args.from_seq if since_seq is None else since_seq
    if follow:
        records = log.iterate(since_seq=start, follow=True, interval=args.interval,
                              since_time=args.since, types=args.types, **subjects)
    else:
        records = log.read(since_seq=start, until_seq=until_seq, since_time=args.since,
                           types=args.types, **subjects)
    if args.failed:
        return (r for r in records if r.type.endswith(".failed") or "error" in r.payload)
    return records


# show's and tail's columns; times are UTC and say so (the Z)
HEADER = f"{'SEQ':>8} {'TIME (UTC)':<20} {'TYPE':<22} {'SUBJECTS':<28} DETAILS [WRITER]"


def _line(record: Record) -> str:
    when = datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    subjects = " ".join(f"{name}={value}" for name, value in (
        ("vm", record.vm), ("image", record.image), ("ds", record.datastore),
        ("volume", record.volume), ("snapshot", record.snapshot)) if value is not None)
    subjects = f"{subjects:<28}"
    payload = json.dumps(to_json_value(record.payload), sort_keys=True, allow_nan=False)
    return f"{record.seq:>8} {when} {record.type:<22} {subjects} {payload} [{record.writer}]"


def cmd_show(log: EventLog, args: argparse.Namespace) -> int:
    if args.json:
        return cmd_export(log, args)
    if sys.stdout.isatty():  # a header for people; bare rows for scripts and pipes
        print(HEADER)
    for record in _select(log, args):
        print(_line(record))
    return 0


def cmd_tail(log: EventLog, args: argparse.Namespace) -> int:
    top = log.head()[0]
    # Unfiltered, the last N records are the last N sequence numbers; filtered, the last N
    # that match (which means reading the matches, through their index).
    start = args.from_seq if _filtered(args) else max(args.from_seq, top - args.lines)
    last = collections.deque(_select(log, args, since_seq=start, until_seq=top),
                             maxlen=max(args.lines, 0))
    for record in last:
        print(_line(record), flush=True)
    if args.follow:
        try:
            for record in _select(log, args, since_seq=top, follow=True):
                print(_line(record), flush=True)
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how one stops following: no message, no error
    return 0


def cmd_verify(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.anchor import read_anchors
    from onestorpool.eventlog.verify import verify

    anchors = list(args.anchor or ())
    for path in args.anchors or ():
        anchors.extend(read_anchors(Path(path)))
    archives = None if args.archive is None else [Path(a) for a in args.archive]
    result = verify(log, anchors=anchors, archives=archives,
                    find_archives=not args.no_archives)
    for note in result.notes:
        print(note)
    if result.ok:
        print(f"ok: {result.checked} records, chain head {result.head_seq}:{result.head}")
        return 0
    where = "" if result.first_bad is None else f" at record {result.first_bad}"
    print(f"FAILED{where}: {result.reason}")
    return 1


def cmd_export(log: EventLog, args: argparse.Namespace) -> int:
    write = sys.stdout.write
    for record in _select(log, args):
        write(json.dumps(record.to_json(), sort_keys=True, allow_nan=False) + "\n")
    return 0


def cmd_stats(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.projections import pending_effects

    rows = log.db.execute("SELECT type, COUNT(*), MIN(time), MAX(time) FROM events "
                          "GROUP BY type ORDER BY type").fetchall()
    seq, head = log.head()
    archived, _ = log.anchor()
    print(f"records: {log.count()} live (archived through {archived}), last seq {seq}")
    print(f"chain head: {seq}:{head.hex()}")
    print(f"effects: {len(log.done_keys())} done, {len(pending_effects(log))} pending")
    for event_type, count, first, last in rows:
        print(f"  {event_type:<24} {count:>9}  "
              f"{datetime.fromtimestamp(first, UTC):%Y-%m-%d} .. "
              f"{datetime.fromtimestamp(last, UTC):%Y-%m-%d} (UTC)")
    return 0


def cmd_pending(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.projections import pending_effects

    for pending in pending_effects(log, effect_type=args.effect):
        print(f"{pending.key}  {pending.type}  requested by #{pending.requested_by.seq}"
              f"  failures={pending.failures} {pending.last_error}".rstrip())
    return 0


def cmd_objects(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.projections import believed_objects

    for name, info in sorted(believed_objects(log).items()):
        print(f"{name:<40} #{info['seq']} {info['event']}")
    return 0


def cmd_replay(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog import replay

    outcomes = replay.replay(log, since_seq=args.from_seq, dry_run=not args.execute,
                             effect_type=args.effect)
    for outcome in outcomes:
        print(f"{outcome.status:<10} {outcome.effect_type:<16} {outcome.key}  "
              f"#{outcome.request_seq}  {outcome.detail}".rstrip())
    if not outcomes:
        print("nothing to do: every requested effect is done")
    return 1 if any(o.status in ("failed", "no-handler") for o in outcomes) else 0


def cmd_archive(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool.eventlog.archive import archive

    if args.through is None and args.older_than_days is None:
        raise InputError("archive: give --older-than-days or --through")
    result = archive(log, Path(args.dir), through_seq=args.through,
                     older_than=None if args.older_than_days is None
                     else args.older_than_days * 86400)
    if result is None:
        print("nothing to archive")
    else:
        print(f"archived records {result.first}..{result.through} ({result.count}) "
              f"to {result.path}")
    return 0


def cmd_checkpoint(log: EventLog, args: argparse.Namespace) -> int:
    from onestorpool import config
    from onestorpool.eventlog.anchor import checkpoint, configured_target

    settings = None
    file, volume = args.file, args.volume
    if file is None and volume is None:
        settings = config.load()
        file, volume = configured_target(settings.values.get("EVENT_LOG_ANCHOR") or "")
    client = None
    if volume:
        from onestorpool.storpool import StorPoolClient

        client = StorPoolClient.from_config(settings or config.load())
    point = checkpoint(log, file=None if file is None else Path(file), volume=volume,
                       client=client, syslog=not args.no_syslog)
    print(point.line)
    return 0


DESCRIPTION = "Audit, verify, export and replay the add-on's event log. Times are UTC."
LOG_HELP = ("the event log database, before or after the command (default: "
            "$ONESTORPOOL_EVENTLOG, else EVENT_LOG of addon-storpoolrc, else "
            f"{DEFAULT_EVENT_LOG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestorpool log",
                                     description=DESCRIPTION)
    _add_commands(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Fill ``onestorpool log`` in the ``onestorpool`` command tree."""
    parser.description = DESCRIPTION
    _add_commands(parser)
    parser.set_defaults(run=run)


def _add_commands(parser: argparse.ArgumentParser) -> None:
    # --log is accepted before or after the command (SUPPRESS: the later one, if given, wins).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log", default=argparse.SUPPRESS, metavar="PATH", help=LOG_HELP)
    parser.add_argument("--log", default=argparse.SUPPRESS, metavar="PATH", help=LOG_HELP)
    sub = parser.add_subparsers(dest="log_command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    show = command("show", "print records as a table (times in UTC), or as JSON")
    _filters(show)
    show.add_argument("--json", action="store_true",
                      help="one JSON object per line, as 'export' writes them")
    tail = command("tail", "print the last records; -f to follow")
    _filters(tail)
    tail.add_argument("-n", "--lines", type=int, default=20,
                      help="how many records (default: %(default)s)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new records until Ctrl-C")
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    verify = command("verify", "check the database and the hash chain (exit 1 at the first "
                               "bad record)")
    verify.add_argument("--archives", "--archive", action="append", dest="archive",
                        metavar="PATH", help="the archives (a directory, or files): they must "
                                             "be one chain from record 1 to the live log")
    verify.add_argument("--no-archives", action="store_true",
                        help="do not look for the archives where the log says they are")
    verify.add_argument("--expect-head", "--anchor", action="append", dest="anchor",
                        type=parse_anchor, metavar="SEQ:HASH",
                        help="a chain head recorded earlier (checkpoint, stats); repeatable")
    verify.add_argument("--anchors", action="append", metavar="FILE",
                        help="a file of heads recorded earlier (every SEQ:HASH in it)")
    export = command("export", "print records as JSON lines")
    _filters(export)
    export.add_argument("--format", choices=["jsonl"], default="jsonl",
                        help="JSON lines, one record each (the only format)")
    command("stats", "counts per type, effects, chain head")
    pending = command("pending", "side effects requested and not done")
    pending.add_argument("--effect", help="only this effect type")
    command("objects", "StorPool objects the log says exist")
    replay = command("replay", "run the requested effects not done yet (a dry run unless "
                               "--execute)")
    replay.add_argument("--from-seq", type=int, default=0, metavar="SEQ",
                        help="effects requested after this sequence number")
    replay.add_argument("--effect", help="only this effect type")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True,
                      help="list what would run (the default)")
    mode.add_argument("--execute", action="store_true", help="perform the effects")
    point = command("checkpoint", "append a checkpoint and publish its SEQ:HASH (syslog, "
                                  "and a file or a StorPool volume tag)")
    point.add_argument("--file", metavar="PATH", help="append the checkpoint line here")
    point.add_argument("--volume", metavar="NAME",
                       help="set this StorPool volume's 'eventlog' tag to SEQ:HASH")
    point.add_argument("--no-syslog", action="store_true", help="do not log to syslog")
    archive = command("archive", "move old records to a .jsonl.gz archive")
    archive.add_argument("--dir", required=True, help="where archives go")
    archive.add_argument("--older-than-days", type=float, help="archive records this old")
    archive.add_argument("--through", type=int, metavar="SEQ",
                         help="archive up to this sequence number")


COMMANDS = {"show": cmd_show, "tail": cmd_tail, "verify": cmd_verify, "export": cmd_export,
            "stats": cmd_stats, "pending": cmd_pending, "objects": cmd_objects,
            "replay": cmd_replay, "archive": cmd_archive, "checkpoint": cmd_checkpoint}
READ_ONLY = {"show", "tail", "verify", "export", "stats", "pending", "objects"}


def main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    path = getattr(args, "log", None)
    if path is None:
        from onestorpool.config import event_log_origin  # the one place paths are resolved

        path, origin = event_log_origin()
        if not Path(path).exists():
            raise EventLogError(f"no event log at {path} ({origin}): name it with --log "
                                "PATH, or set ONESTORPOOL_EVENTLOG, or EVENT_LOG in "
                                "addon-storpoolrc")
    if not Path(path).exists():
        raise EventLogError(f"no event log at {path}")
    name = args.log_command
    readonly = name in READ_ONLY or (name == "replay" and not args.execute)
    with EventLog(path, readonly=readonly) as log:
        return COMMANDS[name](log, args)
