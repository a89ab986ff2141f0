"""Pre-flight: what a worker will meet, checked by a child that *is* the worker's user.

`sockvisor check` and `sockvisor start` (before anything is bound), and at run time
`reloadconfig`, `add` and `set`, ask for each watcher whether its worker could
start at all:

  * its `working_dir` can be entered;
  * its program, searched as execvpe will (the worker's PATH, else the default;
    a relative path from `working_dir`), is a file it may execute -- and if not,
    which directory on the way it may not enter, or the file's mode;
  * each of its hooks' programs (`hooks.NAME`, Circus's hooks as commands, run
    as the worker: hooks.py), the same way;
  * a Python module named with `-m` (``python -m app``) is importable by that
    interpreter, under the worker's environment and directory.

Why a child and not the mode bits (what config.py did before): the kernel has the
last word -- ACLs, capabilities, a root-squashed NFS, an LSM -- and the classic
trap is not even about the program: the README's `uid = nobody` variant with a
virtualenv under /root (mode 0700) passes every mode-bit check on the
interpreter's own file, and the worker dies importing its module, every time.
The probe is forked and exec'd exactly as a worker is (`process.fork_exec`:
setsid, supplementary groups as initgroups gives them, gid, uid, then exec), runs
only /bin/sh or the worker's own interpreter, and as the worker, never as root
unless the worker itself runs as root -- nothing a worker could swap runs with
more rights than the worker has.

Never blocks the event loop: the probes are child processes waited for through
the reaper when sockvisor runs (it is the one place that waits for children), by
a thread's waitpid before it starts.  Each probe is bounded by PROBE_TIMEOUT,
then its process group is killed.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import signal
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from sockvisor import process
from sockvisor.config import Config, ConfigError, WatcherConfig, has_worker_substitution
from sockvisor.config.hooks import hook_program, python_for_hooks, python_hook_env
from sockvisor.config.model import HookPython

if TYPE_CHECKING:
    from sockvisor.reaper import Reaper

PROBE_TIMEOUT = 10.0
SHELL = "/bin/sh"

# One answer line per test: "1" if the worker's user passes it, "0" if not.
#   d:DIR   the directory can be entered (cd)
#   s:DIR   the directory may be searched (x)
#   x:FILE  a regular file it may execute
_PROBE_SCRIPT = """
for t; do
  p=${t#?:}
  case $t in
    d:*) if (cd "$p") 2>/dev/null; then echo 1; else echo 0; fi ;;
    s:*) if [ -x "$p" ]; then echo 1; else echo 0; fi ;;
    x:*) if [ -f "$p" ] && [ -x "$p" ]; then echo 1; else echo 0; fi ;;
    *) echo 0 ;;
  esac
