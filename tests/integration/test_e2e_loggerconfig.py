"""Circus's `loggerconfig` on a real sockvisor: a Python logging configuration
file (INI for fileConfig, JSON or YAML for dictConfig) decides where sockvisor's
own log goes and how it looks.

What must hold (sockvisor/logconfig.py): the lines arrive in the file's format;
the last lines are there after a stop (the handlers' thread is flushed); a file
someone other than root could have written is refused before anything runs; a
handler that blocks does not hold up the event loop (control replies come
while it sleeps); an upgrade re-applies the configuration, and a reloadconfig
that changes it takes effect at the next start (an upgrade included), as the
other [sockvisor] settings do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from pathlib import Path

import pytest

from conftest import wait_for
from control_helpers import ctl

pytestmark = pytest.mark.timeout(60)

IS_ROOT = os.geteuid() == 0
NOBODY = 65534

BODY = """
    [watcher:web]
    cmd = /bin/sleep 3600
"""


def root_folder(path: Path) -> Path:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def write_root_file(path: Path, text: str) -> Path:
    root_folder(path.parent)
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o644)
    return path


def ini_config(log: Path, fmt: str) -> str:
    # fileConfig reads `format` raw (no interpolation): `%` as it is.
    return f"""
        [loggers]
        keys = root
        [handlers]
        keys = file
        [formatters]
        keys = custom
        [logger_root]
        level = INFO
        handlers = file
        [handler_file]
        class = FileHandler
        args = ({str(log)!r}, 'a')
        formatter = custom
        [formatter_custom]
        format = {fmt}
    """


def lines(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_line(path: Path, pattern: str, sv, timeout: float = 15.0) -> re.Match[str]:
    regex = re.compile(pattern, re.MULTILINE)
    return wait_for(lambda: regex.search(lines(path)), timeout,
                    message=lambda: f"{pattern!r} in {path}:\n{lines(path)}\n{sv.describe()}")


# --------------------------------------------------------------------------- it loads, it logs

def test_ini_loggerconfig_writes_sockvisor_s_log_in_its_format(sockvisor, tmp_path):
    log = root_folder(tmp_path / "logs") / "sockvisor.log"
    ini = write_root_file(tmp_path / "etc" / "logging.ini",
                          ini_config(log, "CUSTOM|%(levelname)s|%(name)s|%(message)s"))
    sv = sockvisor(BODY, globals=f"loggerconfig = {ini}", ready=False)
    wait_line(log, r"^CUSTOM\|INFO\|sockvisor[\w.]*\|sockvisor ready: ", sv)
    assert "sockvisor ready:" not in sv.log(), sv.describe()
    # loglevel = debug (the fixture's) is overruled by the file's INFO, as in Circus.
    assert "|DEBUG|" not in lines(log)
    assert sv.stop() == 0
    # The last line, logged just before exit, went through the handlers' thread.
    assert re.search(r"^CUSTOM\|INFO\|sockvisor[\w.]*\|sockvisor stopped$", lines(log),
                     re.MULTILINE), lines(log)


def test_json_loggerconfig_for_circus_s_logger_gets_sockvisor_s_lines(sockvisor, tmp_path):
    """Circus's documented example configures the `circus` logger (propagate:
    no) and root: sockvisor's own logger follows what is said of `circus`."""
    logs = root_folder(tmp_path / "logs")
    config = {
        "version": 1,
        "disable_existing_loggers": True,
        "formatters": {"simple": {"format": "%(asctime)s - %(name)s - [%(levelname)s] "
                                            "%(message)s"}},
        "handlers": {
            "logfile": {"class": "logging.FileHandler", "filename": str(logs / "circus.log"),
                        "level": "DEBUG", "formatter": "simple"},
            "rootfile": {"class": "logging.FileHandler", "filename": str(logs / "root.log"),
                         "formatter": "simple"}},
        "loggers": {"circus": {"level": "DEBUG", "handlers": ["logfile"],
                               "propagate": False}},
        "root": {"level": "WARNING", "handlers": ["rootfile"]},
    }
    path = write_root_file(tmp_path / "etc" / "logging.json", json.dumps(config))
    sv = sockvisor(BODY, globals=f"loggerconfig = {path}", ready=False)
    wait_line(logs / "circus.log", r" - sockvisor[\w.]* - \[INFO\] sockvisor ready: ", sv)
    assert re.search(r"\[DEBUG\]", lines(logs / "circus.log")), lines(logs / "circus.log")
    assert "sockvisor ready:" not in lines(logs / "root.log")   # propagate: no
    assert sv.stop() == 0


