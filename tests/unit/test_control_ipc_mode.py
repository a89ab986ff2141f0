"""The control socket's mode and group are set on the socket sockvisor bound,
never through a name another user swapped (control/server.set_socket_file_mode).

The attack: the endpoint's folder is writable by the workers' user (an
`endpoint = ipc://ctl.sock` read from a working directory that user owns, or an
absolute path in their folder); between libzmq's bind and root's chmod/chown
the name is replaced by a link to /etc/shadow, which root would then make
group-readable and -writable.  Here the name is a link (or a plain file) when
the mode is set: nothing but a socket is touched.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest

from sockvisor.control.server import EndpointError, set_socket_file_mode

pytestmark = pytest.mark.timeout(10)


def _dir_fd(path):
    return os.open(path, os.O_PATH | os.O_DIRECTORY)


def test_the_bound_socket_gets_its_mode_and_group(tmp_path):
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "ctl.sock"))
        fd = _dir_fd(tmp_path)
        try:
            set_socket_file_mode(fd, "ctl.sock", 0o660, os.getgid())
        finally:
            os.close(fd)
        st = os.stat(tmp_path / "ctl.sock")
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()


@pytest.mark.parametrize("swapped_in", ["link", "file"])
def test_a_name_swapped_after_the_bind_is_left_alone(tmp_path, swapped_in):
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    if swapped_in == "link":
        (tmp_path / "ctl.sock").symlink_to(victim)
    else:
        (tmp_path / "ctl.sock").write_text("")
        (tmp_path / "ctl.sock").chmod(0o600)
    fd = _dir_fd(tmp_path)
    try:
        with pytest.raises(EndpointError) as caught:
            set_socket_file_mode(fd, "ctl.sock", 0o666, None)
    finally:
        os.close(fd)
    assert "not the control socket any more" in str(caught.value)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(tmp_path / "ctl.sock").st_mode) in (0o600, 0o777)
