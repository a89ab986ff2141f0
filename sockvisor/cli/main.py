"""The `sockvisor` command: `start` runs the supervisor, `check` validates a config.

Both load the config and then ask, as each watcher's user, whether its worker
could start at all (preflight.py: working_dir, the program, a `-m` module);
`start` does so before it binds anything.

Exit status: 0 stopped cleanly, 1 failed while running, 2 bad config or usage
(nothing was bound or spawned), 3 a socket or the control endpoint could not be
opened, 4 a watcher could not start (it went FATAL during start-up, with
`[sockvisor] start_failure = exit`, the default; nothing is left running).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from sockvisor import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockvisor",
        description="Hold listening sockets and supervise the workers that serve them.")
    parser.add_argument("--version", action="version", version=f"sockvisor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser("start", help="run the supervisor in the foreground")
    start.add_argument("config", help="the INI file")
    start.add_argument("--log-level", default=None,
                       help="override [sockvisor] loglevel (debug, info, warning, error)")
    start.add_argument("--resume", type=int, default=None, metavar="FD",
                       help=argparse.SUPPRESS)   # exec'd by an upgrade (upgrade.py)
    check = commands.add_parser("check", help="validate a config without binding or spawning")
    check.add_argument("config", help="the INI file")
    upgrade_check = commands.add_parser(
        "upgrade-check", help="the pre-flight of an upgrade: can this version resume "
                              "the state on --state-fd?")
    upgrade_check.add_argument("config", help="the INI file")
    upgrade_check.add_argument("--state-fd", type=int, required=True, metavar="FD")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sockvisor import config as config_module
    from sockvisor import log
    if args.command == "upgrade-check":
        from sockvisor import upgrade
        return upgrade.check_main(args.config, args.state_fd)
    if args.command == "start" and args.resume is not None:
        return _resume(args)

    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"sockvisor: {exc}", file=sys.stderr)
        return 2
    # As each worker's user (preflight.py): before anything is bound or spawned.
    from sockvisor import preflight
    try:
        problems = asyncio.run(preflight.check(config))
    except config_module.ConfigError as exc:   # the probe itself could not run
        problems = [exc]
    if problems:
        for problem in problems:
            print(f"sockvisor: {problem}", file=sys.stderr)
        return 2
    if args.command == "check":
        for warning in config.warnings:
            print(f"sockvisor: warning: {warning}", file=sys.stderr)
        print(f"{config.path}: OK ({len(config.sockets)} sockets, "
              f"{len(config.watchers)} watchers)")
        return 0
    problem = _setup_log(args, config)
    if problem is not None:
        print(f"sockvisor: {config.path}: {problem}", file=sys.stderr)
        return 2
    from sockvisor import fdlimit
    fdlimit.raise_own()   # two pipe fds per worker (fdlimit.py)
    from sockvisor.supervisor import Supervisor
    try:
        return asyncio.run(Supervisor(config).run())
    finally:
        log.close()   # loggerconfig's handlers write out what is queued


def _setup_log(args: argparse.Namespace, config) -> str | None:
    """sockvisor's own log as the config says: Circus's `loggerconfig` file, or
    loglevel and logoutput (log.py).  Returns what went wrong, or None."""
    from sockvisor import log, logconfig
    settings = config.globals
    try:
        if settings.loggerconfig is not None:
            log.setup_from_file(settings.loggerconfig.path, settings.loggerconfig.text,
                                args.log_level)
        else:
            log.setup(args.log_level or settings.loglevel, settings.logoutput)
    except OSError as exc:   # logoutput's file (checked at load; changed since)
        return f"logoutput: {exc}"
    except logconfig.LoggingConfigError as exc:
        return f"loggerconfig: {exc}"
    return None


def _resume(args: argparse.Namespace) -> int:
    """`start --resume FD`: exec'd in place by an upgrade (upgrade.py).  The config
    is the one that was running, from the state; nothing is checked again that
    the pre-flight did not check, nothing is bound or spawned."""
    from sockvisor import systemd
    if systemd.watchdog_interval() is not None:
        # First, before the heavy imports: the exec's gap must not eat the
        # watchdog period (the old process pinged just before it).
        systemd.Notifier.from_environ().watchdog()
    from sockvisor import fdlimit, handover, log, upgrade
    from sockvisor.supervisor import Supervisor
    try:
        state = handover.read(args.resume)
    except handover.StateError as exc:
        print(f"sockvisor: --resume: {exc}", file=sys.stderr)
        return 2
    if state.get("pid") != os.getpid():
        # Its fds are another process's: nothing here is what it describes.
        print(f"sockvisor: --resume: the state is pid {state.get('pid')}'s, not ours "
              f"({os.getpid()}); --resume is for sockvisor's own upgrade", file=sys.stderr)
        return 2
    handover.take_fds(state, args.resume)
    config = upgrade.decode_config(state)
    # The running config's log set-up, applied again (loggerconfig: the text read
    # at load, not the file).  The workers are ours by now: a set-up that fails
    # falls back to stderr rather than abandon them.
    problem = _setup_log(args, config)
    if problem is not None:
        log.setup(args.log_level or config.globals.loglevel)
        logging.getLogger("sockvisor").error("%s: %s; logging to stderr instead",
                                             config.path, problem)
    fdlimit.raise_own()
    fdlimit.resume(state.get("nofile_started_with"))   # absent from older states
    supervisor = Supervisor(config)
    supervisor.resume_state = state
    try:
        return asyncio.run(supervisor.run())
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
