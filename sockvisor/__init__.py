"""sockvisor: a socket-holding process supervisor.

The supervisor binds listening sockets once and never closes them; workers
inherit them as fds 3, 4, ... (systemd's LISTEN_FDS convention) and are
restarted, scaled and replaced around those sockets.
"""

__version__ = "0.1.0"
