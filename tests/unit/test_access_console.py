"""The web console's rights (access.console): a fixed set, whatever the config
grants the endpoint group -- an operator's `operate` plus `stop` and `signal`,
with the operator's scaling maximum, never `secrets`, `quit`, `rm` or `scale`.
Checked against the real command registry and access.authorize."""

from __future__ import annotations

import pytest

from sockvisor.config import ENDPOINT_GROUP_GRANTS, GlobalConfig
from sockvisor.control import access
from sockvisor.control.commands import load_commands
from sockvisor.control.protocol import CommandError, ErrNo

EVERY_GRANT = frozenset(ENDPOINT_GROUP_GRANTS)


@pytest.mark.parametrize("grants", [frozenset(), EVERY_GRANT, frozenset({"secrets", "rm"})])
def test_console_rights_do_not_follow_the_groups_grants(grants):
    globals_ = GlobalConfig(endpoint_group=12345, endpoint_group_grants=grants,
                            endpoint_group_max_numprocesses=7)
    caller = access.console(globals_)
    assert not caller.owner
    assert caller.grants == {"stop", "signal"} == access.CONSOLE_GRANTS
    assert caller.max_numprocesses == access.operator(globals_).max_numprocesses == 7

    commands = load_commands()
    for name, props in (("quit", {}), ("rm", {"name": "web"}), ("add", {"name": "x"}),
                        ("set", {"name": "web", "options": {"cmd": "/bin/sh"}}),
                        ("console-token", {})):
        with pytest.raises(CommandError) as refused:
            access.authorize(commands[name], props, caller)
        assert refused.value.errno == ErrNo.FORBIDDEN, name
    for name, props in (("stop", {"name": "web"}), ("reload", {"name": "web"}),
                        ("signal", {"name": "web", "signum": "TERM"}),
                        ("signal", {"name": "web", "signum": "KILL"}),
                        ("status", {}), ("logs", {"name": "web"})):
        access.authorize(commands[name], props, caller)

    # No `secrets`: env values are redacted, as for an operator without the grant.
    shown = access.redact({"options": {"env": {"DB_PASSWORD": "hunter2"}}}, caller)
    assert shown["options"]["env"] == {"DB_PASSWORD": access.REDACTED}
    # No `scale`: the operator's maximum holds; `stop` allows scaling to 0.
    with pytest.raises(CommandError):
        access.check_count(caller, "web", 2, 8)
    access.check_count(caller, "web", 2, 7)
    access.check_count(caller, "web", 2, 0)


def test_console_default_maximum_is_the_operators():
    globals_ = GlobalConfig(endpoint_group_grants=EVERY_GRANT)
    assert access.console(globals_).max_numprocesses == \
        access.operator(globals_).max_numprocesses > 0
