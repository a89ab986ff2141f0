"""Where a config's default control endpoints live.

One directory per config file (named after the file and a hash of its absolute
path), mode 0700, under /run/sockvisor as root and $XDG_RUNTIME_DIR/sockvisor
otherwise.  `sockvisorctl -c conf.ini` computes the same path, so nobody has to
write an endpoint down twice.  A group member's sockvisorctl looks in its own
user's place first, then in root's: a root-run sockvisor with `endpoint_group`
makes its folder 0710 for the group (`candidate_runtime_dirs`).

A client trusts a candidate only as `unsafe_place` allows: /tmp/sockvisor-UID
can be made first by any local user, who would then answer our requests (and
read what we send) from a socket of its own.
"""

from __future__ import annotations

import hashlib
import os
import stat


ROOT_RUNTIME_BASE = "/run/sockvisor"


def runtime_base() -> str:
    if os.geteuid() == 0:
        return ROOT_RUNTIME_BASE
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "sockvisor")
    return f"/tmp/sockvisor-{os.geteuid()}"   # checked for ownership before use


def runtime_dir(config_path: str, base: str | None = None) -> str:
    # realpath: the same file reached through a symlink finds the same endpoint.
    absolute = os.path.realpath(config_path)
    stem = os.path.splitext(os.path.basename(absolute))[0][:40] or "sockvisor"
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:10]
    return os.path.join(runtime_base() if base is None else base, f"{stem}-{digest}")


def candidate_runtime_dirs(config_path: str) -> list[str]:
    """Where a sockvisor running `config_path` may have its default endpoints, in
    the order a client should look: as this user would run it, then as root."""
    dirs = [runtime_dir(config_path)]
    if os.geteuid() != 0:
        dirs.append(runtime_dir(config_path, ROOT_RUNTIME_BASE))
    return dirs


def unsafe_place(directory: str) -> str | None:
    """Why a client must not use the endpoints in `directory` (a runtime_dir), or
    None.  It and its base (/tmp/sockvisor-UID, /run/sockvisor, ...) must be
    real directories, owned by us or root, that nobody else may write to: whoever
    can write to either can put a socket of its own where we would connect.
    The rule sockvisor itself applies to its base (control/server.py).  A
    directory that does not exist is not unsafe: there is nothing to talk to."""
    me = os.geteuid()
    for path in (os.path.dirname(directory), directory):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{path} ({exc.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} (not a directory)"
        if st.st_uid not in (0, me):
            return f"{path} (owned by uid {st.st_uid}, not by you or root)"
        if st.st_mode & 0o022:
            return (f"{path} (writable by others than its owner: mode "
                    f"{stat.S_IMODE(st.st_mode):o})")
    return None


def discovery_bases() -> list[str]:
    """Where sockvisorctl looks for running sockvisors when given no endpoint:
    this user's base, then root's (a group member's way in)."""
    bases = [runtime_base()]
    if ROOT_RUNTIME_BASE not in bases:
        bases.append(ROOT_RUNTIME_BASE)
    return bases


def default_endpoint(config_path: str) -> str:
    return f"ipc://{runtime_dir(config_path)}/control"


def default_admin_endpoint(config_path: str) -> str:
    return f"ipc://{runtime_dir(config_path)}/admin"


def default_pubsub_endpoint(config_path: str) -> str:
    return f"ipc://{runtime_dir(config_path)}/events"
