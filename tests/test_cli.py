"""The ``onestorpool`` command as a new user meets it (issue 8 §5): one argparse tree with
help everywhere, usage errors exit 2, and a taken port is one clear line."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from onestorpool import __version__, cli

ONESTORPOOL = [sys.executable, "-m", "onestorpool.cli"]


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "ONESTORPOOL_"))}
    return subprocess.run([*ONESTORPOOL, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_no_arguments_is_a_usage_error():
    result = run()
    assert result.returncode == 2 and "usage: onestorpool" in result.stderr


def test_version_is_listed_and_printed():
    assert run("--version").stdout == f"onestorpool {__version__}\n"
    assert "--version" in run("--help").stdout


@pytest.mark.parametrize("argv", [["--help"], ["sandbox", "--help"], ["sandbox", "up", "--help"],
                                  ["sandbox", "down", "--help"], ["sandbox", "oned", "--help"],
                                  ["sandbox", "storpool", "--help"], ["log", "--help"],
                                  ["config", "--help"], ["remote-send", "--help"]])
def test_every_command_has_help(argv):
    result = run(*argv)
    assert result.returncode == 0 and result.stdout.startswith("usage: onestorpool"), \
        result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("argv", [["sandbox"], ["sandbox", "bogus"], ["bogus"],
                                  ["sandbox", "up"], ["config", "--datastore", "x"]])
def test_mistakes_are_usage_errors(argv):
    result = run(*argv)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_one_version_accepts_only_the_releases_the_sandbox_emulates(tmp_path):
    result = run("sandbox", "up", "--dir", str(tmp_path / "sb"), "--one-version", "9.9")
    assert result.returncode == 2 and "invalid choice: '9.9'" in result.stderr
    assert not (tmp_path / "sb").exists()
    help_text = run("sandbox", "up", "--help").stdout
    assert "5.12" in help_text and "7.0" in help_text and "default: 6.10" in " ".join(
        help_text.split())


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _undocumented(sub, f"{path} {name}")
        elif not action.help:
            found.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    return found


def test_every_option_of_the_tree_has_help():
    undocumented = []
    for command in cli.COMMANDS:
        if cli._configurable(command):  # the others parse their own arguments (run above)
            undocumented += _undocumented(cli.build_parser(list(command.words)), "onestorpool")
    assert sorted(set(undocumented)) == []


def test_a_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("sandbox", "oned", "--dir", str(tmp_path), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"ERROR: onestorpool sandbox oned: address already in use (--port {port}): stop "
        "what listens there or choose another"]


# -- onestorpool log ------------------------------------------------------------------------------


@pytest.fixture
def event_log(tmp_path):
    from onestorpool.eventlog import Event, EventLog

    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append(Event("ds.cp", "ds/cp", {"created": ["one-img-1"]}, image=1, datastore=100))
        log.append(Event("ds.rm", "ds/rm", {"removed": ["one-img-1"]}, image=1))
    return path


def test_log_takes_log_before_or_after_the_command(event_log):
    before = run("log", "--log", str(event_log), "show")
    after = run("log", "show", "--log", str(event_log))
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout and len(after.stdout.splitlines()) == 2


def test_log_without_a_log_names_the_ways_to_give_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONE_", "ONESTORPOOL_"))}
    result = subprocess.run([*ONESTORPOOL, "log", "show"], capture_output=True, text=True,
                            timeout=60, env={**env, "ONESTORPOOL_ROOT": str(tmp_path)})
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert f"no event log at {tmp_path}/var/lib/one/onestorpool/events.db (default)" in line
    assert "--log PATH" in line and "ONESTORPOOL_EVENTLOG" in line and "EVENT_LOG" in line


def test_log_show_is_a_table_in_utc_or_json(event_log):
    rows = run("log", "show", "--log", str(event_log)).stdout.splitlines()
    assert re.fullmatch(r"\s+1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ds\.cp\s+image=1 ds=100\s+"
                        r"\{\"created\": \[\"one-img-1\"\]\} \[ds/cp\]", rows[0]), rows[0]
    assert rows[0].index("{") == rows[1].index("{")  # the details line up
    as_json = [json.loads(line) for line in
               run("log", "show", "--json", "--log", str(event_log)).stdout.splitlines()]
    assert [r["type"] for r in as_json] == ["ds.cp", "ds.rm"]
    assert "Times are UTC" in " ".join(run("log", "--help").stdout.split())
    # on a terminal, a header names the columns (and says UTC)
    leader, follower = pty.openpty()
    try:
        subprocess.run([*ONESTORPOOL, "log", "show", "--log", str(event_log)], stdout=follower,
                       timeout=60, check=True)
        out = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert out.splitlines()[0].split()[:4] == ["SEQ", "TIME", "(UTC)", "TYPE"]


def test_log_tail_follow_ends_quietly_on_ctrl_c(event_log):
    follower = subprocess.Popen([*ONESTORPOOL, "log", "tail", "-f", "--interval", "0.1",
                                 "--log", str(event_log)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    assert "ds.rm" in follower.stdout.readline() + follower.stdout.readline()
    time.sleep(0.3)
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert (follower.returncode, err) == (0, "")


def test_log_stats_dates_say_utc(event_log):
    out = run("log", "stats", "--log", str(event_log)).stdout
    assert next(line for line in out.splitlines() if "ds.cp" in line).endswith(" (UTC)")


def test_a_storpool_sandbox_port_in_use_names_the_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("sandbox", "storpool", "--port", str(port), "--data", str(tmp_path / "d"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"ERROR: cannot start the StorPool sandbox: 127.0.0.1:{port}"
                                      " is already in use (--port)")
