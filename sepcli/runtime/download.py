"""Download one file over HTTP(S), resumably, with timeouts, retries, a size cap and a progress display.

`download(url, dest)` writes `dest` (a file in the user's downloads folder) through `dest.part`:
- connect timeout and read (stall) timeout: a server that sends nothing for `read_timeout` seconds is
  "no data from HOST for N s";
- a few retries with exponential back-off after connection errors, 5xx answers, stalls and bodies cut short;
  never after a 4xx answer such as 404;
- resume: a `.part` left by an interrupted or failed call is continued with an HTTP Range request on the next
  call; a server that ignores Range (200 instead of 206) is read from the start again; 416 (range not
  satisfiable) means the part is already complete when its size is the file's, else it is started again;
- a size cap: a Content-Length over the cap is refused before reading, a body that grows past it is stopped
  (and its part removed);
- a disk that fills up (ENOSPC) is one DiskFull error; the part keeps what was written and stays resumable;
- redirects are followed (GitHub release assets redirect to a storage host), never from https to http.
The sha256 of the complete file is computed over the whole file once it is complete (`sha256_file`).

`pull_lock(path, name)` is an exclusive lock (flock) on a file: a second pull of the same model while one runs
fails at once with Busy ("another pull of NAME is running"); the lock goes with the process, so a killed pull
leaves no stale lock.

Settings come from arguments or the environment: SEPCLI_DOWNLOAD_TIMEOUT (read/stall timeout, seconds),
SEPCLI_DOWNLOAD_CONNECT_TIMEOUT, SEPCLI_DOWNLOAD_RETRIES, SEPCLI_DOWNLOAD_BACKOFF (first wait, seconds). Tests set
them small; a slow link may need a longer stall timeout.

Only the standard library is used (http.client, ssl with the system's certificate store).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import FailedError, one_line

CHUNK = 1 << 16
MAX_REDIRECTS = 5


# ---------------------------------------------------------------------- errors
class DownloadError(FailedError):
    """A download that did not complete; str() is one line naming the URL or file and the problem."""


class HTTPStatusError(DownloadError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Unreachable(DownloadError):
    """No connection to the host at all (DNS failure, connection refused, no route): the machine may be offline."""


class Stalled(DownloadError):
    pass


class TooLarge(DownloadError):
    pass


class DiskFull(DownloadError):
    pass


class Busy(DownloadError):
    """Another process holds the lock of this pull."""


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may not (carries the error to raise at the end)."""

    def __init__(self, error: DownloadError):
        super().__init__(str(error))
        self.error = error


# ---------------------------------------------------------------------- settings
def _env_float(key: str, default: float, most: float = 3600.0) -> float:
    """A number from the environment, 0..most; the default when unset or not a number."""
    try:
        v = float(os.environ.get(key, ""))
    except ValueError:
        return default
    return min(v, most) if v >= 0 else default  # NaN fails v >= 0


