"""Circus's `virtualenv` (and `virtualenv_py_ver`) and `copy_path`: what they
put in a worker's environment, computed once when the config is loaded.

As circus/util.py `load_virtualenv` (0.19) does it:
  * the site directory is VENV/lib/pythonX.Y/site-packages (else
    VENV/lib/pypyX.Y/site-packages), X.Y being `virtualenv_py_ver` or the
    version sockvisor runs on; neither existing is an error;
  * VENV/bin, if it exists, goes first in PATH;
  * PYTHONPATH becomes: the directories the site directory's `*.pth` files
    name (not `#` comments, `import` lines or blank ones), then the PYTHONPATH
    the worker had, then the site directory itself (unless already there).
    Unlike Circus, a named directory is kept whether or not it exists: root
    asking would tell whoever writes the .pth files whether paths root alone
    can see exist (PYTHONPATH is theirs to read), and the worker's Python
    skips a missing directory anyway.
  * `copy_path`: sockvisor's own `sys.path`, joined, is the worker's PYTHONPATH
    before the watcher's env is applied (so an explicit PYTHONPATH wins).

Circus refuses both without `copy_env = true`; sockvisor does not need that: the
worker's PATH is sockvisor's either way, and what is added is the same.

The virtualenv is often the application user's, writable by the worker: root
reads its `.pth` files without following a symlink and without blocking on a
FIFO (O_NOFOLLOW | O_NONBLOCK, regular files only, a bounded size), through a
descriptor of the site directory opened one component at a time below the
virtualenv without following a symlink, so nothing planted there makes `check`,
`start` or `reloadconfig` hang or read another folder's files.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Mapping

_PTH_LIMIT = 1 << 20   # bytes read from one .pth file; real ones are a few lines
_PTH_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def copied_path() -> str:
    """`copy_path`: sockvisor's sys.path, as Circus passes circusd's."""
    return os.pathsep.join(sys.path)


def site_directory(venv: str, py_ver: str | None) -> str:
    """The virtualenv's site-packages; ValueError saying where it looked."""
    if not os.path.isdir(venv):
        raise ValueError(f"virtualenv {venv} does not exist (or is not a directory)")
    version = py_ver or "%d.%d" % sys.version_info[:2]
    tried = [os.path.join(venv, "lib", f"{kind}{version}", "site-packages")
             for kind in ("python", "pypy")]
    for candidate in tried:
        if os.path.isdir(candidate):
            return candidate
    hint = "" if py_ver else " (set virtualenv_py_ver to the virtualenv's Python version)"
    raise ValueError(f"not a virtualenv: neither {' nor '.join(tried)} exists{hint}")


def with_virtualenv(env: Mapping[str, str], venv: str, py_ver: str | None) -> dict[str, str]:
    """`env` as the virtualenv makes it (PATH, PYTHONPATH); ValueError if it is none."""
    site = site_directory(venv, py_ver)
    result = dict(env)
    bindir = os.path.join(venv, "bin")
    if os.path.isdir(bindir):
        result["PATH"] = ":".join([bindir, result.get("PATH", "")])
    packages = _pth_packages(site)
    current = result.get("PYTHONPATH")
    path = os.pathsep.join(packages + ([current] if current else []))
    if not path:
        path = site
    elif site not in path.split(os.pathsep):
        path = os.pathsep.join([path, site])
    result["PYTHONPATH"] = path
    return result


def _pth_packages(site: str) -> list[str]:
    """The existing directories `site`'s .pth files name, in a stable order
    (Circus keeps them in a set: its order is arbitrary; ours is by file name)."""
    packages: list[str] = []
    dir_fd = _open_site(site)
    try:
        for name in sorted(os.listdir(dir_fd)):
            if not name.endswith(".pth"):
                continue
            for line in _read_pth(dir_fd, name).splitlines():
                if not line.strip() or line.startswith(("#", "import")):
                    continue
                candidate = os.path.abspath(os.path.join(site, line.rstrip()))
                if candidate not in packages:
                    packages.append(candidate)
    finally:
        os.close(dir_fd)
    return packages


def _open_site(site: str) -> int:
    """A descriptor of `site` (VENV/lib/pythonX.Y/site-packages): VENV as the
    config names it, each folder below it without following a symlink -- one
    planted by whoever owns the virtualenv would make root list another folder
    and read its .pth files into a PYTHONPATH they can read."""
    lib = os.path.dirname(os.path.dirname(site))
    venv = os.path.dirname(lib)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(venv, flags)
    except OSError as exc:
        raise ValueError(f"cannot open {venv}: {exc.strerror}") from None
    try:
        for part in os.path.relpath(site, venv).split(os.sep):
            below = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
    except OSError as exc:
        os.close(fd)
        # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR (or ELOOP).
        why = ("a symlink, or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
               else exc.strerror)
        raise ValueError(f"cannot open {site}: {why}") from None
    return fd


def _read_pth(dir_fd: int, name: str) -> str:
    """A .pth file's text, or "" for anything that is not a plain regular file."""
    try:
        fd = os.open(name, _PTH_FLAGS, dir_fd=dir_fd)
    except OSError:   # a symlink (ELOOP), a FIFO nobody writes (ENXIO), gone...
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, _PTH_LIMIT).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
