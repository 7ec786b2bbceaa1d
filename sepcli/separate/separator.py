"""Separator: the streaming core (decode, resample, segment, model, stitch, resample back) and the writing of one
input's outputs (see the package's docstring for the data flow and the reliability rules)."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..audio.chunking import SegmentStream, Stitcher, align_order, plan_segments, segment_geometry
from ..audio.io import (
    ArrayInput,
    AudioError,
    AudioInput,
    check_output_format,
    os_problem,
)
from ..audio.loudness import StreamingLoudness, db_to_gain
from ..audio.resample import StreamResampler, expected_length
from ..errors import FailedError
from ..runtime.device import autocast, bf16_pays, configure, resolve_precision, select_device
from ..runtime.loader import LoadedModel, ModelError, load_model
from .allocator import keep_freed_memory
from .claim import Busy, OutputClaim
from .options import SHIFT_STEP_S, SeparationOptions, UsageError, make_output_folder, output_paths
from .outputs import InputOutputs, _lufs_gains
from .results import FileResult, _dropped_output, _existing_output, _Timer


class Cancelled(FailedError):
    """Raised inside a file's processing when Separator.cancel() was called (an interrupted batch): the file
    fails; the exit code of the run (130/143) comes from the signal, not from this error."""


class Separator:
    """Separate recordings with one loaded model. Thread-safe: several files may be processed at once
    (batch --jobs); model calls are serialised so one model runs at a time."""

    def __init__(self, model: str | os.PathLike | LoadedModel | object = "default",
                 options: SeparationOptions | None = None, **overrides):
        self.options = replace(options or SeparationOptions(), **overrides).validated()
        try:
            configure(self.options.threads)
            keep_freed_memory()  # reuse freed tensors' pages instead of faulting fresh ones in (allocator.py)
            self.device = select_device(self.options.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if isinstance(model, (str, os.PathLike)):
            self.model = load_model(model, self.device)
        elif isinstance(model, LoadedModel):
            self.model = model
        else:
            if not callable(model) or not hasattr(model, "sample_rate") or not hasattr(model, "n_src"):
                raise ModelError("a model object must be callable [B, T] -> [B, n_src, T] and have "
                                 "sample_rate and n_src attributes")
            self.model = LoadedModel(network=model, sample_rate=int(model.sample_rate), n_src=int(model.n_src),
                                     segment=float(getattr(model, "segment", 4.0)),
                                     overlap=float(getattr(model, "overlap", 0.25)),
                                     input_loudness=getattr(model, "input_loudness", None),
                                     name=str(getattr(model, "name", type(model).__name__)))
        if isinstance(self.model.network, torch.nn.Module):
            self.model.network.eval().to(self.device)
        try:
            self.precision = resolve_precision(self.options.precision, self.device, bf16_pays(self.model.network),
                                               self.model.arch or self.model.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.dtype = self.precision.dtype
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Make files being processed in other threads stop at their next block (status `error`,
        "cancelled", nothing written). Cleared by reset_cancel()."""
        self._cancel.set()

    def reset_cancel(self) -> None:
        self._cancel.clear()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled (the run was interrupted)")

    def runtime_info(self) -> dict:
        """Device, threads, inference dtype and the selective-scan backend that runs (for reports)."""
        if self.model.arch == "spmamba":
            from ..kernels import backend_for

            backend = backend_for(torch.zeros(1, device=self.device))
        else:
            backend = "none (network has no selective scan)"
        dtype = "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return {"device": str(self.device), "threads": torch.get_num_threads(), "dtype": dtype,
                "precision": self.precision.name, "precision_reason": self.precision.reason,
                "scan_backend": backend}

    # ------------------------------------------------------------------ core stream
    def segment_geometry(self) -> tuple[int, int]:
        """(segment length, overlap length) in samples at the model's rate, from the options or else the model's
        defaults (length 0: the whole input in one segment); sepcli.audio.chunking.segment_geometry."""
        o, m = self.options, self.model
        seg = m.segment if o.segment is None else o.segment
        ov = m.overlap if o.overlap is None else o.overlap
        return segment_geometry(m.sample_rate, seg, ov)

    def _shift_step(self) -> int:
        """Samples by which each --shifts pass delays the input more than the previous one (at least 1)."""
        return max(1, round(SHIFT_STEP_S * self.model.sample_rate))

    def network_passes(self, n: int) -> dict[int, int]:
        """{input length in samples: number of network passes of that length} that separating n samples at the
        model's rate makes: the segment plan (sepcli.audio.chunking.plan_segments), each segment once per
        --shifts pass (the k-th longer by its k * SHIFT_STEP_S delay). Batching stacks passes of one length
        in one call: the same work."""
        length, ov = self.segment_geometry()
        step = self._shift_step()
        out: dict[int, int] = {}
        for start, stop in plan_segments(n, length, ov):
            if stop <= start:  # no sample: the network is not called (an input shorter than one sample)
                continue
            for k in range(self.options.shifts):
                key = stop - start + k * step
                out[key] = out.get(key, 0) + 1
        return out

    def _forward(self, x: np.ndarray, timer: _Timer) -> np.ndarray:
        """[B, T] float32 -> [B, n_src, T] float32 through the network; with --shifts N, the mean of N passes
        with the input delayed by k * SHIFT_STEP_S (k = 0..N-1), each pass's sources put in the first pass's
        order and sign. A network with a strided encoder sees each delay on a different frame grid, so the passes'
        errors partly cancel (Demucs's "shift trick"; the default model's gain: its MODEL_CARD.md, "Inference
        options")."""
        y = self._net(x, timer)
        if self.options.shifts == 1:
            return y
        step = self._shift_step()
        total = y.astype(np.float64)
        for k in range(1, self.options.shifts):
            d = k * step
            ys = self._net(np.pad(x, ((0, 0), (d, 0))), timer)[:, :, d:]
            for b in range(len(x)):
                aligned = ys[b, list(align_order(y[b], ys[b]))].astype(np.float64)
                # SI-SNR-trained networks may return a source negated (SI-SNR ignores the sign): a pass whose source
                # anti-correlates with the first pass's is negated back before the mean, which would cancel it
                sign = np.where(np.einsum("st,st->s", aligned, y[b].astype(np.float64)) < 0, -1.0, 1.0)
                total[b] += aligned * sign[:, None]
        return (total / self.options.shifts).astype(np.float32)

    def _net(self, x: np.ndarray, timer: _Timer) -> np.ndarray:
        """One pass: [B, T] float32 -> [B, n_src, T] float32 (model calls serialised across threads)."""
        with self._lock:
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast(self.device, self.dtype):
                y = self.model.network(torch.from_numpy(x).to(self.device))
            y = y.float().cpu().numpy()
            timer.model += time.perf_counter() - t0
            timer.model_calls += 1
        if y.shape != (x.shape[0], self.model.n_src, x.shape[1]):
            raise ModelError(f"model {self.model.name!r} returned shape {tuple(y.shape)} for input "
                             f"{tuple(x.shape)}; expected [B, {self.model.n_src}, T]")
        if not np.isfinite(y).all():
            raise ModelError(f"model {self.model.name!r} produced NaN/Inf values for this input; "
                             f"nothing written")
        return y

    def output_rate(self, input_rate: int) -> int:
        sr = self.options.sample_rate
        return input_rate if sr == "input" else self.model.sample_rate if sr == "model" else int(sr)

    def _stream(self, src, timer: _Timer, progress: Callable[[float], None] | None = None
                ) -> Iterator[np.ndarray]:
        """Yield separated blocks [n_src, k] at the output rate; exactly the expected length in total."""
        o, m = self.options, self.model
        msr, n_src = m.sample_rate, m.n_src
        length, ov_len = self.segment_geometry()
        # --loudness off and the whole input in one segment: the network's own output for the samples as given
        # (no input normalisation, no stitching gain), as the authors' code computes it
        raw = o.loudness == "off"
        in_gain = 1.0
        if m.input_loudness is not None and not (raw and length <= 0):  # first pass: the level it was trained on
            meter = StreamingLoudness(src.rate)
            for b in src.blocks():
                meter.update(b)
            lufs = meter.loudness()
            if math.isfinite(lufs):
                in_gain = float(np.clip(db_to_gain(m.input_loudness - lufs), 1e-3, 1e3))
        out_rate = self.output_rate(src.rate)
        limit = src.frames if o.sample_rate == "input" else None
        fwd = StreamResampler(src.rate, msr)
        back = StreamResampler(msr, out_rate, channels=n_src, limit=limit)
        segs = SegmentStream(length, ov_len)
        stitch = Stitcher(n_src, ov_len, raw_whole=raw)
        pending: list[tuple[int, np.ndarray, bool]] = []

        def run_batch() -> Iterator[np.ndarray]:
            self._check_cancel()
            lens = [len(s) for _, s, _ in pending]
            ys: list = [None] * len(pending)
            # one model call per segment length: a short last segment zero-padded to its batch's length would be
            # separated with that padding in view (the networks are not causal), so --batch-size changed the output
            for n in dict.fromkeys(lens):
                idx = [i for i, k in enumerate(lens) if k == n]
                if n == 0:  # an input shorter than one sample at the model's rate: nothing to separate
                    y = np.zeros((len(idx), n_src, 0), np.float32)  # (networks need T >= 1); output is silence
                else:
                    start, _, last = pending[idx[0]]
                    g = 1.0 if raw and start == 0 and last else in_gain  # (the whole input is alone in its call)
                    y = self._forward(np.stack([pending[i][1] for i in idx]) * np.float32(g), timer)
                for j, i in enumerate(idx):
                    ys[i] = y[j]
            for i, (_, s, last) in enumerate(pending):
                done = stitch.push(ys[i], s, last)
                if done.shape[1]:
                    out = back.process(done.T if n_src > 1 else done[0])
                    if len(out):
                        yield out.T if n_src > 1 else out[None]
            pending.clear()

        def feed(items) -> Iterator[np.ndarray]:
            for item in items:
                pending.append(item)
                if len(pending) >= o.batch_size:
                    yield from run_batch()

        seen = 0
        for block in src.blocks():
            self._check_cancel()
            seen += len(block)
            yield from feed(segs.push(fwd.process(block)))
            if progress is not None:
                progress(min(seen / max(src.frames, 1), 1.0))
        yield from feed(segs.push(fwd.finish()))
        yield from feed(segs.finish())
        if pending:
            yield from run_batch()
        if o.sample_rate == "input":
            total = fwd.n_in
        elif o.sample_rate == "model":
            total = fwd.n_out
        else:
            total = expected_length(fwd.n_in, src.rate, out_rate)
        if total == 0:  # (a file whose header promised more than decodes; separate_file checks the header)
            raise _too_short(src.path, fwd.n_in, src.rate, out_rate)
        tail = back.finish(total)
        if len(tail):
            yield tail.T if n_src > 1 else tail[None]

    # ------------------------------------------------------------------ arrays
    def separate_array(self, x: np.ndarray, sample_rate: int) -> np.ndarray:
        """Separate an in-memory signal x ([T] or [T, channels]) -> [n_src, T_out] float32 at the output rate
        (by default the input's rate and length), with the same loudness rules as files (no clipping guard
        is needed for float arrays in `match` mode; `off` in one segment gives the network's own samples)."""
        return self._separate_array(x, sample_rate, _Timer())

    def _separate_array(self, x: np.ndarray, sample_rate: int, timer: _Timer) -> np.ndarray:
        src = ArrayInput(x, sample_rate, channel=self.options.channel)
        y = np.concatenate(list(self._stream(src, timer)), axis=1)
        lo = self.options.loudness
        if isinstance(lo, float):
            meters = [StreamingLoudness(self.output_rate(sample_rate)) for _ in range(len(y))]
            for k, meter in enumerate(meters):
                meter.update(y[k])
            for k, (g, _) in enumerate(_lufs_gains(meters, lo, self.options.silent_lu)):
                y[k] *= g
        return y

    # ------------------------------------------------------------------ files
    def planned_outputs(self, stem: str, out_dir: str | os.PathLike) -> list[Path]:
        return output_paths(self.options.name, stem, self.options.format, self.model.n_src, Path(out_dir))

    def separate_file(self, path: str | os.PathLike, out_dir: str | os.PathLike, stem: str | None = None,
                      protect: set[Path] | None = None,
                      progress: Callable[[float], None] | None = None, resume: bool = False) -> FileResult:
        """Separate one file into `out_dir`. Never raises for a problem with this input: the result's status
        is `error` with a one-line message naming the file (an unexpected exception is kept, for --debug, as
        `result.exception`). `protect` lists paths that must never be written (the inputs). UsageError (bad
        options) is raised; so are KeyboardInterrupt/SystemExit, after removing every temporary file and any
        output of this input already renamed (all speakers or none).

        With `resume` (batch), an input whose outputs all exist is `skipped`, and one whose outputs another
        live sepcli process is writing is `skipped` with flag `busy`; without it both are errors unless
        options.overwrite."""
        t_start = time.perf_counter()
        path = Path(path)
        stem = stem if stem is not None else path.stem
        result = FileResult(input=str(path), status="error")
        o = self.options
        timer = _Timer()
        written: InputOutputs | None = None  # this input's writers, spools and temporary files
        claim: OutputClaim | None = None
        try:
            outs = self.planned_outputs(stem, out_dir)
            protected = {os.path.realpath(p) for p in (protect or set())} | {os.path.realpath(path)}
            for p in outs:
                if os.path.realpath(p) in protected:
                    raise UsageError(f"output {p} would overwrite an input")
            # a lock file means another process is at it, or one died there: decided once the claim is held
            if not OutputClaim.lock_path(outs).exists() and not self._outputs_free(outs, resume, result):
                return result
            with AudioInput(path, channel=o.channel) as src:  # a bad input creates no folder and no lock
                rate = self.output_rate(src.rate)
                if expected_length(src.frames, src.rate, rate) == 0:
                    raise _too_short(path, src.frames, src.rate, rate)
                for parent in dict.fromkeys(p.parent for p in outs):
                    make_output_folder(parent)
                claim = OutputClaim(outs)
                if not self._outputs_free(outs, resume, result):  # again, now that no one else can write them
                    return result
                result.input_rate, result.input_channels = src.rate, src.channels
                result.duration = src.frames / src.rate
                try:
                    check_output_format(o.format, o.subtype, rate)
                except ValueError as exc:  # mp3 and an input rate it cannot store: this file's problem
                    raise UsageError(f"{exc} ({src.rate} Hz input)") from None
                replace = o.overwrite or "replaced_damaged_output" in result.flags
                written = InputOutputs(outs, rate, o, claim.record)
                infos = written.write(self._stream(src, timer, progress), replace)
                replaced, decoded, declared = src.nonfinite, src.decoded, src.declared_frames
            result.outputs = infos
            result.status = "ok"
            flags = {f for i in infos for f in i.flags} | set(result.flags)
            if replaced:
                flags.add("nonfinite_input_replaced")
            if decoded < declared:  # a cut or damaged file (mp3 most often): the outputs hold what decodes
                flags.add("truncated_input")
                result.duration = decoded / result.input_rate
            if claim.recovered:
                flags.add("recovered_interrupted_run")
            result.flags = sorted(flags)
        except Busy as exc:
            if resume and not o.overwrite:
                result.status, result.flags = "skipped", ["busy"]
            result.error = f"{path}: {exc}"
        except (AudioError, ModelError) as exc:
            result.error = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        except (UsageError, Cancelled) as exc:
            result.error = f"{path}: {exc}"
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
            result.error = f"{path}: {os_problem(exc)}{where}"
        except MemoryError:
            result.error = f"{path}: out of memory (try a smaller --segment or --batch-size)"
        except Exception as exc:  # a bug or an unforeseen library error: still one line for this file  # noqa: BLE001
            result.error = f"{path}: unexpected error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
            result.exception = exc
        finally:
            if written is not None:
                written.cleanup(ok=result.status == "ok")
            if claim is not None:
                claim.release()
        total = time.perf_counter() - t_start
        result.timings = {"total_s": round(total, 4), "model_s": round(timer.model, 4),
                          "outside_model_s": round(total - timer.model, 4)}
        if result.duration:
            result.rtf = round(total / result.duration, 5)
        return result

    def _outputs_free(self, outs: list[Path], resume: bool, result: FileResult) -> bool:
        """False (result marked skipped) when resuming and the input is finished (every output exists, or with
        --drop-silent at least one); UsageError when an output exists and may not be replaced; True when the
        input is to be processed."""
        if self.options.overwrite:
            return True
        exist = [p.exists() for p in outs]
        # with --drop-silent a finished input may have fewer outputs than speakers (the silent ones were not
        # written); since outputs are committed all-or-none, any output present means the input was finished
        if resume and (all(exist) or (self.options.drop_silent and any(exist))):
            infos = [_existing_output(k + 1, q) if e else _dropped_output(k + 1)
                     for k, (q, e) in enumerate(zip(outs, exist))]
            lengths = {i.frames for i, e in zip(infos, exist) if e}  # the speakers' files are written equally long
            if 0 in lengths or len(lengths) > 1:  # damaged since (emptied, cut short, overwritten)
                result.flags = ["replaced_damaged_output"]  # not finished after all: done again, replacing it
                return True
            result.status, result.outputs = "skipped", infos
            return False
        for p, e in zip(outs, exist):
            if e:
                raise UsageError(f"output {p} exists (use --overwrite to replace it)")
        return True


def _too_short(path, frames: int, rate: int, out_rate: int) -> AudioError:
    return AudioError(path, f"too short: {frames} sample(s) at {rate} Hz are no sample at the output rate of "
                            f"{out_rate} Hz")