@dataclass(frozen=True)
class Settings:
    connect_timeout: float = 20.0
    read_timeout: float = 30.0  # seconds without a byte before a stall is declared
    retries: int = 3  # further attempts after the first
    backoff: float = 1.0  # wait before the first retry; doubled for each further one
    cap: int = 2 << 30  # bytes

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        base = cls(connect_timeout=_env_float("SEPCLI_DOWNLOAD_CONNECT_TIMEOUT", cls.connect_timeout),
                   read_timeout=_env_float("SEPCLI_DOWNLOAD_TIMEOUT", cls.read_timeout),
                   retries=int(_env_float("SEPCLI_DOWNLOAD_RETRIES", cls.retries, most=20)),
                   backoff=_env_float("SEPCLI_DOWNLOAD_BACKOFF", cls.backoff))
        return cls(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


# ---------------------------------------------------------------------- progress
class Progress:
    """Receives the progress of a transfer; this base class shows nothing (-q)."""

    def start(self, total: int | None, done: int) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class PlainProgress(Progress):
    """A line on stderr at the start, then about every `every` seconds, and at the end (stderr not a terminal)."""

    def __init__(self, label: str, stream=None, every: float = 5.0):
        self.label, self.stream, self.every = label, stream or sys.stderr, every
        self.total, self.done, self._last = None, 0, 0.0

    def _line(self) -> None:
        of = f" of {_mb(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"{self.label}: {_mb(self.done)}{of}", file=self.stream, flush=True)
        self._last = time.monotonic()

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done = total, done
        self._line()

    def update(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self._last >= self.every:
            self._line()

    def close(self) -> None:
        if self._last:
            self._line()


class RichProgress(Progress):
    """A rich progress bar on stderr (a terminal)."""

    def __init__(self, label: str):
        self.label, self._bar, self._task = label, None, None

    def start(self, total: int | None, done: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, completed=done)
        else:
            self._bar.update(self._task, total=total, completed=done)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_for(label: str, quiet: bool) -> Progress:
    """Nothing with -q, a rich bar when stderr is a terminal, plain periodic lines otherwise."""
    if quiet:
        return Progress()
    return RichProgress(label) if sys.stderr.isatty() else PlainProgress(label)


# ---------------------------------------------------------------------- lock
@contextlib.contextmanager
def pull_lock(path: Path, name: str):
    """Hold an exclusive lock on `path` for the block; Busy when another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another pull of {name} is running (it holds {path}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------- the transfer
@dataclass
class Downloaded:
    path: Path
    size: int
    resumed_from: int  # bytes already present when this call started (0: from the start)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _connect(url: str, s: Settings) -> http.client.HTTPConnection:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise DownloadError(f"{url}: not an http(s) URL")
    host = u.hostname
    try:
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(host, u.port, timeout=s.connect_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, u.port, timeout=s.connect_timeout)
        conn.connect()
    except socket.gaierror as exc:
        raise _Retry(Unreachable(f"{url}: cannot resolve {host} ({exc.strerror or exc})")) from None
    except ssl.SSLCertVerificationError as exc:
        raise DownloadError(f"{url}: TLS certificate of {host} not trusted ({exc.verify_message})") from None
    except TimeoutError:
        raise _Retry(Unreachable(f"{url}: no connection to {host} within {s.connect_timeout:g} s")) from None
    except ConnectionRefusedError:
        raise _Retry(Unreachable(f"{url}: connection refused by {host}")) from None
    except OSError as exc:  # network unreachable, no route, TLS handshake cut
        raise _Retry(Unreachable(f"{url}: cannot connect to {host} ({exc.strerror or exc})")) from None
    conn.sock.settimeout(s.read_timeout)  # from here on: the stall timeout
    return conn


def _open(url: str, offset: int, s: Settings):
    """(response, connection, final URL) of a GET of `url` from byte `offset`, redirects followed."""
    for _ in range(MAX_REDIRECTS + 1):
        conn = _connect(url, s)
        u = urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        headers = {"User-Agent": "sepcli", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise _Retry(Stalled(f"{url}: no data from {_host(url)} for {s.read_timeout:g} s")) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Retry(DownloadError(f"{url}: connection to {_host(url)} failed ({_why(exc)})")) from None
        if resp.status in (301, 302, 303, 307, 308):
            loc = resp.getheader("Location")
            resp.close()
            conn.close()
            if not loc:
                raise DownloadError(f"{url}: redirect without a Location")
            new = urljoin(url, loc)
            if urlsplit(url).scheme == "https" and urlsplit(new).scheme != "https":
                raise DownloadError(f"{url}: refused a redirect from https to {new}")
            url = new
            continue
        return resp, conn, url
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _why(exc: BaseException) -> str:
    return one_line(exc, 120)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) from 'bytes 100-199/200' or 'bytes */200'; None for what is not given."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.split("-")[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _attempt(url: str, part: Path, s: Settings, progress: Progress, expected_size: int | None) -> int:
    """One GET continuing `part`; returns the complete size. Raises _Retry for what another attempt may mend."""
    offset = part.stat().st_size if part.exists() else 0
    resp, conn, final = _open(url, offset, s)
    host = _host(final)
    try:
        status = resp.status
        if status == 416 and offset:
            _, total = _content_range(resp.getheader("Content-Range"))
            if total == offset:  # the part is the whole file already
                return offset
            part.unlink()
            raise _Retry(DownloadError(f"{url}: the server refused to resume (416); starting again"))
        if status >= 500 or status in (408, 429):
            raise _Retry(HTTPStatusError(f"{url}: HTTP {status} {resp.reason} from {host}", status))
        if status not in (200, 206):
            raise HTTPStatusError(f"{url}: HTTP {status} {resp.reason} from {host}", status)
        length = resp.getheader("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            first, total = _content_range(resp.getheader("Content-Range"))
            if first != offset:  # not the range asked for: start again
                part.unlink(missing_ok=True)
                raise _Retry(DownloadError(f"{url}: the server sent another range than asked for"))
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        else:  # 200: the whole file (a server that ignores Range sends it from the start)
            offset, total, mode = 0, length, "wb"
        if total is not None and total > s.cap:
            raise TooLarge(f"{url}: {_mb(total)}, more than the cap of {_mb(s.cap)}")
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(f"{url}: the server offers {total} bytes, the catalogue expects {expected_size}")
        done = offset
        progress.start(total, done)
        try:
            f = open(part, mode)  # noqa: SIM115 (closed below: a close that fails is a disk error too)
        except OSError as exc:
            raise _disk_error(part, exc) from None
        complete = False
        try:
            while True:
                try:
                    chunk = resp.read1(CHUNK)  # what has arrived (read() would wait for a whole chunk)
                except TimeoutError:
                    raise _Retry(Stalled(f"{url}: no data from {host} for {s.read_timeout:g} s")) from None
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry(DownloadError(f"{url}: connection to {host} lost after {done} bytes "
                                               f"({_why(exc)})")) from None
                if not chunk:
                    break
                if done + len(chunk) > s.cap:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise TooLarge(f"{url}: more than the cap of {_mb(s.cap)}; stopped")
                try:
                    f.write(chunk)
                    done += len(chunk)
                except OSError as exc:
                    raise _disk_error(part, exc) from None
                progress.update(done)
            complete = True
        finally:
            try:
                f.close()  # flushes: what was written stays a prefix of the file
            except OSError as exc:
                if complete:  # else the error on its way out says more
                    raise _disk_error(part, exc) from None
        if total is not None and done < total:
            raise _Retry(DownloadError(f"{url}: connection to {host} closed after {done} of {total} bytes"))
        return done
    finally:
        resp.close()
        conn.close()


def _disk_error(part: Path, exc: OSError) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        size = part.stat().st_size if part.exists() else 0
        return DiskFull(f"{part}: disk full after {_mb(size)}; free some space and pull again (it resumes)")
    return DownloadError(f"{part}: cannot write ({exc.strerror or exc})")


def download(url: str, dest: Path, *, settings: Settings | None = None, progress: Progress | None = None,
             expected_size: int | None = None, sleep=time.sleep) -> Downloaded:
    """Download `url` to `dest` (through `dest.part`, resumed if present). Raises DownloadError; whatever
    happens, `dest.part` holds a prefix of the file (or nothing), so the next call resumes."""
    s = settings or Settings.from_env()
    progress = progress or Progress()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    resumed_from = part.stat().st_size if part.exists() else 0
    failures = 0
    try:
        while True:
            try:
                size = _attempt(url, part, s, progress, expected_size)
                break
            except _Retry as r:
                failures += 1
                if failures > s.retries:
                    raise r.error from None
                sleep(s.backoff * 2 ** (failures - 1))
    finally:
        progress.close()
    os.replace(part, dest)
    return Downloaded(dest, size, resumed_from)
