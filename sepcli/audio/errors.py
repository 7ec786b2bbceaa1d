"""AudioError, the one error of an audio file (its message names the file), and the short descriptions of the
OS's and libsndfile's errors that go into it."""

from __future__ import annotations

import errno
import os

from ..errors import FailedError, one_line


class AudioError(FailedError):
    """A problem with one audio file; str() is a one-line message naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def sf_message(exc: BaseException, path: str | os.PathLike) -> str:
    """libsndfile's message in one line, without soundfile's "Error opening '<path>': " prefix (the caller
    names the file once; the path may have been given to soundfile as str or as bytes)."""
    text = one_line(exc)
    if isinstance(path, int):  # a file descriptor
        return text.removeprefix(f"Error opening {path}:").strip()
    for prefix in (f"Error opening {str(path)!r}: ", f"Error opening {os.fspath(path)!r}:",
                   f"Error opening {os.fsencode(path)!r}:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text


_OS_PROBLEMS = {errno.ENOENT: "no such file", errno.ELOOP: "symbolic link loop",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.ENAMETOOLONG: "file name too long", errno.ENOTDIR: "a parent of this path is not a folder"}


def os_problem(exc: OSError) -> str:
    """A short description of an OSError (no path: the caller names the file)."""
    return _OS_PROBLEMS.get(exc.errno or -1) or (exc.strerror or one_line(exc)).rstrip(".").lower()
