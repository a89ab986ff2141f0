"""A small demo HTTP worker: serves on the first socket sockvisor passes it (fd 3).

It checks LISTEN_PID the way libsystemd's sd_listen_fds() does, so it refuses to
run if the fds were not meant for it, then answers every request with its pid and
the worker id.  Stdlib only; `python -m sockvisor.demo.http_worker`.
"""

import http.server
import os
import signal
import socket
import socketserver
import sys

SD_LISTEN_FDS_START = 3


def inherited_socket() -> socket.socket:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("http_worker: LISTEN_PID is not my pid; no sockets were passed to me")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("http_worker: LISTEN_FDS < 1")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (f"hello from pid {os.getpid()} wid {os.environ.get('SOCKVISOR_WID', '?')}"
                "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket):
        socketserver.BaseServer.__init__(self, sock.getsockname(), Handler)
        self.socket = sock
        self.server_name, self.server_port = "sockvisor-demo", 0


def main() -> None:
    server = Server(inherited_socket())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo worker {os.getpid()} serving", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
