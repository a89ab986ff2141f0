"""`signal`'s parser: every name the platform has, with or without SIG, any case;
numbers strictly (no odd digits); anything else a clear CommandError."""

import signal

import pytest

from sockvisor.control.commands.signal_cmd import parse_signal
from sockvisor.control.protocol import CommandError


@pytest.mark.parametrize("member", list(signal.Signals), ids=lambda s: s.name)
def test_every_signal_name_parses(member):
    bare = member.name[len("SIG"):]
    for spelling in (member.name, bare, bare.lower()):
        assert parse_signal(spelling) == member.value


@pytest.mark.parametrize("value", ["USR3", "SIGFOO", "1USR", "²", "١٢", "", True, 1.5,
                                   None, "9" * 5000])
def test_anything_else_is_a_command_error(value):
    with pytest.raises(CommandError):
        parse_signal(value)
