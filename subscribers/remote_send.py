"""``onestorpool remote-send``: send pending tombstones of deleted images to the remote
location (``REMOTE_BACKUP_DELETE``) — the replay of the ``remote_backup`` effects."""

from __future__ import annotations

import argparse

from onestorpool.eventlog import cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onestorpool remote-send",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", default=None, help="event log database")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be sent")
    args = parser.parse_args(argv)
    replay = ["replay", "--effect", "remote_backup"] + ([] if args.dry_run else ["--execute"])
    return cli.main((["--log", args.log] if args.log else []) + replay)
