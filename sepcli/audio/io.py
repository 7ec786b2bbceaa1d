"""Audio files in and out, streamed in blocks.

Contract:
- `AudioInput(path)` opens any file libsndfile decodes (WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...) and yields
  mono float32 blocks (downmix = channel mean, or one 1-based channel) through `blocks()`, which rewinds, so a
  caller can make several passes without holding the file in memory. `ArrayInput` does the same for an array.
- `AtomicWriter` writes to a hidden temporary file in the destination folder and renames it over the final
  name only on `commit()`; `abort()` (or an exception inside a `with` block) removes it, so no partial output
  is ever left under the final name.
- `FloatSpool` is a raw float32 temporary stream (for outputs whose gain depends on the whole signal).
- Problems with a file raise `AudioError`, whose message names the file and the problem in one line
  (a folder, a symbolic-link loop, an unreadable or empty file, undecodable bytes, no samples, a rate
  outside 8-192 kHz). Non-finite samples (NaN/Inf in float files) are replaced by 0 and counted in
  `AudioInput.nonfinite`, so they never reach a model or an output file.
- `AtomicWriter` refuses non-finite samples (AudioError) and turns write failures (disk full, I/O errors)
  into AudioError naming the output; `commit(overwrite=False)` never replaces an existing file (hard link
  claim, so a concurrent writer of the same name cannot be clobbered).

Where: AudioError and the messages in errors.py, the writing side (output formats, AtomicWriter) in writing.py;
reading, the two temporary spools (stdin, FloatSpool) here. Every name stays importable from here.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import one_line
from .errors import AudioError, os_problem, sf_message
from .writing import LOSSY_FORMATS, MP3_RATES, OUTPUT_FORMATS, AtomicWriter, check_output_format

__all__ = ["BLOCK", "MIN_RATE", "MAX_RATE", "AudioError", "sf_message", "os_problem", "check_readable",
           "riff_declared_frames", "AudioInput", "ArrayInput", "spool_stdin", "FloatSpool", "OUTPUT_FORMATS",
           "LOSSY_FORMATS", "MP3_RATES", "check_output_format", "AtomicWriter"]

BLOCK = 65536  # frames per read block: large enough for speed, small enough to keep memory flat
MIN_RATE, MAX_RATE = 8000, 192000
_MANY_CHANNELS = 64  # an array with more channels than this and than samples is taken for channels-first


def check_readable(path: str | os.PathLike) -> int:
    """Raise AudioError unless `path` is a readable, non-empty regular file; returns its size in bytes.

    Checked before libsndfile sees the file so that a folder, a link loop, a device, a permission problem or
    an empty file each get their own one-line message (libsndfile reports most of them as "System error")."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise AudioError(path, "broken symbolic link (its target does not exist)") from None
        raise AudioError(path, os_problem(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(path, "is not a regular file (devices, pipes and sockets cannot be read twice)")
    try:
        with open(path, "rb") as fh:  # permission check that also holds for root-owned mounts
            fh.read(1)
    except OSError as exc:
        raise AudioError(path, f"cannot read ({os_problem(exc)})") from None
    if st.st_size == 0:
        raise AudioError(path, "is empty (0 bytes)")
    return st.st_size


def riff_declared_frames(fd: int) -> int | None:
    """The frame count a RIFF/WAVE header declares (its data chunk's size over the block size), read from the
    descriptor without moving it; None when the file is not RIFF/WAVE or the size is a streaming placeholder
    (0, 0xFFFFFFFF, or SoX's 0x7FFFF000 in whole frames, written before the length was known). libsndfile
    reports the frames the file holds, so a WAV cut short (a copy or a recording that stopped) is only seen by
    comparing with this."""
    import struct

    head = os.pread(fd, 1 << 16, 0)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block = struct.unpack("<H", head[pos + 20:pos + 22])[0]  # nBlockAlign: bytes per frame
        elif cid == b"data":
            # SoX writes its placeholder 0x7FFFF000 rounded down to whole frames
            if not block or size in (0, 0xFFFFFFFF, 0x7FFFF000 // block * block):
                return None
            return size // block
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


class AudioInput:
    """A seekable audio file read in mono float32 blocks. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike, channel: int | None = None):
        self.path = Path(path)
        self.nonfinite = 0  # NaN/Inf samples replaced by 0 in the last pass
        self.decoded = 0  # frames the last full pass decoded (frames is the header's count; see declared_frames)
        self._passes = 0
        self._f = None
        check_readable(self.path)
        try:  # every pass reads this descriptor: a file put at the path meanwhile is not read
            self._fd = os.open(os.fsencode(self.path), os.O_RDONLY)  # bytes: names that are not UTF-8 open too
        except OSError as exc:
            raise AudioError(path, f"cannot read ({os_problem(exc)})") from None
        self._f = self._open()
        self.rate = int(self._f.samplerate)
        self.channels = int(self._f.channels)
        self.frames = int(self._f.frames)
        # what the header declares, when it says more than the file holds (a cut WAV): see `decoded`
        self.declared_frames = max(self.frames, (riff_declared_frames(self._fd) or 0)
                                   if self._f.format in ("WAV", "WAVEX") else 0)  # WAVEX: WAVE_FORMAT_EXTENSIBLE
        self.format = self._f.format
        self.subtype = self._f.subtype
        if not (MIN_RATE <= self.rate <= MAX_RATE):
            self.close()
            raise AudioError(path, f"sample rate {self.rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        if self.frames <= 0:
            self.close()
            raise AudioError(path, "contains no audio samples")
        if channel is not None and not (1 <= channel <= self.channels):
            self.close()
            raise AudioError(path, f"has {self.channels} channel(s); --channel {channel} does not exist")
        self.channel = channel

    def _open(self) -> sf.SoundFile:
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            return sf.SoundFile(self._fd, closefd=False)
        except Exception as exc:  # libsndfile's messages vary by version; report them in one line  # noqa: BLE001
            fd = self._fd
            self.close()
            raise AudioError(self.path, f"cannot decode audio ({sf_message(exc, fd)})") from None

    def blocks(self, blocksize: int = BLOCK) -> Iterator[np.ndarray]:
        """Mono float32 blocks from the start of the file. A later pass opens the decoder again on the same descriptor
        rather than seek: libsndfile cannot seek in GSM 6.10, G.721 or NMS-ADPCM audio."""
        blocksize = max(1024, min(blocksize, (1 << 22) // max(self.channels, 1)))  # <= 16 MB per read
        self.nonfinite = 0
        decoded = 0
        if self._passes:  # (tell() too fails on those)
            self._f.close()
            self._f = None
            self._f = self._open()
        self._passes += 1
        size = blocksize  # after a decoding error: reads halved down to one frame, to keep all that decodes
        while True:
            try:
                data = self._f.read(size, dtype="float32", always_2d=True)
            except AudioError:
                raise
            except Exception as exc:  # noqa: BLE001
                # the failed read may have held good frames before the damage (a cut FLAC "loses sync" there):
                # read them again in halves
                if size > 1 and self._reopen_at(decoded):
                    size //= 2
                    continue
                if decoded == 0:
                    raise AudioError(self.path, f"decoding failed ({one_line(exc)})") from None
                # what decoded before the damage is kept and `decoded` says how much, as for an mp3 that ends
                # early (the caller flags it); every pass stops at the same frame
                self.decoded = decoded
                return
            if len(data) == 0:
                self.decoded = decoded
                return
            decoded += len(data)
            bad = ~np.isfinite(data)
            if bad.any():  # NaN/Inf in a float file: silence them rather than poison every output
                self.nonfinite += int(bad.sum())
                data[bad] = 0.0
            if self.channel is not None:
                yield np.ascontiguousarray(data[:, self.channel - 1])
            elif data.shape[1] == 1:
                yield data[:, 0]
            else:
                yield data.mean(axis=1, dtype=np.float32)

    def _reopen_at(self, frame: int) -> bool:
        """Open the decoder again and seek to `frame` (after a failed read); False when that cannot be done."""
        try:
            self._f.close()
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._f = sf.SoundFile(self._fd, closefd=False)
            self._f.seek(frame)
            return True
        except Exception:  # noqa: BLE001 (not seekable, or the header itself is gone)
            return False

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            f.close()
            self._f = None
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def __enter__(self) -> AudioInput:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArrayInput:
    """An in-memory signal with the same interface as AudioInput. x: [T] or [T, channels]."""

    def __init__(self, x: np.ndarray, rate: int, channel: int | None = None, name: str = "<array>"):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] == 0:
            raise AudioError(name, f"expected a non-empty [T] or [T, channels] array, got shape {x.shape}")
        if x.shape[1] > max(x.shape[0], _MANY_CHANNELS):
            raise AudioError(name, f"shape {x.shape} has more channels than samples: pass [T, channels] (the "
                                   f"transpose of a channels-first [channels, T] array)")
        if not (MIN_RATE <= int(rate) <= MAX_RATE):
            raise AudioError(name, f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        if channel is not None and not (1 <= channel <= x.shape[1]):
            raise AudioError(name, f"has {x.shape[1]} channel(s); channel {channel} does not exist")
        self.path = Path(name)
        self.rate, self.channels, self.frames = int(rate), x.shape[1], x.shape[0]
        self.decoded = self.frames
        self.channel = channel
        self.format, self.subtype = "ARRAY", "FLOAT"
        bad = ~np.isfinite(x)
        self.nonfinite = int(bad.sum())
        self._x = np.where(bad, np.float32(0), x) if self.nonfinite else x  # never modifies the caller's array

    def blocks(self, blocksize: int = BLOCK) -> Iterator[np.ndarray]:
        for i in range(0, self.frames, blocksize):
            d = self._x[i : i + blocksize]
            if self.channel is not None:
                yield np.ascontiguousarray(d[:, self.channel - 1])
            else:
                yield d.mean(axis=1, dtype=np.float32) if d.shape[1] > 1 else np.ascontiguousarray(d[:, 0])

    def close(self) -> None:
        pass

    def __enter__(self) -> ArrayInput:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        pass


def spool_stdin(directory: str | os.PathLike | None = None, stream=None) -> Path:
    """Copy audio bytes from stdin to a temporary file (in `directory`) and return its path.

    libsndfile needs a seekable file for the two passes; the copy is streamed, never held in memory.
    The caller deletes the file.
    """
    stream = stream if stream is not None else sys.stdin.buffer
    fd, name = tempfile.mkstemp(prefix=".sepcli-stdin-", suffix=".audio", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    except BaseException as exc:  # interrupted or disk full while copying: leave nothing behind
        os.unlink(name)
        if isinstance(exc, OSError):
            raise AudioError("-", f"cannot store stdin ({os_problem(exc)})") from None
        raise
    if os.path.getsize(name) == 0:
        os.unlink(name)
        raise AudioError("-", "stdin is empty (no audio bytes)")
    return Path(name)


class FloatSpool:
    """A temporary raw float32 stream on disk: write blocks, then read them back in blocks once."""

    def __init__(self, directory: str | os.PathLike, register: Callable[[Path], None] | None = None):
        """`register(path)`: as for AtomicWriter, called with the name before the file exists."""
        self.path = Path(directory) / f".sepcli-{uuid.uuid4().hex[:12]}.f32.part"
        if register is not None:
            register(self.path)
        self._f = os.fdopen(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb")
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        """Append a block; AudioError naming the folder if the file system refuses (e.g. disk full).
        (File.write, not ndarray.tofile: tofile's OSError carries no errno, so the cause would be lost.)"""
        try:
            self._f.write(np.ascontiguousarray(block, dtype=np.float32).data)
        except OSError as exc:
            raise AudioError(self.path.parent, f"cannot write temporary data ({os_problem(exc)})") from None
        self.frames += len(block)

    def blocks(self, blocksize: int = BLOCK) -> Iterator[np.ndarray]:
        try:
            self._f.close()  # flushes: a full disk may show here
        except OSError as exc:
            raise AudioError(self.path.parent, f"cannot write temporary data ({os_problem(exc)})") from None
        with open(self.path, "rb") as f:
            while True:
                d = np.fromfile(f, dtype=np.float32, count=blocksize)
                if len(d) == 0:
                    return
                yield d

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:
                pass  # the file is being discarded anyway
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
