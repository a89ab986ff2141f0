"""Circus's `loggerconfig`: sockvisor's own log set up by a Python logging
configuration file -- INI for `logging.config.fileConfig`, `.json` or
`.yaml`/`.yml` for `dictConfig` -- read as root may read it, and run off the
event loop.

Two things make such a file dangerous to a root supervisor, and each has its
answer here:

* It is code.  fileConfig evaluates each handler's `args` as Python, and
  dictConfig imports and calls whatever class or factory (`()`) it names, inside
  sockvisor, as root.  So whoever can write the file decides what root runs:
  it is trusted exactly as an `include`d config file is (circus_ini.py
  `open_included`, reused here): the file and every folder on its way must be
  root's (or sockvisor's own user's), not group- or world-writable, and no link
  a user could have planted is followed.  It is read once, at load (`read`,
  at most MAX_BYTES), and checked as far as it can be without running anything
  (its format parses; the sections fileConfig needs are there); the text is
  kept in the config, and that text -- not the file by its path -- is what
  start and an upgrade's resume apply (`apply`).  A file a handler will write
  is checked as logoutput is: in a folder only root can write, not a link
  (`_check_handler_files`; its name must be written out, not an expression).
  Hosts and sockets the handlers name are the file's business.

* Its handlers block.  SMTP, HTTP, syslog over TCP, a file on a stalled NFS
  mount: each `emit` may wait for seconds, and every logging call in sockvisor
  is made from the one event loop that also answers the control channel and
  reaps workers.  So once the configuration is applied, every handler it
  installed is moved behind a `QueueHandler`: each logger that had handlers
  gets one, which only enqueues the record (with the handlers it is meant
  for), and the real handlers run in one `QueueListener` thread.  The queue is
  bounded (MAX_QUEUED records): when the handlers fall that far behind, a new
  record is dropped and counted, never waited for -- blocking would put the
  stall back on the loop, and an unbounded queue would let a dead mail server
  grow root's memory for as long as it is down.  The count is reported, as a
  warning through the same handlers, with the next record that gets through.

How it meets sockvisor's own loggers: sockvisor logs under `sockvisor.*` and
Circus under `circus`.  Unless the file configures a `sockvisor` logger,
`sockvisor` takes whatever it says of `circus` (level, handlers, propagate) --
Circus's own documented examples configure `circus` -- and otherwise propagates
to the root logger.  `disable_existing_loggers` (fileConfig's is true, as
Circus calls it) never silences sockvisor's own loggers or asyncio's error
reports.

Ending: `flush` waits, bounded, for the queue to drain (before an upgrade's
exec, which ends the thread); `close` drains, stops the thread and flushes the
handlers at exit, also bounded: a handler stuck for good is abandoned rather
than keep sockvisor from exiting.
"""

from __future__ import annotations

import atexit
import configparser
import json
import logging
import logging.config
import logging.handlers
import os
import queue
import threading
import time

from sockvisor import circus_ini

MAX_BYTES = 1 << 20        # far more than any logging configuration needs
MAX_QUEUED = 10_000        # records waiting for the handlers' thread
_OWN = ("sockvisor", "asyncio")

_KINDS = {".ini": "ini", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}


class LoggingConfigError(Exception):
    """A logging configuration that cannot be used; the message says why."""


def kind_of(path: str) -> str:
    """ini, json or yaml, from the file's name (as Circus tells them apart)."""
    kind = _KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise LoggingConfigError(f"{path}: expected a .ini (fileConfig), .json, .yaml or "
                                 ".yml (dictConfig) file, or `default`")
    return kind


# --------------------------------------------------------------------------- at load

