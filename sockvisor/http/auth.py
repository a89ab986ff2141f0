"""The console's bearer token: where it comes from, where it is written, how it is checked.

Without `http_token_file`, a fresh token is made at each start and written to
`console-token` in sockvisor's own runtime directory (paths.runtime_dir: 0700,
ours, in a base nobody else can write), created with O_CREAT|O_EXCL|O_NOFOLLOW
through a descriptor of that directory, so no name anybody else controls is
ever followed.  `sockvisorctl console-token` asks for it over the owner endpoint.

With `http_token_file`, the operator's file is read (it must be ours or root's
and readable by nobody else); it does not change between restarts, which is
what a Prometheus `bearer_token_file` or a remote dashboard needs.

The token travels only in `Authorization: Bearer …`.  Never in a URL (it would
end in access logs, history and Referer headers), never in a cookie (a cookie is
sent by the browser on a forged cross-site request; a header is not), never in
a log line.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat

TOKEN_NAME = "console-token"
MIN_TOKEN_LENGTH = 16


class TokenError(OSError):
    pass


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(directory: str, token: str) -> None:
    """Write `token` to DIRECTORY/console-token, 0600, replacing an old one."""
    _ensure_private_directory(directory)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.unlink(TOKEN_NAME, dir_fd=dir_fd)   # a previous run's
        except FileNotFoundError:
            pass
        fd = os.open(TOKEN_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o600)   # whatever the umask said
            os.write(fd, (token + "\n").encode())
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def remove_token(directory: str) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.unlink(TOKEN_NAME, dir_fd=dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _ensure_private_directory(directory: str) -> None:
    """The runtime directory as control/server.py makes it: ours, 0700 (0710 with
    endpoint_group), in a base that only we or root can write."""
    base = os.path.dirname(directory)
    if not os.path.isdir(directory):
        os.makedirs(base, mode=0o755, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
    base_st = os.stat(base)
    if base_st.st_uid not in (0, os.geteuid()) or base_st.st_mode & 0o022:
        raise TokenError(f"{base} is writable by others: not safe for the console token")
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise TokenError(f"{directory} is not a directory of ours")
    if st.st_mode & 0o067:
        raise TokenError(f"{directory} is open to others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}): not safe for the console token")


def read_token_file(path: str) -> str:
    """The operator's token: from a file of ours (or root's) nobody else can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenError(f"http_token_file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"http_token_file {path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o077:
            raise TokenError(f"http_token_file {path}: must belong to us or root and be "
                             f"readable by nobody else (mode {stat.S_IMODE(st.st_mode):o}, "
                             f"owner uid {st.st_uid}); chmod 600")
        token = os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise TokenError(f"http_token_file {path}: expected one token of at least "
                         f"{MIN_TOKEN_LENGTH} characters without spaces")
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
