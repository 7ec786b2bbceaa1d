"""The outputs of one input: the speakers' files written through temporary files, renamed all together when every
one is finished, and the loudness decision (gains and flags) taken between the raw stream and the files.

One object (InputOutputs) owns the writers, the float spools and the names of every temporary file, so that a
failure or an interruption at any point is cleaned up in one place (`cleanup`): no partial output, all speakers
or none."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..audio.io import LOSSY_FORMATS, AtomicWriter, FloatSpool
from ..audio.loudness import PEAK_CEILING_DB, StreamingLoudness, db_to_gain, gain_to_db, target_gain
from .options import SeparationOptions
from .results import OutputInfo, _finite


def _lufs_gains(meters: list[StreamingLoudness], target: float, silent_lu: float) -> list[tuple[float, bool]]:
    """(gain, peak_limited) per output measured by `meters` to reach `target` LUFS; a silent output (no loudness,
    or `silent_lu` or more below the loudest) is not amplified to the target: gain 1."""
    loud = [m.loudness() for m in meters]
    top = max(loud)
    return [(1.0, False) if not math.isfinite(lk) or lk < top - silent_lu else target_gain(lk, m.peak, target)
            for lk, m in zip(loud, meters)]


def loudness_gains(o: SeparationOptions, peaks: list[float], meters: list[StreamingLoudness]
                   ) -> tuple[list[float], list[list[str]]]:
    """The gain and the flags of each speaker's raw stream, decided once the whole stream is known.

    `match` keeps the speakers' levels in the mix (they add up to the mixture) and lowers all of them by one
    common gain only if the loudest peak (`peaks`) would clip a fixed-point file (flag
    `scaled_to_avoid_clipping`); a LUFS target normalises each speaker measured by `meters` (flag `peak_limited`
    when the -1 dBFS ceiling lowered its gain)."""
    n_src = len(peaks) if o.loudness == "match" else len(meters)
    gains = [1.0] * n_src
    flags: list[list[str]] = [[] for _ in range(n_src)]
    if o.loudness == "match":
        peak = max(peaks)
        # a lossy file decodes with overshoots of a few percent above its encoded peak (measured: +0.3 dB
        # Vorbis, +0.07 dB MP3): it keeps the -1 dBFS headroom of the LUFS mode, a PCM file the full scale
        ceiling = db_to_gain(PEAK_CEILING_DB) if o.format in LOSSY_FORMATS else 1.0
        if o.subtype != "FLOAT" and peak > ceiling:
            g = ceiling * (1.0 - 1e-6) / peak
            gains = [g] * n_src
            flags = [["scaled_to_avoid_clipping"] for _ in range(n_src)]
    else:
        for k, (g, limited) in enumerate(_lufs_gains(meters, float(o.loudness), o.silent_lu)):
            gains[k] = g
            if limited:
                flags[k].append("peak_limited")
    return gains, flags


class InputOutputs:
    """Everything written for one input: its writers, its float spools and the name of every temporary file
    (given before the file is created, so that an interruption between creating a file and listing it still
    finds it). `journal(temps=..., committing=...)` records in the claim what a SIGKILL could leave behind (see
    claim._clean_after_dead_holder). `cleanup(ok)` is the one cleanup, on success or failure."""

    def __init__(self, outs: list[Path], rate: int, options: SeparationOptions, journal: Callable[..., None]):
        self.outs, self.rate, self.o, self.journal = outs, rate, options, journal
        self.writers: list[AtomicWriter] = []
        self.spools: list[FloatSpool] = []
        self.temporaries: list[Path] = []

    def _writers(self) -> None:
        o = self.o
        self.writers.extend(AtomicWriter(p, self.rate, o.format, o.subtype, self.temporaries.append)
                            for p in self.outs)
        self._journal_temps()

    def _journal_temps(self) -> None:
        self.journal(temps=[os.path.abspath(t) for t in self.temporaries])

    def write(self, stream: Iterable[np.ndarray], replace: bool) -> list[OutputInfo]:
        """Stream the speakers' blocks [n_src, k] into the outputs and rename them all when all are finished.
        `replace`: existing outputs are replaced (--overwrite, or a damaged output of a resumed batch), else never."""
        o, outs, rate = self.o, self.outs, self.rate
        n_src = len(outs)
        writers, spools = self.writers, self.spools
        meters = [StreamingLoudness(rate) for _ in range(n_src)]
        gains = [1.0] * n_src
        flags: list[list[str]] = [[] for _ in range(n_src)]
        if o.loudness == "off":  # one pass straight into the files
            self._writers()
            for block in stream:
                for k in range(n_src):  # the loudness and peak reported are the file's: measured after clipping
                    meters[k].update(writers[k].write(block[k]))
        else:  # raw float stream first; the gain depends on the whole output
            spools.extend(FloatSpool(p.parent, self.temporaries.append) for p in outs)
            self._journal_temps()
            measure = o.loudness != "match"  # `match` needs only the peaks of the raw streams
            raw = [StreamingLoudness(rate) for _ in range(n_src)]
            peaks = [0.0] * n_src
            for block in stream:
                for k in range(n_src):
                    spools[k].write(block[k])
                    if measure:
                        raw[k].update(block[k])
                    elif len(block[k]):
                        peaks[k] = max(peaks[k], float(np.abs(block[k]).max()))
            gains, flags = loudness_gains(o, peaks, raw)
            self._writers()
            for k in range(n_src):
                for block in spools[k].blocks():
                    block = block * np.float32(gains[k])
                    meters[k].update(writers[k].write(block))
                spools[k].close()
        loud = [m.loudness() for m in meters]
        level = [m.level() for m in meters]  # the loudness, or for outputs under 400 ms their ungated level
        top = max(level)
        silents = [not math.isfinite(level[k]) or level[k] < top - o.silent_lu for k in range(n_src)]
        keep = [not (silents[k] and o.drop_silent) for k in range(n_src)]
        for k in range(n_src):  # finish every file before renaming any: the renames are then back to back
            if keep[k]:
                writers[k].close()
            else:
                writers[k].abort()
        self.journal(committing=[os.path.abspath(outs[k]) for k in range(n_src) if keep[k]])
        for k in range(n_src):
            if keep[k]:
                writers[k].commit(overwrite=replace)
            elif replace and os.path.lexists(outs[k]):
                os.unlink(outs[k])  # replacing this input's outputs: a dropped speaker's old file goes too
        infos = []
        for k in range(n_src):
            silent, written = silents[k], keep[k]
            if silent:
                flags[k].append("silent")
            if writers[k].clipped:
                flags[k].append("clipped")
            frames = writers[k].frames
            infos.append(OutputInfo(speaker=k + 1, path=str(outs[k]) if written else None, sample_rate=rate,
                                    frames=frames, duration=frames / rate, loudness_lufs=_finite(loud[k]),
                                    peak_dbfs=_finite(gain_to_db(meters[k].peak)),
                                    gain_db=round(gain_to_db(gains[k]), 3), flags=flags[k], written=written))
        return infos

    def cleanup(self, ok: bool) -> None:
        """Remove every temporary file; unless `ok`, also the outputs already renamed (all speakers or none)."""
        for w in self.writers:
            w.abort()  # removes the temporary file (no-op after commit)
            if w.committed and not ok:
                w.path.unlink(missing_ok=True)  # all speakers or none
        for sp in self.spools:
            sp.close()
        for t in self.temporaries:  # one an interruption caught between its creation and its owner's list
            with contextlib.suppress(OSError):
                t.unlink(missing_ok=True)