def read(path: str) -> str:
    """The text of the logging configuration `path` (absolute), after the trust
    checks; LoggingConfigError if it is not root's to decide, unreadable, too
    large, or does not parse."""
    kind = kind_of(path)
    if not os.path.exists(path):   # for the message only: the checks are below
        raise LoggingConfigError(f"{path} does not exist")
    try:
        fd = circus_ini.open_included(path)
    except circus_ini.UntrustedInclude as exc:
        runs_as = "root" if os.geteuid() == 0 else "its own user"
        raise LoggingConfigError(
            f"{path} not read: {exc}: a logging configuration is code sockvisor runs "
            f"(fileConfig evaluates handler args, dictConfig calls the classes it "
            f"names), as {runs_as}, so whoever can write it decides what runs; make "
            "the file and every folder on its way root's, not group- or "
            "world-writable") from None
    with open(fd, "rb", closefd=True) as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise LoggingConfigError(f"{path}: too large (more than {MAX_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoggingConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    _check_handler_files(path, _parse(kind, path, text))
    return text


# The handler classes that open a file by the name in their arguments (their
# subclasses included: the name is matched, as fileConfig resolves it).
_FILE_HANDLERS = ("FileHandler", "RotatingFileHandler", "TimedRotatingFileHandler",
                  "WatchedFileHandler")


def _check_handler_files(path: str, parsed) -> None:
    """Each file a handler will open is one root may write by name: in a folder
    only root can write, not a link or a FIFO (logdir.py, as for logoutput).
    Root never opens a name another user can swap (DESIGN §5) -- not even one
    its own logging configuration gave."""
    from sockvisor import logdir
    for handler, filename in _handler_files(path, parsed):
        filename = os.path.abspath(filename)   # as the handler opens it: from our cwd
        try:
            logdir.check_log_path(filename, None, None)
        except OSError as exc:
            raise LoggingConfigError(f"{path}: handler {handler}: {filename}: {exc}; root "
                                     "writes sockvisor's log there, so only root may "
                                     "write that folder") from None


def _handler_files(path: str, parsed) -> list[tuple[str, str]]:
    """(handler, file name) for each handler that writes a file; a file handler
    whose name is not written out as a literal is refused (fileConfig would
    evaluate the expression: which file root writes must be known now)."""
    import ast
    found = []
    if isinstance(parsed, configparser.ConfigParser):
        names = [n.strip() for n in parsed["handlers"]["keys"].split(",") if n.strip()]
        for name in names:
            section = parsed[f"handler_{name}"] if parsed.has_section(f"handler_{name}") else {}
            cls = section.get("class", "").rsplit(".", 1)[-1]
            if cls not in _FILE_HANDLERS:
                continue
            try:
                args = ast.literal_eval(section.get("args", "()"))
                kwargs = ast.literal_eval(section.get("kwargs", "{}"))
            except (ValueError, SyntaxError):
                raise LoggingConfigError(
                    f"{path}: [handler_{name}]: its args are not written out (a literal "
                    "tuple with the file name first): sockvisor must know which file "
                    "root writes") from None
            filename = (args[0] if isinstance(args, tuple) and args
                        else kwargs.get("filename") if isinstance(kwargs, dict) else None)
            if not isinstance(filename, str):
                raise LoggingConfigError(f"{path}: [handler_{name}]: no file name in args")
            found.append((name, filename))
        return found
    for name, handler in (parsed.get("handlers") or {}).items():
        if isinstance(handler, dict) and "filename" in handler:
            if not isinstance(handler["filename"], str):
                raise LoggingConfigError(f"{path}: handlers: {name}: filename must be text")
            found.append((str(name), handler["filename"]))
    return found


def _parse(kind: str, path: str, text: str):
    """The parsed configuration (a ConfigParser or a dict), checked without
    importing or evaluating anything from it."""
    if kind == "ini":
        # As fileConfig reads a file: ConfigParser with its interpolation.
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            raise LoggingConfigError(f"{path}: not a valid INI file: {exc}") from None
        for section in ("loggers", "handlers", "formatters"):
            if not parser.has_option(section, "keys"):
                raise LoggingConfigError(
                    f"{path}: fileConfig needs [loggers], [handlers] and [formatters] "
                    f"sections, each with keys = ...; [{section}] has none")
        if "root" not in [name.strip() for name in parser["loggers"]["keys"].split(",")]:
            raise LoggingConfigError(f"{path}: [loggers] keys must name root (fileConfig)")
        return parser
    if kind == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LoggingConfigError(f"{path}: not valid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise LoggingConfigError(f"{path}: a YAML file, but PyYAML is not "
                                     "installed (pip install PyYAML)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LoggingConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise LoggingConfigError(f"{path}: expected a mapping (dictConfig's schema), "
                                 f"got {type(data).__name__}")
    if data.get("version") != 1:
        raise LoggingConfigError(f"{path}: dictConfig needs `version: 1`")
    return data


# --------------------------------------------------------------------------- at start

class _Drops:
    """Records dropped because the queue was full, since last reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
            return count


class _Enqueue(logging.handlers.QueueHandler):
    """A logger's stand-in for its handlers: the record goes to the queue with
    the handlers it is for, or is counted as dropped; it never waits."""

    def __init__(self, records: queue.Queue, handlers: tuple[logging.Handler, ...],
                 drops: _Drops):
        super().__init__(records)
        self.targets = handlers
        self.drops = drops

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait((self.targets, record))
        except queue.Full:
            self.drops.add()


class _Listener(logging.handlers.QueueListener):
    """The thread the real handlers run in."""

    def __init__(self, records: queue.Queue, handlers: list[logging.Handler],
                 drops: _Drops):
        super().__init__(records)
        self.real_handlers = handlers
        self.drops = drops

    def handle(self, item) -> None:
        targets, record = item
        dropped = self.drops.take()
        if dropped:
            warning = logging.LogRecord(
                "sockvisor.log", logging.WARNING, __file__, 0,
                "%d log records dropped: the logging handlers (loggerconfig) fell "
                f"{MAX_QUEUED} records behind", (dropped,), None)
            self._emit(targets, warning)
        self._emit(targets, record)

    @staticmethod
    def _emit(targets, record: logging.LogRecord) -> None:
        for handler in targets:
            if record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception:   # noqa: BLE001 - an emit that raises must not end
                    handler.handleError(record)   # the thread: nothing would log again

    def drain(self, timeout: float) -> bool:
        """Wait until every queued record is handled, at most `timeout` s."""
        records = self.queue
        deadline = time.monotonic() + timeout
        with records.all_tasks_done:
            while records.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                records.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float) -> None:
        """Drain, stop the thread, flush the handlers: each step bounded.  A
        handler stuck for good (a mount that never answers) is given up on: the
        thread is a daemon, and logging's own exit hook, which would wait for
        that handler's lock, is taken off so that sockvisor still exits."""
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None:
            return
        if self.drain(timeout):
            try:
                self.queue.put(self._sentinel,
                               timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            else:
                thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            atexit.unregister(logging.shutdown)
        else:
            self._thread = None
        for handler in self.real_handlers:
            # Without waiting for a handler that is still busy.
            if handler.lock is not None and not handler.lock.acquire(blocking=False):
                continue
            try:
                handler.flush()
            except Exception:   # noqa: BLE001 - one handler's failure stops no other
                pass
            finally:
                if handler.lock is not None:
                    handler.lock.release()


def apply(path: str, text: str, level: str | None = None) -> _Listener:
    """Apply the configuration read by `read` (LoggingConfigError if it cannot be:
    a class it names does not import, a handler cannot open its file...), then
    move every handler it installed to a thread (the returned listener, started).
    `level`: sockvisor's own logger's level, when given on the command line.
    On failure no logger is left with a handler (none would be off the loop)."""
    parsed = _parse(kind_of(path), path, text)
    own = logging.getLogger("sockvisor")
    # As a fresh process has it: what the file says of it is what it gets.
    own.handlers[:] = []
    own.setLevel(logging.NOTSET)
    own.propagate = True
    try:
        try:
            if isinstance(parsed, configparser.ConfigParser):
                logging.config.fileConfig(parsed, disable_existing_loggers=True)
            else:
                logging.config.dictConfig(parsed)
        except Exception as exc:   # whatever the file's classes raise
            cause = exc.__cause__ or exc
            raise LoggingConfigError(f"{path}: cannot be applied: "
                                     f"{type(cause).__name__}: {cause}") from None
        loggers = _loggers()
        for name, logger in loggers.items():
            if name in _OWN or name.startswith("sockvisor."):
                logger.disabled = False
        circus = loggers.get("circus")
        if (circus is not None and not own.handlers and own.level == logging.NOTSET
                and own.propagate):
            own.setLevel(circus.level)
            own.handlers[:] = circus.handlers
            own.propagate = circus.propagate
        if level is not None:
            try:
                own.setLevel(level.upper())
            except ValueError:
                raise LoggingConfigError(f"--log-level {level}: expected debug, info, "
                                         "warning, error or critical") from None
    except LoggingConfigError:
        for logger in _loggers().values():
            logger.handlers[:] = []
        raise
    return _off_the_loop(loggers)


def _loggers() -> dict[str, logging.Logger]:
    found = {name: logger for name, logger in logging.root.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    found[""] = logging.getLogger()
    return found


def _off_the_loop(loggers: dict[str, logging.Logger]) -> _Listener:
    records: queue.Queue = queue.Queue(MAX_QUEUED)
    drops = _Drops()
    real: list[logging.Handler] = []
    for logger in loggers.values():
        if not logger.handlers:
            continue
        targets = tuple(logger.handlers)
        real.extend(handler for handler in targets if handler not in real)
        logger.handlers[:] = [_Enqueue(records, targets, drops)]
    listener = _Listener(records, real, drops)
    listener.start()
    return listener
