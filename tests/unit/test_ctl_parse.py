"""sockvisorctl's command line: where its own options may go, and what `add` takes.

Pure argument parsing; the end-to-end behaviour is in test_control_ctl.py.
"""

from __future__ import annotations

import pytest

from sockvisor.cli.ctl import build_parser
from sockvisor.control.commands import load_commands

pytestmark = pytest.mark.timeout(10)

COMMANDS = load_commands()
PARSER = build_parser(COMMANDS)


def parse(*argv: str):
    return PARSER.parse_args(list(argv))


def test_own_options_before_or_after_the_command():
    after = parse("status", "web", "--json", "--timeout", "5", "--endpoint", "ipc:///x")
    assert (after.json, after.timeout, after.endpoint, after.name) == (
        True, 5.0, "ipc:///x", "web")
    # Given before, not undone by the command's parser.
    before = parse("--json", "--endpoint", "ipc:///x", "status")
    assert (before.json, before.endpoint) == (True, "ipc:///x")
    plain = parse("status")
    assert (plain.json, plain.endpoint, plain.timeout) == (False, None, None)


def test_add_takes_the_whole_command_line_after_the_name():
    args = parse("--endpoint", "ipc:///x", "add", "--start", "web",
                 "sh", "-c", "exec server --port 8080", "--json", "--timeout", "3")
    assert COMMANDS["add"].properties(args) == {
        "name": "web", "cmd": "sh -c 'exec server --port 8080' --json --timeout 3",
        "start": True}
    assert (args.json, args.timeout) == (False, None)     # they belong to the command


def test_add_without_a_command_is_a_usage_error():
    with pytest.raises(ValueError, match="CMD is required"):
        COMMANDS["add"].properties(parse("add", "web"))