done
"""

_PYTHON = re.compile(r"(python|pypy)[0-9.]*")
_PYTHON_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
_FIND_SPEC = "import importlib.util,sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"


@dataclass(frozen=True)
class _Who:
    uid: int | None
    gid: int | None
    groups: list[int] | None
    name: str

    @classmethod
    def of(cls, config: WatcherConfig) -> "_Who":
        uid = os.geteuid() if config.uid is None else config.uid
        name = config.user
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = f"uid {uid}"
        groups = (process.user_groups(config.user, config.gid)
                  if config.uid is not None or config.gid is not None else None)
        return cls(config.uid, config.gid, groups, name)


async def check(config: Config, names: Iterable[str] | None = None,
                reaper: "Reaper | None" = None) -> list[ConfigError]:
    """The problems of `config`'s watchers (all, or those in `names`), each a
    ConfigError naming file, section and key, and in its text the user and path."""
    chosen = list(config.watchers) if names is None else list(names)
    found = await asyncio.gather(*(watcher_problems(config.watchers[name], config.path,
                                                    reaper) for name in chosen))
    return [problem for problems in found for problem in problems]


async def watcher_problems(config: WatcherConfig, path: str,
                           reaper: "Reaper | None" = None) -> list[ConfigError]:
    section = f"watcher:{config.name}"
    who = _Who.of(config)
    env = process.identity_env(config)
    cwd = config.working_dir
    checks_program = not has_worker_substitution(config.cmd)
    candidates = program_candidates(config.cmd, env, cwd) if checks_program else []

    tests: dict[str, None] = {}   # ordered, without repeats
    if cwd is not None:
        tests[f"d:{cwd}"] = None
        for directory in _directories_on_the_way(cwd, include_self=True):
            tests[f"s:{directory}"] = None
    # Circus's hooks run as the worker does (hooks.py): their programs are checked
    # the same way, in the same probe.
    hook_candidates = {point: program_candidates(hook_program(config, hook), env, cwd)
                       for point, hook in config.hooks.items()}
    for candidate in [*candidates, *(c for found in hook_candidates.values() for c in found)]:
        tests[f"x:{candidate}"] = None
        for directory in _directories_on_the_way(candidate):
            tests[f"s:{directory}"] = None
    answers = await _shell_probe(list(tests), who, env, reaper)

    problems = []
    if cwd is not None and not answers.get(f"d:{cwd}", False):
        blocked = _first_blocked(cwd, answers, include_self=True)
        why = (f"may not enter {blocked} ({_describe_mode(blocked)})" if blocked
               else "cannot enter it")
        problems.append(ConfigError(f"{config.working_dir}: {who.name} {why}",
                                    path=path, section=section, key="working_dir"))
        return problems   # the worker would fail there, before exec
    python_hooks = []
    for point, found in hook_candidates.items():
        hook = config.hooks[point]
        if not any(answers.get(f"x:{c}") for c in found):
            problems.append(ConfigError(
                _program_problem(config, found, answers, who, env,
                                 hook_program(config, hook)),
                path=path, section=section, key=f"hooks.{point}"))
        elif isinstance(hook, HookPython):
            python_hooks.append(point)
    # A Python hook: can its interpreter, as the worker's user, import it?
    # (Circus imports them when it loads the config, and fails there too.)
    found_problems = await asyncio.gather(*(
        _hook_problem(python_for_hooks(config), config.hooks[point].target, who,
                      python_hook_env(env), cwd, reaper, config.rlimits)
        for point in python_hooks))
    problems += [ConfigError(problem, path=path, section=section, key=f"hooks.{point}")
                 for point, problem in zip(python_hooks, found_problems) if problem]
    if not checks_program:
        return problems
    program = next((c for c in candidates if answers.get(f"x:{c}")), None)
    if program is None:
        problems.append(ConfigError(_program_problem(config, candidates, answers, who, env),
                                    path=path, section=section, key="cmd"))
        return problems
    module = python_module(program, config.args)
    if module is not None:
        problem = await _module_problem(program, module, who, env, cwd, reaper)
        if problem:
            problems.append(ConfigError(problem, path=path, section=section, key="cmd"))
    return problems


def program_candidates(program: str, env: Mapping[str, str],
                       working_dir: str | None) -> list[str]:
    """The absolute paths execvpe tries for `program`, in order (a name without "/"
    in the worker's PATH, else os.defpath; a relative path from its working dir)."""
    try:
        cwd = working_dir or os.getcwd()
    except OSError:   # sockvisor's own directory is gone
        cwd = "/"
    if "/" in program:
        return [os.path.normpath(os.path.join(cwd, program))]
    return [os.path.normpath(os.path.join(cwd, directory, program))
            for directory in os.get_exec_path(dict(env))]


def python_module(program: str, args: Iterable[str]) -> str | None:
    """NAME in ``python [options] -m NAME ...``, if `program` is a Python."""
    if not _PYTHON.fullmatch(os.path.basename(program)):
        return None
    args = list(args)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m":
            return args[index + 1] if index + 1 < len(args) else None
        if arg.startswith("-m"):
            return arg[2:]
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            index += 2
            continue
        if arg == "-c" or arg == "-" or not arg.startswith("-"):
            return None   # a command, stdin or a script: no module
        index += 1
    return None


def _directories_on_the_way(path: str, include_self: bool = False) -> list[str]:
    """Every directory from / down to `path`'s own (or `path` itself), on the path
    as written and on the one symlinks lead to."""
    found: list[str] = []
    for name in (path, os.path.realpath(path)):
        directory = name if include_self else os.path.dirname(name)
        chain = []
        while True:
            chain.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
        found += [d for d in reversed(chain) if d not in found]
    return found


def _first_blocked(path: str, answers: Mapping[str, bool],
                   include_self: bool = False) -> str | None:
    for directory in _directories_on_the_way(path, include_self):
        if not answers.get(f"s:{directory}", True):
            return directory
    return None


def _program_problem(config: WatcherConfig, candidates: list[str],
                     answers: Mapping[str, bool], who: _Who,
                     env: Mapping[str, str], program: str | None = None) -> str:
    """Why none of `candidates` for `program` (default: cmd's) can be run."""
    program = config.cmd if program is None else program
    # Say why by the first candidate that is there (as root sees it).
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            blocked = _first_blocked(candidate, answers)
            if blocked and os.path.lexists(candidate):
                return (f"{candidate}: {who.name} may not enter {blocked} "
                        f"({_describe_mode(blocked)})")
            continue
        blocked = _first_blocked(candidate, answers)
        if blocked:
            return (f"{candidate}: {who.name} may not enter {blocked} "
                    f"({_describe_mode(blocked)})")
        if not stat.S_ISREG(st.st_mode):
            return f"{candidate}: not a regular file"
        try:
            if os.statvfs(candidate).f_flag & os.ST_NOEXEC:
                return f"{candidate}: on a file system mounted noexec"
        except OSError:
            pass
        return f"{candidate}: not executable by {who.name} ({_describe_mode(candidate)})"
    if "/" in program:
        return f"{candidates[0]}: not found"
    return f"{program}: not found in PATH ({env.get('PATH', os.defpath)})"


def _describe_mode(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or "cannot look at it"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}:{group}"


async def _shell_probe(tests: list[str], who: _Who, env: Mapping[str, str],
                       reaper: "Reaper | None") -> dict[str, bool]:
    if not tests:
        return {}
    status, out, err = await _run_as_worker(
        [SHELL, "-c", _PROBE_SCRIPT, "sh", *tests], who, {"PATH": os.defpath}, "/", reaper)
    lines = out.decode(errors="replace").split()
    if status != 0 or len(lines) != len(tests):
        raise ConfigError(f"cannot check as {who.name} with {SHELL}: "
                          f"{_failure(status, err)}")
    return {test: line == "1" for test, line in zip(tests, lines)}


async def _module_problem(program: str, module: str, who: _Who, env: Mapping[str, str],
                          cwd: str | None, reaper: "Reaper | None") -> str | None:
    try:
        status, _, err = await _run_as_worker(
            [program, "-c", _FIND_SPEC, module], who, env, cwd, reaper)
    except TimeoutError:
        return (f"{program} -m {module}: {who.name}'s interpreter did not answer "
                f"within {PROBE_TIMEOUT:g}s whether it can import {module!r}")
    if status == 0:
        return None
    where = f" (in {cwd})" if cwd else ""
    if status == 1 << 8 and not err.strip():
        return (f"{program} -m {module}: no module named {module!r} for "
                f"{who.name}{where}")
    return (f"{program} -m {module}: {who.name} cannot import {module!r}{where}: "
            f"{_failure(status, err)}")


async def _hook_problem(interpreter: str, target: str, who: _Who,
                        env: Mapping[str, str], cwd: str | None,
                        reaper: "Reaper | None",
                        rlimits: Mapping[str, int]) -> str | None:
    """Why `interpreter`, as the worker's user (and its limits), cannot import
    the Python hook `target` (None: it can).  Importing runs the module's own
    code: whatever it starts ends with the probe (_run_as_worker)."""
    from sockvisor.hooks import SHIM_SOURCE
    try:
        status, _, err = await _run_as_worker(
            [interpreter, "-c", SHIM_SOURCE.read_text(), "--resolve", target], who, env,
            cwd, reaper, rlimits)
    except TimeoutError:
        return (f"{target}: importing it as {who.name} with {interpreter} did not "
                f"finish within {PROBE_TIMEOUT:g}s")
    if status == 0:
        return None
    where = f" in {cwd}" if cwd else ""
    return (f"{who.name} cannot import the hook {target} with {interpreter}{where}: "
            f"{_failure(status, err)} (Circus fails on it too: install its package, "
            f"or put its folder in the watcher's PYTHONPATH or working_dir)")


def _failure(status: int | None, err: bytes) -> str:
    from sockvisor.reaper import describe_status
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else describe_status(status or 0)


async def _run_as_worker(argv: list[str], who: _Who, env: Mapping[str, str],
                         cwd: str | None, reaper: "Reaper | None",
                         rlimits: Mapping[str, int] | None = None
                         ) -> tuple[int, bytes, bytes]:
    """Run `argv` as a worker of `who` would run (process.fork_exec); its wait
    status, stdout and stderr.  TimeoutError after PROBE_TIMEOUT.  Either way
    the probe's process group is killed before the probe is reaped: what it
    started (a module imported by a hook probe may fork) ends with it."""
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    spec = process.SpawnSpec(argv=argv, env=dict(env), fds=[], stdout=out_w, stderr=err_w,
                             uid=who.uid, gid=who.gid, groups=who.groups, cwd=cwd,
                             rlimits=rlimits or {})
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pid, status_r = process.fork_exec(spec)
    except OSError:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)

    def on_exit(status: int) -> None:
        if not exited.done():
            exited.set_result(status)
    if reaper is not None:
        reaper.register(pid, on_exit, lambda: _kill_group(pid))
    else:   # before sockvisor's reaper runs (check, start): nobody else waits
        loop.run_in_executor(None, _wait_blocking, pid).add_done_callback(
            lambda f: on_exit(f.result()))
    outputs = [_read_all(loop, out_r), _read_all(loop, err_r)]
    try:
        status, out, err = await asyncio.wait_for(
            asyncio.gather(asyncio.shield(exited), *outputs), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await asyncio.shield(exited)
        raise TimeoutError from None
    finally:
        spawn_error = process.read_spawn_status(status_r)
        os.close(status_r)
    if spawn_error is not None:
        return status, b"", process.describe_spawn_error(spawn_error, argv[0]).encode()
    return status, out, err


def _wait_blocking(pid: int) -> int:
    while True:
        try:
            # Exited but not reaped: its pid is still the group's id to kill.
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            _kill_group(pid)
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> "asyncio.Future[bytes]":
    """Everything written to the pipe `fd` until EOF (bounded: 64 KiB kept)."""
    done: asyncio.Future[bytes] = loop.create_future()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk and sum(map(len, chunks)) < 65536:
            chunks.append(chunk)
        if not chunk:
            loop.remove_reader(fd)
            os.close(fd)
            done.set_result(b"".join(chunks))

    def cancelled(future: asyncio.Future) -> None:
        if future.cancelled():
            loop.remove_reader(fd)
            os.close(fd)
    loop.add_reader(fd, readable)
    done.add_done_callback(cancelled)
    return done


async def require(watchers: Iterable[WatcherConfig], path: str,
                  reaper: "Reaper | None" = None) -> None:
    """Raise the first problem of `watchers` (a ConfigError), if any: what
    reloadconfig, `add` and `set` ask before they change anything."""
    found = await asyncio.gather(*(watcher_problems(w, path, reaper) for w in watchers))
    for problems in found:
        if problems:
            raise problems[0]
