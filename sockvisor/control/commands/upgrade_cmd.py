"""`upgrade`: re-execute sockvisor in place with the installed code (upgrade.py)."""

from __future__ import annotations

import sys
import time
from typing import Any

from sockvisor.control.commands.base import Command
from sockvisor.control.protocol import CommandError, ErrNo

POLL = 0.5   # seconds per attempt to hear from the upgraded sockvisor


class Upgrade(Command):
    """Upgrade sockvisor itself in place: same pid, every worker kept.

    sockvisorctl upgrade [--no-wait]

    The installed sockvisor is first run as a pre-flight (it must import, read
    the config and the running state); if that fails, nothing changes and the
    command fails with the reason.  Otherwise sockvisor execs the new code in
    its own process: no worker is restarted, the sockets stay open, and the
    control channel comes back on the same endpoint.  sockvisorctl waits for
    it and prints the old and new version, the gap and the workers kept.
    Refused while a command, a reload or a stop is under way.  (SIGUSR2 to
    sockvisor does the same.)
    """
    name = "upgrade"
    long_running = True

    def add_arguments(self, parser):
        parser.add_argument("--no-wait", dest="follow", action="store_false",
                            help="return once the exec is under way")
        parser.set_defaults(follow=True)

    def properties(self, args):
        return {}

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        if props.get("result"):
            return {"last_upgrade": supervisor.last_upgrade, "upgrades": supervisor.upgrades}
        import asyncio
        from sockvisor.upgrade import UpgradeRefused
        try:
            # The exec waits for this very task: the one that sends the reply.
            return await supervisor.upgrade(after=asyncio.current_task())
        except UpgradeRefused as exc:
            raise CommandError(str(exc), ErrNo.COMMAND_ERROR) from None

    def format(self, reply):
        if "last_upgrade" in reply:
            return _describe(reply["last_upgrade"])
        return (f"sockvisor {reply['from']} (pid {reply['pid']}): pre-flight passed, "
                f"upgrading with {reply['workers']} workers")

    def follow(self, client, props: dict[str, Any], reply: dict[str, Any],
               timeout: float, as_json: bool = False) -> int:
        """Ask the upgraded sockvisor how it went (retrying through the gap)."""
        import json
        from sockvisor.control.client import Unreachable
        asked = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                answer = client.call(self.name, {"result": True}, timeout=POLL)
            except Unreachable:
                continue
            done = answer.get("last_upgrade") or {}
            if answer.get("upgrades", 0) > reply["upgrades"] and done:
                print(json.dumps(done) if as_json else _describe(done), flush=True)
                return 0
            failed = done.get("failed_attempt")
            if failed and failed["at"] >= asked - 1:
                print(f"sockvisorctl upgrade: not upgraded: {failed['reason']}",
                      file=sys.stderr)
                return 1
            time.sleep(0.05)   # the old process is still closing: ask again shortly
        print(f"sockvisorctl upgrade: no word from the upgraded sockvisor within "
              f"{timeout:g}s", file=sys.stderr)
        return 1


def _describe(done: dict[str, Any] | None) -> str:
    if not done:
        return "never upgraded"
    return (f"sockvisor {done['from']} -> {done['to']}: upgraded in place, gap "
            f"{done['gap_ms']:.0f} ms, {done['workers']} workers kept")


COMMAND = Upgrade()
