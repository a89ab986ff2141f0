"""The shipped systemd units (conf/) are valid and say what we mean.

`systemd-analyze verify` checks syntax, dependencies and that each Exec*=
binary exists.  sockvisor is not installed at /usr/local/bin on a CI machine,
so each unit is copied to tmp_path with those paths pointing at a stub
executable there; nothing else in the unit changes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sockvisor.config import WatcherConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
UNITS = ["sockvisor.service", "sockvisor.socket", "sockvisor@.service"]
BINARIES = re.compile(r"/usr/local/bin/(sockvisorctl|sockvisor)\b")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(unit: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values...]}} of a unit file (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (CONF / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{unit}: {line!r} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: str, section: str, key: str) -> str:
    values = directives(unit)[section].get(key)
    assert values and len(values) == 1, f"{unit}: [{section}] {key}= {values}"
    return values[0]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


# --------------------------------------------------------------------------- systemd-analyze

@pytest.fixture
def stubbed(tmp_path):
    """Copies of the units in tmp_path whose binaries are stub executables."""
    for name in ("sockvisor", "sockvisorctl"):
        stub = tmp_path / "bin" / name
        stub.parent.mkdir(exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for unit in UNITS:
        text = (CONF / unit).read_text()
        (tmp_path / unit).write_text(BINARIES.sub(lambda m: f"{tmp_path}/bin/{m.group(1)}", text))
    return tmp_path


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("units", [
    ["sockvisor.service"],
    ["sockvisor.socket", "sockvisor.service"],
    ["sockvisor@example.service"],     # a template is verified through an instance
])
def test_systemd_analyze_verify(stubbed, units):
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no",
                           *(str(stubbed / unit) for unit in units)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and unparsable values are only warnings (exit 0): fail on
    # any complaint about our units, while tolerating noise about the host's.
    ours = [line for line in proc.stderr.splitlines()
            if "sockvisor" in line or str(stubbed) in line]
    assert ours == [], proc.stderr


def test_stub_substitution_only_touches_the_binaries(stubbed):
    for unit in UNITS:
        original = (CONF / unit).read_text().splitlines()
        copy = (stubbed / unit).read_text().splitlines()
        changed = [(a, b) for a, b in zip(original, copy) if a != b]
        assert len(original) == len(copy)
        assert all(BINARIES.search(a) for a, _ in changed)
        assert any(line.startswith("ExecStart=") for line, _ in changed) == unit.endswith(".service")


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_records_how_to_verify_it(unit):
    head = (CONF / unit).read_text().splitlines()[:20]
    assert any("systemd-analyze verify" in line for line in head)


# --------------------------------------------------------------------------- what the units promise

@pytest.mark.parametrize("unit, conf", [
    ("sockvisor.service", "/etc/sockvisor/sockvisor.ini"),
    ("sockvisor@.service", "/etc/sockvisor/%i.ini"),
])
def test_service_contract(unit, conf):
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "ExecStart") == f"/usr/local/bin/sockvisor start {conf}"
    assert one(unit, "Service", "ExecReload") == \
        f"/usr/local/bin/sockvisorctl -c {conf} reloadconfig"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "WatchdogSec") == "30"
    assert int(one(unit, "Service", "FileDescriptorStoreMax")) >= 16
    # /run/sockvisor is sockvisor's own (root, 0755, a 0700 directory per config
    # inside), shared by every root unit: a RuntimeDirectory= would be removed at
    # one unit's stop and chowned to a User= drop-in's user at its start.
    assert not {key for key in directives(unit)["Service"]
                if key.startswith("RuntimeDirectory")}


@pytest.mark.parametrize("unit", ["sockvisor.service", "sockvisor@.service"])
def test_stop_timeout_leaves_room_for_graceful_stop(unit):
    graceful = next(f.default for f in dataclasses.fields(WatcherConfig)
                    if f.name == "graceful_timeout")
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= 2 * graceful


@pytest.mark.parametrize("unit", ["sockvisor.service", "sockvisor@.service"])
def test_hardening_keeps_what_sockvisor_needs(unit):
    caps = set(one(unit, "Service", "CapabilityBoundingSet").split())
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"} <= caps
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families
    # No User=: the plain service runs as root; see sockvisor.socket for the
    # socket-activated, unprivileged variant.
    assert "User" not in directives(unit)["Service"]


def test_socket_unit():
    assert one("sockvisor.socket", "Socket", "ListenStream") == "80"
    assert one("sockvisor.socket", "Socket", "Service") == "sockvisor.service"
    name = one("sockvisor.socket", "Socket", "FileDescriptorName")
    # It names a [socket:NAME] section, so it must be a valid section name.
    assert name == "web"
    assert re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", name)