# --------------------------------------------------------------------------- whose file it is

@pytest.mark.skipif(not IS_ROOT, reason="gives files to nobody")
@pytest.mark.parametrize("attack", ["folder", "swapped-link"])
def test_a_loggerconfig_another_user_controls_is_refused(sockvisor, tmp_path, attack):
    """The attack: the file's `args` are Python that sockvisor (root) evaluates.
    A folder `nobody` owns -- holding the file, or a link they swapped in for it
    pointing at a root-owned file -- is refused before anything is run."""
    marker = tmp_path / "ran"
    log = root_folder(tmp_path / "logs") / "sockvisor.log"
    text = ini_config(log, "%(message)s").replace(
        f"args = ({str(log)!r}, 'a')",
        f"args = (open({str(marker)!r}, 'w').write('root') and {str(log)!r}, 'a')")
    home = root_folder(tmp_path / "home")
    if attack == "folder":
        path = write_root_file(home / "logging.ini", text)
    else:
        real = write_root_file(tmp_path / "etc" / "logging.ini", text)
        path = home / "logging.ini"
        path.symlink_to(real)
        os.lchown(path, NOBODY, NOBODY)
    os.chown(home, NOBODY, NOBODY)
    sv = sockvisor(BODY, globals=f"loggerconfig = {path}", ready=False)
    assert sv.wait_exit(20) == 2, sv.describe()
    assert re.search(r"\[sockvisor\]: loggerconfig: .*nobody", sv.log()), sv.describe()
    assert not marker.exists()


# --------------------------------------------------------------------------- off the loop

SLOW_HANDLER = '''
"""A logging handler that sleeps DELAY seconds on a record matching SLOW_ON
(noting `sleeping` and `woke` in PATH.state), then appends the line to PATH.
It waits outside the handler's lock, as handlers that do their own I/O may."""
import logging, re, time


class SlowFile(logging.Handler):
    def __init__(self, path, slow_on, delay=5.0):
        super().__init__()
        self.path, self.slow_on, self.delay = path, re.compile(slow_on), delay

    def handle(self, record):
        if self.slow_on.search(record.getMessage()):
            with open(self.path + ".state", "a") as state:
                state.write("sleeping\\n")
            time.sleep(self.delay)
            with open(self.path + ".state", "a") as state:
                state.write("woke\\n")
        return super().handle(record)

    def emit(self, record):
        with open(self.path, "a") as out:
            out.write(self.format(record) + "\\n")
'''


def slow_sockvisor(sockvisor, tmp_path: Path, monkeypatch, slow_on: str, delay: float):
    """A sockvisor whose log goes through SlowFile (a root-owned module on its
    PYTHONPATH), slow on lines matching `slow_on`; and the log file."""
    pylib = root_folder(tmp_path / "pylib")
    write_root_file(pylib / "slowlog.py", SLOW_HANDLER)
    monkeypatch.setenv("PYTHONPATH", f"{pylib}:{os.environ.get('PYTHONPATH', '')}")
    log = root_folder(tmp_path / "logs") / "sockvisor.log"
    config = {"version": 1,
              "handlers": {"slow": {"()": "slowlog.SlowFile", "path": str(log),
                                    "slow_on": slow_on, "delay": delay}},
              "root": {"level": "INFO", "handlers": ["slow"]}}
    path = write_root_file(tmp_path / "etc" / "logging.json", json.dumps(config))
    sv = sockvisor(BODY, globals=f"loggerconfig = {path}", ready=False)
    wait_line(log, r"sockvisor ready: ", sv)
    return sv, log


def test_a_handler_that_blocks_does_not_delay_control_replies(sockvisor, tmp_path,
                                                              monkeypatch):
    """SIGUSR1's log line makes the handler sleep 5 s; `sockvisorctl status`
    answers meanwhile, while the handler is still asleep."""
    sv, log = slow_sockvisor(sockvisor, tmp_path, monkeypatch, "SIGUSR1", 5.0)
    state = Path(f"{log}.state")
    sv.signal(signal.SIGUSR1)   # output.py logs "SIGUSR1: reopening ..."
    wait_for(lambda: lines(state) == "sleeping\n", 10,
             message=lambda: f"the handler asleep\n{lines(state)}\n{sv.describe()}")
    started = time.monotonic()
    result = ctl(sv, "status", timeout=20)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert lines(state) == "sleeping\n", \
        f"the reply waited for the handler ({elapsed:.1f}s)\n{sv.describe()}"
    assert elapsed < 4.0
    wait_line(log, r"SIGUSR1: reopening", sv)   # then the line is written after all


