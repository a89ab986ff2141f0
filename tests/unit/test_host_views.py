"""The supervisor provides every member of the narrow views others are handed.

Commands, the control server and the console see the supervisor as
`sockvisor.control.host.Host`; reloadconfig's applier as
`sockvisor.reconfigure.apply.Host`.  Both are typing Protocols, which nothing
checks at run time: a member renamed in the supervisor would only fail when a
command used it.  This test checks each member exists on a real Supervisor.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Protocol

import pytest

from sockvisor import config as config_module
from sockvisor.control.host import Host as ControlHost
from sockvisor.reconfigure.apply import Host as ReconfigureHost
from sockvisor.supervisor import Supervisor


def members(protocol: type[Protocol]) -> set[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    return names


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    path = tmp_path / "sockvisor.ini"
    path.write_text(textwrap.dedent("""
        [sockvisor]
        [watcher:w]
        cmd = /bin/true
    """))
    return Supervisor(config_module.load(path))


@pytest.mark.parametrize("view", [ControlHost, ReconfigureHost],
                         ids=["control", "reconfigure"])
def test_the_supervisor_has_every_member_of_the_view(supervisor, view):
    assert members(view), "the view names nothing?"
    missing = sorted(name for name in members(view) if not hasattr(supervisor, name))
    assert not missing, f"{view.__module__}.Host names what Supervisor lacks: {missing}"
