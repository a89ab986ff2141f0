"""End to end: the `sockvisor` command line with a bad config.

Both `check` and `start` exit 2 with a message naming the file, the section and
the key, and `start` binds and spawns nothing: the config is validated before
any socket exists.
"""

from __future__ import annotations

import os
import socket

from conftest import free_port, port_is_free, run_cli


def _bad_config(tmp_path, scripts) -> tuple[str, int, str]:
    port = free_port()
    marker = tmp_path / "spawned"
    conf = tmp_path / "bad.ini"
    conf.write_text(f"""\
[sockvisor]
endpoint = ipc://{tmp_path}/ctl

[socket:web]
host = 127.0.0.1
port = {port}

[watcher:web]
cmd = {scripts.cmd("worker.py")} --marker {marker}
sockets = web
numprocesss = 2
""")
    return str(conf), port, str(marker)


def test_check_reports_file_section_and_key(tmp_path, scripts):
    conf, _, _ = _bad_config(tmp_path, scripts)
    result = run_cli("check", conf)
    assert result.returncode == 2, result
    assert f"{conf}: [watcher:web]: numprocesss: unknown key" in result.stderr
    assert "did you mean 'numprocesses'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "OK" not in result.stdout


def test_start_with_bad_config_binds_and_spawns_nothing(tmp_path, scripts):
    conf, port, marker = _bad_config(tmp_path, scripts)
    result = run_cli("start", conf)
    assert result.returncode == 2, result
    assert f"{conf}: [watcher:web]: numprocesss: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stderr
    assert not os.path.exists(marker), "a worker was started"
    assert not (tmp_path / "ctl").exists()
    # The configured port was never bound: we can take it ourselves.
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        # And with the port taken, the answer is still the config error (2), not a
        # bind error (3): the config is checked before anything is bound.
        again = run_cli("start", conf)
    assert again.returncode == 2, again
    assert "numprocesss: unknown key" in again.stderr
    assert "cannot bind" not in again.stderr


def test_check_accepts_a_good_config(tmp_path, scripts):
    conf = tmp_path / "good.ini"
    conf.write_text(f"""\
[socket:web]
port = 0

[watcher:web]
cmd = {scripts.cmd("worker.py")}
sockets = web
""")
    result = run_cli("check", str(conf))
    assert result.returncode == 0, result
    assert "OK (1 sockets, 1 watchers)" in result.stdout
