"""Read a few members of an untrusted zip archive (a downloaded model release) safely.

- A member's name is never used as a path: it serves to choose members and in messages only. A chosen member is
  copied into a file the caller names (`SafeZip.copy(member, dest, cap)`), so names such as `../../x`,
  `/etc/passwd` or `C:\\x` can do no harm; an archive holding such names is refused all the same, as no honest
  release has them. Symbolic-link and directory members are never candidates.
- Zip bombs: an archive declaring more than MAX_TOTAL bytes in all, more than MAX_MEMBERS members, or a member
  over RATIO_FLOOR bytes inflating more than MAX_RATIO times, is refused before anything is inflated.
- A header may lie: copies are capped (the smaller of the member's declared size and the caller's cap) while
  reading, so reading stops past the cap whatever the header says, and a member shorter or longer than declared,
  or failing its CRC, is refused.
- A truncated or corrupt archive, an encrypted member or an unknown compression method is an ArchiveError whose
  str() is one line naming the archive.

The official SPMamba release (SPMamba-LibriMix.zip) holds one checkpoint of about 25 MB and its conf.yml, far
inside these limits.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import FailedError, one_line

MAX_TOTAL = 2 << 30  # bytes all members may inflate to
MAX_MEMBERS = 10_000
MAX_RATIO = 100  # uncompressed / compressed size of one member, checked above RATIO_FLOOR
RATIO_FLOOR = 4 << 20
_CHUNK = 1 << 20


class ArchiveError(FailedError, ValueError):
    """The archive cannot be read safely; str() names the archive and the problem in one line."""


@dataclass(frozen=True)
class Member:
    """A regular-file member: `name` as stored (never a path), its declared uncompressed `size`."""

    name: str
    size: int
    info: zipfile.ZipInfo

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name.replace("\\", "/")).name

    @property
    def depth(self) -> int:
        return self.name.replace("\\", "/").strip("/").count("/")


def _unsafe_name(name: str) -> bool:
    """True for a name that would point outside the extraction folder or is not a plain relative path."""
    norm = name.replace("\\", "/")
    if not norm or "\x00" in norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    return any(part == ".." for part in norm.split("/"))


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < (1 << 30) else f"{n / (1 << 30):.1f} GiB"


class SafeZip:
    """An opened, checked archive: `members` lists its regular files; `copy` writes one to a path you name."""

    def __init__(self, path: Path, label: str | None = None):
        """`label`: how messages name the archive (default: its path)."""
        self.path = Path(path)
        self.label = label or str(path)
        try:
            self._zf = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as exc:
            raise ArchiveError(f"{self.label}: not a readable zip archive (truncated or damaged: {exc})") from None
        except OSError as exc:
            raise ArchiveError(f"{self.label}: cannot read ({exc.strerror or exc})") from None
        except Exception as exc:  # noqa: BLE001 - zipfile raises ValueError, EOFError, ... on damaged directories
            raise ArchiveError(f"{self.label}: not a readable zip archive ({type(exc).__name__}: "
                               f"{one_line(str(exc), 160)})") from None
        try:
            self.members = self._check()
        except BaseException:
            self._zf.close()
            raise

    def _check(self) -> list[Member]:
        infos = self._zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveError(f"{self.label}: {len(infos)} members, more than a model release holds "
                               f"(limit {MAX_MEMBERS}); refused")
        total = 0
        out = []
        for info in infos:
            if _unsafe_name(info.filename):
                raise ArchiveError(f"{self.label}: member name {info.filename!r} points outside the archive's "
                                   "folder; refused")
            total += info.file_size
            if (info.file_size > RATIO_FLOOR
                    and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
                raise ArchiveError(f"{self.label}: member {info.filename!r} would inflate {_size(info.compress_size)} "
                                   f"to {_size(info.file_size)} (over {MAX_RATIO} times: a zip bomb?); refused")
            if info.is_dir() or _is_symlink(info):
                continue
            out.append(Member(info.filename, info.file_size, info))
        if total > MAX_TOTAL:
            raise ArchiveError(f"{self.label}: members would inflate to {_size(total)}, over the {_size(MAX_TOTAL)} "
                               "limit; refused")
        return out

    def copy(self, member: Member, dest: Path, cap: int) -> int:
        """Inflate `member` into the new file `dest` (a path the caller chose, never the member's name), reading
        at most min(declared size, `cap`) bytes; returns the size. Raises ArchiveError (then `dest` is removed)."""
        what = f"{self.label}: member {member.name!r}"
        if member.size > cap:
            raise ArchiveError(f"{what} is {_size(member.size)}, over the {_size(cap)} limit; refused")
        if member.info.flag_bits & 0x1:
            raise ArchiveError(f"{what} is encrypted; refused")
        limit = min(member.size, cap)
        n = 0
        try:
            with self._zf.open(member.info) as src, open(dest, "xb") as out:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    n += len(chunk)
                    if n > limit:
                        raise ArchiveError(f"{what} is larger than its header says ({member.size} bytes); refused")
                    out.write(chunk)
            if n != member.size:
                raise ArchiveError(f"{what} is shorter than its header says ({n} of {member.size} bytes): "
                                   "truncated or damaged")
        except ArchiveError:
            Path(dest).unlink(missing_ok=True)
            raise
        except zipfile.BadZipFile as exc:  # e.g. "Bad CRC-32", "Bad magic number for file header"
            Path(dest).unlink(missing_ok=True)
            raise ArchiveError(f"{what} is damaged ({one_line(str(exc), 160)})") from None
        except OSError as exc:  # writing the copy (disk full, ...)
            Path(dest).unlink(missing_ok=True)
            raise ArchiveError(f"{what}: cannot copy it out ({exc.strerror or exc})") from None
        except BaseException as exc:
            Path(dest).unlink(missing_ok=True)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
                raise
            # zlib.error, EOFError (cut short), NotImplementedError (compression method), RuntimeError, ...
            raise ArchiveError(f"{what} cannot be read: truncated or damaged ({type(exc).__name__}: "
                               f"{one_line(str(exc), 160)})") from None
        return n

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