def test_lines_still_queued_at_exit_are_written(sockvisor, tmp_path, monkeypatch):
    """The handler takes 1 s over the last line, "sockvisor stopped": it is
    written before sockvisor exits (the handlers' thread is waited for)."""
    sv, log = slow_sockvisor(sockvisor, tmp_path, monkeypatch, "sockvisor stopped", 1.0)
    assert sv.stop() == 0
    assert lines(log).rstrip().endswith("sockvisor stopped"), lines(log)


def test_lines_still_queued_at_an_upgrade_s_exec_are_written(sockvisor, tmp_path,
                                                            monkeypatch):
    """The exec ends the handlers' thread: the old process's last line, taking
    the handler 1 s, is written first (then the new process logs as before)."""
    sv, log = slow_sockvisor(sockvisor, tmp_path, monkeypatch, "upgrading: exec", 1.0)
    result = ctl(sv, "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    wait_line(log, r"upgraded in place: ", sv)
    assert "upgrading: exec" in lines(log), lines(log)


# --------------------------------------------------------------------------- upgrade, reloadconfig

@pytest.mark.timeout(90)
def test_loggerconfig_survives_an_upgrade_and_a_change_applies_at_the_next_start(
        sockvisor, tmp_path):
    """The resumed process applies the configuration again (from the config it
    was running: the file is not re-read by path); a reloadconfig reads a
    changed file (and checks it) but, as pidfile and logoutput, it applies at
    the next start -- which an upgrade is."""
    log = root_folder(tmp_path / "logs") / "sockvisor.log"
    ini = write_root_file(tmp_path / "etc" / "logging.ini",
                          ini_config(log, "OLD|%(name)s|%(message)s"))
    sv = sockvisor(BODY, globals=f"loggerconfig = {ini}", ready=False)
    wait_line(log, r"^OLD\|sockvisor[\w.]*\|sockvisor ready: ", sv)
    result = ctl(sv, "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    # Written by the old process just before its exec (flushed), then by the new one.
    wait_line(log, r"^OLD\|sockvisor[\w.]*\|upgrading: exec ", sv)
    wait_line(log, r"^OLD\|sockvisor[\w.]*\|upgraded in place: ", sv)
    assert len(re.findall(r"upgraded in place", lines(log))) == 1   # one handler, not two

    write_root_file(ini, ini_config(log, "NEW|%(name)s|%(message)s"))
    result = ctl(sv, "reloadconfig", timeout=30)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    wait_line(log, r"^OLD\|sockvisor[\w.]*\|reloadconfig: \[sockvisor\] settings changed; "
                   r"they take effect at the next start", sv)
    assert "NEW|" not in lines(log)
    result = ctl(sv, "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    wait_line(log, r"^NEW\|sockvisor[\w.]*\|upgraded in place: ", sv)
    assert sv.stop() == 0
    assert lines(log).rstrip().endswith("sockvisor stopped"), lines(log)


def test_an_upgrade_whose_new_process_cannot_apply_it_logs_to_stderr_and_keeps_serving(
        sockvisor, tmp_path, monkeypatch):
    """The handler's module is gone by the time the new process applies the
    configuration: the workers are already its own, so it logs to stderr, says
    why, and carries on -- it does not exit and orphan them."""
    sv, log = slow_sockvisor(sockvisor, tmp_path, monkeypatch, "never", 0.0)
    worker = wait_for(lambda: sv.worker_pids("sleep"), 10)
    (tmp_path / "pylib" / "slowlog.py").unlink()
    result = ctl(sv, "upgrade", timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{sv.describe()}"
    sv.wait_log(r"loggerconfig: .*slowlog.* logging to stderr instead", timeout=20)
    sv.wait_log(r"upgraded in place: ", timeout=20)
    assert sv.proc.poll() is None and sv.worker_pids("sleep") == worker
    assert ctl(sv, "status").returncode == 0
