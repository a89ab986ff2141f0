"""The one test and benchmark worker that serves HTTP on an inherited listening socket.

This file is both a standalone stdlib-only program (what a watcher's `cmd` runs)
and, imported, the helpers that install it: `install(directory, name)` copies
this very file into `directory` (mode 0644, so a worker running as `nobody` with
Debian's /usr/bin/python3 can read it when the directory is world-readable) and
`cmd(path, *options, python=...)` builds the `cmd = ...` line.  The tests
(conftest's `scripts` fixture, control_helpers' `ServeWorker`,
control_client_helpers' `echo_worker_cmd`, systemd_helpers' `write_worker`)
and bench/common.py all run this file; each variant is a command-line option,
not a copy of the accept loop.

The program, in the order it does things:

  --marker PATH       append our pid to PATH
  --exit N            exit at once with status N
  --exit-if-set VAR   exit at once with status 4 if $VAR is set (`set web env CRASH=1`)
  --mode-file PATH    start-up words read from PATH, so a test changes what the next
                      generation does without touching the config: `crash` (exit 3),
                      `noready` (never serve, never notify), `delay=S` (sleep S before
                      notifying), `ready_then_exit=S` (READY=1 at once, never serve,
                      exit 3 S later: a gunicorn master whose workers cannot import)
  --fd N              serve inherited fd N (Circus: `--fd $(circus.sockets.web)`);
                      default: the sd_listen_fds fds 3 .. 3+$LISTEN_FDS-1, and
                      $LISTEN_PID must be our pid
  --state DIR         write DIR/<pid>.json (pid, wid, uid, port, CLOCK_MONOTONIC
                      "started", later "ready"), atomically
  --ignore-term       SIG_IGN SIGTERM
  --report-signals    print "got SIGNAME" and exit 0 on TERM, INT, HUP, USR1, USR2
  --fork-child        fork a child that just waits
  --daemonize         fork a child that forks a grandchild and exits (the orphan
                      waits); once the child is reaped, write the grandchild's pid
                      to DIR/grandchild-<wid> (needs --state DIR)
  --serve-in daemon|prefork
                      the worker itself only waits; `daemon`: fork, setsid, fork
                      again and the grandchild serves; `prefork`: two forked children
                      serve in the worker's process group.  Those servers ignore
                      SIGTERM and SIGHUP (processes that try to outlive their worker)
  --say TEXT, --say-err TEXT   print a line to stdout / stderr
  --no-serve          wait for ever without accepting
  --delay S           sleep S seconds before serving (slow start)
  --graceful          SIGTERM ends the worker only between two requests: the request
                      in hand is answered first (implies --poll)
  --notify            READY=1 (STATUS=serving) to $NOTIFY_SOCKET, if set, just
                      before serving
  --notify-after S    the same as --delay S --notify
  --poll              wait in select() over every listener and let EAGAIN pass
                      (another worker took the connection): for non-blocking
                      sockets, which Circus always hands out.  Without it the
                      worker is a plain blocking accept() loop on the first
                      listener, which dies on EAGAIN as most real code would
  --sleep S           sleep S seconds before answering each request

Every answer is HTTP/1.0, `Connection: close`, a JSON object: pid, ppid, wid
($SOCKVISOR_WID), port (the local port the request came in on; null on a unix
socket), version ($VERSION), uids, gids, groups, pgid, sid, env (HOME, USER,
LOGNAME), role ("worker", or the --serve-in server's "daemon"/"child") and worker
(the pid the supervisor started).
"""

import os
import select
import signal
import socket
import sys
import time

# --------------------------------------------------------------------------- helpers (imported)


def install(directory, name="http_worker.py"):
    """Copy this program into `directory` as `name` (0644); its path.

    `name` is free so that tests can tell workers apart by command line."""
    import pathlib
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    source = pathlib.Path(__file__).read_text()
    if not target.exists() or target.read_text() != source:
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(source)
        tmp.chmod(0o644)
        tmp.rename(target)
    return target


def cmd(path, *options, python=sys.executable):
    """A `cmd = ...` value running the installed worker with `options` (not quoted,
    so that $(circus.sockets.web) and $(sockvisor....) stay as they are)."""
    import shlex
    return " ".join([shlex.quote(str(python)), shlex.quote(str(path)), *map(str, options)])


# --------------------------------------------------------------------------- the program


def _option(args, name):
    return args[args.index(name) + 1] if name in args else None


def _notify(text):
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]   # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(text, address)


def _write_atomically(path, text):
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.rename(path + ".tmp", path)


# The answers' JSON, written here rather than with the json module: importing json
# costs about 2 ms of every start, which the benchmarks would count in each
# respawn's time to the first answer.  The values are None, ints, strings, and
# lists and dicts of those.
_ESCAPES = {**{code: f"\\u{code:04x}" for code in range(32)}, ord('"'): '\\"',
            ord("\\"): "\\\\"}


def _json(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_json(item) for item in value) + "]"


