"""`sockvisorctl`: one subcommand per control command, generated from the registry.

Exit status: 0 the command succeeded, 1 it failed (the reply was an error),
2 usage, 3 no sockvisor answered -- or, for `status`, a watcher is not running
with all its workers ready.  The endpoint comes from --endpoint, else from
`-c CONF` (its [sockvisor] endpoint, or the default path for that file: as
this user would run it, else as root would -- where a group member finds a
root-run sockvisor), else from $SOCKVISOR_ENDPOINT, else from the one
sockvisor running on the machine with a default endpoint this user can reach
(said on stderr; several: they are listed and none is picked).  Given a config,
sockvisorctl uses the owner-only endpoint when it can reach it (see
control/server.py).

`help`, `completion` and `man` run here, without a sockvisor: they are made
from the same command table the server dispatches by (cli/ctl_docs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
QUICK_TIMEOUT = 10.0
LONG_TIMEOUT = 600.0
MAX_TIMEOUT = 86400.0   # as config.MAX_SECONDS, without importing the config module


def _add_global_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """The options of sockvisorctl itself.  Accepted after the command as well
    (`sockvisorctl status --json`), where an option not given must not reset
    what was given before the command: hence SUPPRESS as the default there."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value
    def text(words: str) -> str:
        # Documented once, in `sockvisorctl -h`; each COMMAND -h shows its own.
        return argparse.SUPPRESS if after_command else words
    parser.add_argument("-c", "--config", default=default(None),
                        help=text("the sockvisor INI file (to find the endpoint)"))
    parser.add_argument("--endpoint", default=default(None),
                        help=text("control endpoint (ipc://PATH or tcp://HOST:PORT)"))
    parser.add_argument("--timeout", type=_seconds, default=default(None),
                        help=text(f"seconds to wait for the reply (default {QUICK_TIMEOUT:g}"
                                  f", {LONG_TIMEOUT:g} for commands that wait for "
                                  "processes)"))
    parser.add_argument("--json", action="store_true", default=default(False),
                        help=text("print the raw JSON reply"))
    parser.add_argument("--curve-server-key", default=default(None),
                        help=text("tcp:// with CURVE: the server's public certificate file"))
    parser.add_argument("--curve-client-key", default=default(None),
                        help=text("tcp:// with CURVE: our secret certificate file"))


EPILOG = ("exit status: 0 ok, 1 command failed, 2 usage, 3 sockvisor unreachable "
          "(status: 3 also when a watcher is not running with all its workers ready)")


def _seconds(raw: str) -> float:
    """--timeout: a finite number of seconds (float() takes "inf" and "nan",
    which the client's poll cannot wait for)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") \
            from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most "
                                         f"{MAX_TIMEOUT:g} seconds, got {raw!r}")
    return value


def build_parser(commands: dict) -> argparse.ArgumentParser:
    from sockvisor import __version__
    from sockvisor.cli import ctl_docs
    parser = argparse.ArgumentParser(
        prog="sockvisorctl", description="Control a running sockvisor.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"sockvisorctl {__version__}")
    _add_global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in sorted(commands.items()):
        child = sub.add_parser(name, help=command.summary(), description=command.description(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(child)
        _add_global_options(child, after_command=True)
    ctl_docs.add_local_commands(sub)
    return parser


def resolve_endpoint(args: argparse.Namespace) -> str:
    endpoint = _find_endpoint(args)
    # ZeroMQ would raise a bare "Invalid argument" (a traceback) on connect.
    if not endpoint.startswith(("ipc://", "tcp://")):
        raise UsageError(f"bad endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
    return endpoint


def _find_endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return args.endpoint
    if args.config:
        return endpoint_from_config(args.config)
    env = os.environ.get("SOCKVISOR_ENDPOINT")
    if env:
        return env
    return _the_one_running()


def _the_one_running() -> str:
    """The endpoint of the only sockvisor running here (that we may reach)."""
    from sockvisor import paths
    from sockvisor.control import discover
    found = discover.running(paths.discovery_bases())
    if len(found) == 1:
        print(f"sockvisorctl: using {found[0].endpoint} "
              f"({discover.describe_pid(found[0].pid)})", file=sys.stderr)
        return found[0].endpoint
    if not found:
        raise UsageError("no endpoint: give -c CONF or --endpoint, or set "
                         "SOCKVISOR_ENDPOINT (no running sockvisor found in "
                         f"{', '.join(paths.discovery_bases())})")
    listing = "\n".join(f"  --endpoint {item.endpoint}  ({discover.describe_pid(item.pid)})"
                         for item in found)
    raise UsageError(f"{len(found)} sockvisors run here; say which one:\n{listing}")


def endpoint_from_config(path: str) -> str:
    """The endpoint sockvisor opens for `path`, read without validating the whole file.

    A config root keeps to itself (0600: it may hold secrets) can still be used
    by a group member when it sets no `endpoint`: the default endpoint's place
    depends only on the file's path."""
    import configparser
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    unreadable = None
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except PermissionError as exc:
        unreadable = exc
    except (OSError, configparser.Error) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    section = next((s for s in ("sockvisor", "circus") if parser.has_section(s)), None)
    endpoint = parser.get(section, "endpoint", fallback=None) if section else None
    group = parser.get(section, "endpoint_group", fallback=None) if section else None
    if endpoint:
        endpoint = endpoint.strip()
        admin = f"{endpoint}.admin"
        if group and admin.startswith("ipc://") and os.access(admin[len("ipc://"):],
                                                              os.W_OK):
            return admin
        return endpoint
    return _default_endpoint(path, unreadable)


