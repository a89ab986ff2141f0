"""Print sockvisor's events as JSON lines: the feed for a dashboard, a log shipper or a test.

    python -m sockvisor.plugins.event_log -c /etc/sockvisor/web.ini [--topic watcher.web]
    python -m sockvisor.plugins.event_log --endpoint ipc:///srv/web/ctl.events

With -c, the events endpoint is the one sockvisor opens for that config: its
`pubsub_endpoint`, else `ENDPOINT.events` beside an ipc `endpoint` (the next
port for tcp), else `events` in the config's default runtime folder
(/run/sockvisor/NAME-HASH/events as root; see sockvisor/paths.py).

Each line is `{"topic": "watcher.web.spawn", "time": ..., "data": {...}}`.  The
events endpoint is a ZeroMQ PUB socket (see sockvisor/control/server.py); a slow
reader loses events rather than slowing sockvisor down.  `--count N` stops after
N events, `--seconds S` after S seconds: both make it usable in scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="event_log", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="the sockvisor INI file (to find the endpoint)")
    where.add_argument("--endpoint", help="the events (PUB) endpoint")
    parser.add_argument("--topic", action="append", default=[],
                        help="topic prefix to keep (repeatable; default: everything)")
    parser.add_argument("--count", type=int, default=0, help="stop after N events")
    parser.add_argument("--seconds", type=float, default=0, help="stop after S seconds")
    args = parser.parse_args(argv)
    if args.config:
        try:
            args.endpoint = events_endpoint(args.config)
        except (OSError, ValueError) as exc:
            print(f"event_log: cannot read {args.config}: {exc}", file=sys.stderr)
            return 2

    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in args.topic or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sub.connect(args.endpoint)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    seen = 0
    try:
        while not args.count or seen < args.count:
            timeout_ms = -1 if deadline is None else max(0, int(1000 * (deadline - time.monotonic())))
            if deadline is not None and timeout_ms == 0:
                break
            if not sub.poll(timeout_ms):
                continue
            topic, payload = sub.recv_multipart()[:2]
            try:
                data = json.loads(payload)
            except ValueError:
                data = payload.decode(errors="replace")
            print(json.dumps({"topic": topic.decode(errors="replace"), "time": time.time(),
                              "data": data}), flush=True)
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    return 0


def events_endpoint(config_path: str) -> str:
    """The events endpoint sockvisor opens for `config_path` (control/server.py's
    rule), read without validating the whole file."""
    import configparser
    from sockvisor.control.server import endpoints_for
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    with open(config_path, encoding="utf-8") as handle:
        parser.read_file(handle)
    section = next((s for s in ("sockvisor", "circus") if parser.has_section(s)), None)
    endpoint = parser.get(section, "endpoint", fallback=None) if section else None
    pubsub = parser.get(section, "pubsub_endpoint", fallback=None) if section else None
    return endpoints_for(config_path, endpoint and endpoint.strip(),
                         pubsub and pubsub.strip(), None)[2]


if __name__ == "__main__":
    sys.exit(main())