def main(args):
    started = time.monotonic()
    worker = os.getpid()
    if _option(args, "--marker"):
        with open(_option(args, "--marker"), "a") as marker:
            marker.write(f"{os.getpid()}\n")
    if _option(args, "--exit") is not None:
        sys.exit(int(_option(args, "--exit")))
    if _option(args, "--exit-if-set") and os.environ.get(_option(args, "--exit-if-set")):
        sys.exit(4)
    words = []
    if _option(args, "--mode-file"):
        try:
            with open(_option(args, "--mode-file")) as handle:
                words = handle.read().split()
        except OSError:
            pass
    if "crash" in words:
        sys.exit(3)

    if _option(args, "--fd") is not None:
        listeners = [socket.socket(fileno=int(_option(args, "--fd")))]
    else:
        if os.environ.get("LISTEN_PID") != str(os.getpid()):
            sys.exit(f"http_worker: LISTEN_PID={os.environ.get('LISTEN_PID')} "
                     f"is not my pid {os.getpid()}")
        listeners = [socket.socket(fileno=fd)
                     for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0")))]

    state_dir = _option(args, "--state")
    state = {"pid": worker, "wid": os.environ.get("SOCKVISOR_WID"), "started": started,
             "uid": os.getuid(),
             "port": _port(listeners[0].getsockname()) if listeners else None}

    def record(**values):
        state.update(values)
        if state_dir:
            _write_atomically(os.path.join(state_dir, f"{worker}.json"), _json(state))
    record()

    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--report-signals" in args:
        def report(signum, frame):
            print(f"got {signal.Signals(signum).name}", flush=True)
            os._exit(0)
        for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2"):
            signal.signal(getattr(signal, name), report)
    if "--fork-child" in args and os.fork() == 0:
        _wait_for_ever()
    if "--daemonize" in args:
        _daemonize(os.path.join(state_dir, f"grandchild-{state['wid']}"))
    role = "worker"
    serve_in = _option(args, "--serve-in")
    if serve_in:
        role = _serve_in(serve_in)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if _option(args, "--say"):
        print(_option(args, "--say"), flush=True)
    if _option(args, "--say-err"):
        print(_option(args, "--say-err"), file=sys.stderr, flush=True)
    if "--no-serve" in args or "noready" in words:
        _wait_for_ever()   # SIGTERM, at its default, ends us

    delay = float(_option(args, "--delay") or _option(args, "--notify-after") or 0)
    for word in words:
        if word.startswith("delay="):
            delay += float(word[len("delay="):])
    if delay:
        time.sleep(delay)
    for word in words:
        if word.startswith("ready_then_exit="):
            _notify(b"READY=1")
            time.sleep(float(word[len("ready_then_exit="):]))
            sys.exit(3)

    wake = None
    if "--graceful" in args:
        # From now on SIGTERM only writes to the wake-up pipe, which select() watches
        # beside the listeners: the request in hand is finished, then we exit.
        wake, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if "--notify" in args or _option(args, "--notify-after") is not None:
        record(ready=time.monotonic())
        _notify(b"READY=1\nSTATUS=serving\n")

    if not listeners and wake is None and "--poll" not in args:
        sys.exit("http_worker: LISTEN_FDS < 1: no socket was passed to me")
    per_request = float(_option(args, "--sleep") or 0)

    def body(connection):
        return _json({
            "pid": os.getpid(), "ppid": os.getppid(), "wid": os.environ.get("SOCKVISOR_WID"),
            "port": _port(connection.getsockname()), "version": os.environ.get("VERSION"),
            "uids": os.getresuid(), "gids": os.getresgid(), "groups": os.getgroups(),
            "pgid": os.getpgid(0), "sid": os.getsid(0), "role": role, "worker": worker,
            "env": {key: os.environ.get(key) for key in ("HOME", "USER", "LOGNAME")},
        }).encode()

    if wake is None and "--poll" not in args:
        while True:   # a plain blocking accept() loop
            connection, _ = listeners[0].accept()
            _answer(connection, body, per_request)
    watched = listeners + ([wake] if wake is not None else [])
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake is not None and wake in readable:
            sys.exit(0)
        for listener in readable:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue   # another worker took it
            _answer(connection, body, per_request)


def _port(sockname):
    return sockname[1] if isinstance(sockname, tuple) else None


def _answer(connection, body, per_request):
    try:
        connection.setblocking(True)
        connection.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                return
            request += chunk
        if per_request:
            time.sleep(per_request)
        payload = body(connection)
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
                           + payload)
    except OSError:
        pass
    finally:
        connection.close()


def _wait_for_ever():
    while True:
        signal.pause()


def _daemonize(report_path):
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        grandchild = os.fork()
        if grandchild == 0:
            os.close(write_end)
            _wait_for_ever()
        os.write(write_end, str(grandchild).encode())
        os._exit(0)
    os.close(write_end)
    grandchild = int(os.read(read_end, 64))
    os.close(read_end)
    # Once the middle child is reaped, the grandchild has been re-parented: only
    # then say who it is.
    os.waitpid(child, 0)
    _write_atomically(report_path, str(grandchild))


def _serve_in(how):
    """Fork the server(s) as `how` says; in the servers return their role, in the
    worker itself wait for ever."""
    if how == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                return "daemon"
            os._exit(0)
        os.wait()
    elif how == "prefork":
        for _ in range(2):
            if os.fork() == 0:
                return "child"
    else:
        sys.exit(f"http_worker: --serve-in {how!r}: daemon or prefork")
    _wait_for_ever()


if __name__ == "__main__":
    main(sys.argv[1:])
