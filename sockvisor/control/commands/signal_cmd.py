"""`signal`: send a signal to a watcher's workers."""

from __future__ import annotations

import signal
from typing import Any

from sockvisor.control.commands.base import Command, bool_property, get_watcher, int_property
from sockvisor.control.protocol import CommandError


def parse_signal(value: Any) -> int:
    """A signal name (HUP, SIGUSR1) or number, from a client: strictly."""
    from sockvisor import wholenumber
    # A name starts with an ASCII letter (USR1 and USR2 have digits too).
    if isinstance(value, str) and value[:1].isascii() and value[:1].isalpha():
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__:
            return signal.Signals[name].value
        raise CommandError(f"unknown signal {wholenumber.show(value)}")
    try:
        number = wholenumber.parse(value, "a signal number")
    except ValueError as exc:
        raise CommandError(f"unknown signal: {exc}") from None
    if number in {s.value for s in signal.Signals}:
        return number
    raise CommandError(f"unknown signal number {number}")


class Signal(Command):
    """Send SIGNUM to every worker of NAME, or to one PID of it.

    sockvisorctl signal NAME [PID] SIGNUM [--group]

    SIGNUM is a name (HUP, SIGUSR1) or a number.  --group (Circus: children)
    signals each worker's whole process group.  Not queued: it is sent at once.
    On the group endpoint: only the signals NAME's `operator_signals` lists,
    unless the config grants `signal`.
    """
    name = "signal"
    # Which signals an operator may send depends on the watcher (its
    # `operator_signals`): `execute` checks that with access.check_signal.
    access = "operate"

    def add_arguments(self, parser):
        parser.add_argument("name", help="watcher")
        parser.add_argument("target", nargs="+", metavar="[PID] SIGNUM")
        parser.add_argument("--group", action="store_true",
                            help="signal each worker's whole process group")

    def properties(self, args):
        if len(args.target) > 2:
            raise SystemExit("sockvisorctl signal: expected NAME [PID] SIGNUM")
        props: dict[str, Any] = {"name": args.name, "signum": args.target[-1]}
        if len(args.target) == 2:
            from sockvisor import wholenumber
            try:
                props["pid"] = wholenumber.parse(args.target[0], "PID", low=1)
            except ValueError as exc:
                raise SystemExit(f"sockvisorctl signal: {exc}") from None
        if args.group:
            props["children"] = True
        return props

    async def execute(self, supervisor, props: dict[str, Any]) -> dict[str, Any]:
        from sockvisor.control import access
        watcher = get_watcher(supervisor, props)
        signum = parse_signal(props.get("signum"))
        access.check_signal(watcher, signum)
        pid = props.get("pid")
        if pid is not None:
            pid = int_property(props, "pid", minimum=1, what="the pid")
        group = bool_property(props, "children", False) or bool_property(
            props, "recursive", False)
        from sockvisor.hooks import HookFailed
        try:
            # Through Circus's before_signal/after_signal hooks, if it has any.
            sent = await watcher.send_signal_hooked(signum, pid, process_group=group)
        except (LookupError, HookFailed) as exc:
            raise CommandError(str(exc)) from None
        if not sent:
            # Nobody got it: say so (exit 1), rather than "sent to nobody", exit 0.
            raise CommandError(f"{watcher.name} has no running workers: "
                               f"{signal.Signals(signum).name} was not sent")
        return {"pids": sent, "signal": signal.Signals(signum).name}

    def format(self, reply):
        return f"{reply['signal']} sent to {', '.join(map(str, reply['pids']))}"


COMMAND = Signal()