def _default_endpoint(path: str, unreadable: OSError | None) -> str:
    """The owner endpoint if we may use it, else the shared one, in the first
    place (ours, then root's) where a sockvisor for `path` has put them.  A place
    someone else could have made or changed (paths.unsafe_place) is skipped:
    what listens there need not be sockvisor."""
    from sockvisor import paths
    skipped: list[str] = []
    for directory in paths.candidate_runtime_dirs(path):
        problem = paths.unsafe_place(directory)
        if problem is not None:
            skipped.append(problem)
            continue
        admin, control = f"{directory}/admin", f"{directory}/control"
        if os.access(admin, os.W_OK):
            return f"ipc://{admin}"
        if os.path.lexists(control):
            return f"ipc://{control}"
        if os.path.isdir(directory) and not os.access(directory, os.X_OK):
            # There, but not for us: ControlClient says "permission denied".
            return f"ipc://{control}"
    if skipped:
        places = ", ".join(paths.candidate_runtime_dirs(path))
        raise NotFound(f"no sockvisor endpoint for {path} at its default places "
                       f"({places}); skipped, as not safe to use: {'; '.join(skipped)} "
                       "(give --endpoint, or set $XDG_RUNTIME_DIR)")
    if unreadable is not None:
        raise UsageError(f"cannot read {path}: {unreadable.strerror}; and no sockvisor "
                         f"endpoint at its default places "
                         f"({', '.join(paths.candidate_runtime_dirs(path))})")
    return paths.default_endpoint(path)


class UsageError(Exception):
    pass


class NotFound(Exception):
    """No sockvisor endpoint we may trust: exit 3, as for one that does not answer."""


def main(argv: list[str] | None = None) -> int:
    from sockvisor.control.commands import load_commands
    commands = load_commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command not in commands:   # help, completion, man: no sockvisor needed
        from sockvisor.cli import ctl_docs
        return ctl_docs.run_local(args, parser, commands)
    command = commands[args.command]
    try:
        endpoint = resolve_endpoint(args)
        properties = command.properties(args)
    except NotFound as exc:
        print(f"sockvisorctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (UsageError, ValueError) as exc:   # ValueError: e.g. `signal web x HUP`
        print(f"sockvisorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:   # a command's own argument check
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    timeout = args.timeout or (LONG_TIMEOUT if command.long_running else QUICK_TIMEOUT)

    import zmq
    from sockvisor.control.client import ControlClient, Unreachable
    try:
        curve = _curve_keys(args)
        with ControlClient(endpoint, timeout, *curve) as client:
            reply = client.call(command.name, properties)
            status = report(command, reply, args.json)
            if status == EXIT_OK and getattr(args, "follow", False):
                return command.follow(client, properties, reply, timeout, args.json)
            return status
    except Unreachable as exc:
        print(f"sockvisorctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except zmq.ZMQError as exc:   # e.g. tcp://host-without-port
        print(f"sockvisorctl: {endpoint}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"sockvisorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:   # Ctrl-C while waiting for a reply: no traceback
        return 130


def _curve_keys(args: argparse.Namespace) -> tuple[Any, Any]:
    if not args.curve_server_key and not args.curve_client_key:
        return None, None
    if not (args.curve_server_key and args.curve_client_key):
        raise ValueError("CURVE needs both --curve-server-key and --curve-client-key")
    import zmq.auth
    server_public, _ = zmq.auth.load_certificate(args.curve_server_key)
    client_public, client_secret = zmq.auth.load_certificate(args.curve_client_key)
    if client_secret is None:
        raise ValueError(f"{args.curve_client_key} holds no secret key")
    return server_public, (client_public, client_secret)


def report(command, reply: dict[str, Any], as_json: bool) -> int:
    failed = reply.get("status") == "error" and "errno" in reply
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif failed:
        print(f"sockvisorctl {command.name}: {reply.get('reason', 'failed')}", file=sys.stderr)
    else:
        text = command.format(reply)
        if text:
            print(text, flush=True)
    return EXIT_FAILED if failed else command.exit_status(reply)


if __name__ == "__main__":
    sys.exit(main())
