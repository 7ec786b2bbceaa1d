"""Audio files out: the output formats (format, subtype and rate checked before any work) and AtomicWriter,
which streams blocks into a temporary file renamed over the final name only on commit(), so no partial
output is ever left under that name."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError, os_problem, sf_message

# extension -> (libsndfile major format, allowed subtypes, default subtype)
OUTPUT_FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "wav": ("WAV", ("PCM_16", "PCM_24", "FLOAT"), "PCM_16"),
    "flac": ("FLAC", ("PCM_16", "PCM_24"), "PCM_16"),
    "ogg": ("OGG", ("VORBIS",), "VORBIS"),
    "mp3": ("MP3", ("MPEG_LAYER_III",), "MPEG_LAYER_III"),
}
LOSSY_FORMATS = ("ogg", "mp3")  # their decoders overshoot the encoded peak: outputs keep headroom (pipeline)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def check_output_format(fmt: str, subtype: str | None, rate: int) -> str:
    """Validate an output format/subtype/rate; returns the subtype to use. Raises ValueError (a usage error)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    _, allowed, default = OUTPUT_FORMATS[fmt]
    if subtype is None:
        subtype = default
    subtype = subtype.upper()
    if subtype not in allowed:
        raise ValueError(f"--subtype {subtype} is not available for {fmt} (choose from {', '.join(allowed)})")
    if fmt == "mp3" and rate not in MP3_RATES:
        raise ValueError(f"mp3 cannot store {rate} Hz (use --sample-rate with one of {MP3_RATES})")
    return subtype


class AtomicWriter:
    """Stream float32 blocks [k] into `path` through a temporary file renamed on commit().

    Samples are clipped to [-1, 1] for fixed-point and lossy formats; `clipped` counts them. Non-finite
    samples are refused (AudioError): a NaN file is never written. Write failures (disk full, I/O error)
    raise AudioError naming the output. The temporary name is short and fixed-length
    (`.sepcli-<random>.part` in the destination folder), so any final name the file system accepts works.
    """

    def __init__(self, path: str | os.PathLike, rate: int, fmt: str, subtype: str | None = None,
                 register: Callable[[Path], None] | None = None):
        """`register(tmp)` is called with the temporary file's name before the file is created, so that an owner
        who removes the names it was given leaves nothing behind even when interrupted in between."""
        self.path = Path(path)
        major, _, _ = OUTPUT_FORMATS[fmt]
        subtype = check_output_format(fmt, subtype, rate)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AudioError(self.path.parent, f"cannot create the output folder ({os_problem(exc)})") from None
        self.tmp = self.path.parent / f".sepcli-{uuid.uuid4().hex[:12]}.part"
        if register is not None:
            register(self.tmp)
        self._clip = subtype != "FLOAT"
        self.clipped = 0
        self.frames = 0
        self.committed = False
        try:
            self._f = sf.SoundFile(os.fsencode(self.tmp), "w", samplerate=rate, channels=1, format=major,
                                   subtype=subtype)
        except Exception as exc:  # noqa: BLE001
            self._remove_tmp()
            raise AudioError(self.path, f"cannot write ({self._why(exc)})") from None

    def _why(self, exc: BaseException) -> str:
        """The cause of a write failure in words. libsndfile reports OS failures (disk full, quota, I/O
        error) only as "System error.": the C errno it left (read through soundfile's cffi handle) or, failing
        that, a full file system names the real cause."""
        if isinstance(exc, OSError):
            return os_problem(exc)
        if "system error" in str(exc).lower():
            try:
                code = int(sf._ffi.errno)  # errno of this thread's last C call (cffi saves it per thread)
            except Exception:  # noqa: BLE001  (private handle: absent in another soundfile version)
                code = 0
            if not code:
                try:
                    st = os.statvfs(self.tmp.parent)
                    code = errno.ENOSPC if st.f_bavail * st.f_frsize == 0 else 0
                except OSError:
                    code = 0
            if code:
                return os_problem(OSError(code, os.strerror(code)))
        return sf_message(exc, self.tmp)

    def write(self, block: np.ndarray) -> np.ndarray:
        """Append `block`; returns the samples as written (clipped for fixed-point and lossy formats)."""
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():
            raise AudioError(self.path, "refusing to write non-finite samples (NaN/Inf)")
        if self._clip:
            over = np.abs(block) > 1.0
            n = int(over.sum())
            if n:
                self.clipped += n
                block = np.clip(block, -1.0, 1.0)
        try:
            self._f.write(block)
        except Exception as exc:  # noqa: BLE001  (OSError, libsndfile errors, short writes)
            raise AudioError(self.path, f"cannot write ({self._why(exc)})") from None
        self.frames += len(block)
        return block

    def close(self) -> None:
        """Finish the temporary file (flush headers); errors (e.g. disk full) raise AudioError."""
        if not self._f.closed:
            try:
                self._f.close()
            except Exception as exc:  # noqa: BLE001
                raise AudioError(self.path, f"cannot write ({self._why(exc)})") from None

    def commit(self, overwrite: bool = True) -> Path:
        """Give the finished file its final name. With overwrite=False an existing file is never replaced,
        even one created a moment ago by another process (the name is claimed with a hard link, which fails
        if it exists); AudioError then."""
        self.close()
        if overwrite:
            try:
                os.replace(self.tmp, self.path)
            except IsADirectoryError:  # named for the output, not for the temporary file the OS error names
                raise AudioError(self.path, "is a folder; the output cannot replace it") from None
        else:
            try:
                os.link(self.tmp, self.path)
            except FileExistsError:
                raise AudioError(self.path, "exists (written by another process meanwhile?); not replaced") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if self.path.exists():  # a file system without hard links: check, then rename
                    raise AudioError(self.path, "exists; not replaced") from None
                os.replace(self.tmp, self.path)
            else:
                self._remove_tmp()
        self.committed = True
        return self.path

    def _remove_tmp(self) -> None:
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            try:
                f.close()
            except Exception:  # noqa: BLE001,S110
                pass
        self._remove_tmp()

    def __enter__(self) -> AtomicWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            self.abort()
