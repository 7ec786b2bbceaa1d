"""Where a network's time goes: a per-part breakdown from torch.profiler (the counted FLOPs and the bound are
sepcli.runtime.roofline's).

Reusable by any script (bench_nets prints it; the before/after tables of docs/performance.md come from it):

    from benchmarks.net_profile import breakdown, format_breakdown
    parts = breakdown(model, x)               # {"STFT": s, "convolutions": s, ..., "total": s}
    print(format_breakdown(parts, audio_s))
    split = scan_split(model, x)              # {"total": s, "scan": s, "non_scan": s}, without the profiler

Parts (self CPU time of every profiled op, attributed in this order):
- scan: inside `selective_scan` (the numba kernel and its boundary casts/copies);
- STFT: inside aten::stft / aten::istft;
- attention: inside a GridNetBlock's `_attention` (scores, softmax, weighted sum; not the Q/K/V 1x1 convolutions);
- norms: inside a norm module (LayerNormalization4D/4DCF, GroupNorm, RMSNorm), `sepcli.nets.mamba.rms_normalise` or
  the numba norm pass `sepcli.nets.bimamba_kernels.rms_norm_window_pair_into`;
- copies: copy_, cat, stack, flip, clone, contiguous, pad, unfold/im2col, to/_to_copy (layout changes, casts),
  and the numba unfold pass (`sepcli.nets.patch_unfold.unfold_into`);
- convolutions: inside any convolution op (the Conv2d/ConvTranspose 1x1-3x3s, the intra/inter ConvTranspose1d,
  the Mamba depthwise conv1d) or the numba depthwise conv pass (`sepcli.nets.causal_conv.conv_silu_rows_into`;
  versions before it was labelled counted it under python/other);
- Mamba projections: inside any other matmul / linear (in_proj, x_proj, dt_proj, out_proj);
- elementwise: every other op (silu, softplus, adds, PReLU, ...) and the numba residual pass
  (`sepcli.nets.bimamba_kernels.residual_window_pair_into`);
- python/other: the forward's wall time not inside any op (interpreter, dispatch, profiler overhead).
The labels are added from outside (wrapping functions and module instances while profiling), so the same
helper measures any version of the network without changes to it.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch
from torch import nn

PARTS = ("STFT", "convolutions", "Mamba projections", "scan", "attention", "norms", "copies", "elementwise",
         "python/other")
_SCOPE = "part:"
COPY_OPS = {"aten::copy_", "aten::cat", "aten::stack", "aten::flip", "aten::clone", "aten::contiguous",
            "aten::constant_pad_nd", "aten::pad", "aten::im2col", "aten::col2im", "aten::_to_copy", "aten::to",
            "aten::reflection_pad1d", "aten::index", "aten::index_select", "aten::repeat", "aten::zero_",
            "aten::fill_"}
CONV_OPS = ("conv", "mkldnn_convolution", "_convolution", "slow_conv")
GEMM_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear", "aten::baddbmm",
            "aten::_weight_int4pack_mm", "aten::mkldnn_linear"}


def _wrap(fn, label: str):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with torch.profiler.record_function(_SCOPE + label):
            return fn(*args, **kwargs)
    return inner


@contextlib.contextmanager
def labelled(model: nn.Module):
    """Label the scan, the attention and the norms of `model` for the profiler (restored on exit)."""
    import sepcli.nets.mamba as mamba_mod

    patched: list[tuple[object, str, object]] = []

    def patch(obj, name: str, label: str, static: bool = False):
        if not hasattr(obj, name):
            return
        old = obj.__dict__.get(name, getattr(obj, name)) if isinstance(obj, type) else getattr(obj, name)
        fn = old.__func__ if isinstance(old, staticmethod) else old
        new = _wrap(fn, label)
        setattr(obj, name, staticmethod(new) if isinstance(old, staticmethod) else new)
        patched.append((obj, name, old))

    try:  # SPMamba's parts: the modules whose functions the network calls (patched where they are looked up)
        from sepcli.nets import bimamba, gridnet
    except ImportError:  # pragma: no cover
        bimamba = gridnet = None
    for mod in (mamba_mod, bimamba):
        if mod is not None:
            patch(mod, "selective_scan", "scan")
            patch(mod, "rms_normalise", "norms")
    if gridnet is not None:
        patch(gridnet.GridNetBlock, "_attention", "attention")
    try:  # numba passes the fused inference path calls (not torch ops): labelled like the torch ops they replace
        from sepcli.nets import bimamba_kernels, causal_conv
    except ImportError:  # pragma: no cover
        bimamba_kernels = causal_conv = None
    if bimamba_kernels is not None:
        patch(bimamba_kernels, "rms_norm_window_pair_into", "norms")
        patch(bimamba_kernels, "residual_window_pair_into", "residual")
        # versions before the grouped path's chunks ran as one window: their whole-sequence passes (absent since)
        patch(bimamba_kernels, "rms_norm_pair_into", "norms")
        patch(bimamba_kernels, "residual_pair_into", "residual")
        patch(causal_conv, "conv_silu_rows_into", "depthwise conv")
    # the unfold pass (looked up through the module by gridnet; absent in versions before it)
    patch(getattr(gridnet, "patch_unfold", None), "unfold_into", "unfold")
    norm_types = tuple(t for t in (getattr(gridnet, "LayerNormalization4D", None),
                                   getattr(gridnet, "LayerNormalization4DCF", None), mamba_mod.RMSNorm,
                                   nn.GroupNorm, nn.LayerNorm) if t is not None)
    instances = []
    for m in model.modules():
        if isinstance(m, norm_types):
            m.forward = _wrap(m.forward, "norms")
            instances.append(m)
    try:
        yield
    finally:
        for obj, name, old in reversed(patched):
            setattr(obj, name, old)
        for m in instances:
            del m.forward


def _part(evt) -> str | None:
    names = []
    e = evt
    while e is not None:
        names.append(e.name)
        e = e.cpu_parent
    scopes = [n[len(_SCOPE):] for n in names if n.startswith(_SCOPE)]
    if "scan" in scopes:
        return "scan"
    if any(n in ("aten::stft", "aten::istft") for n in names):
        return "STFT"
    if "attention" in scopes or any("scaled_dot_product" in n for n in names):
        return "attention"
    if "norms" in scopes:
        return "norms"
    if "depthwise conv" in scopes:
        return "convolutions"
    if "residual" in scopes:
        return "elementwise"
    if "unfold" in scopes:
        return "copies"
    if evt.name.startswith(_SCOPE) or evt.name == "forward":
        return None  # an annotation's own (python) time
    if evt.name in COPY_OPS:
        return "copies"
    if any(any(c in n for c in CONV_OPS) for n in names if n.startswith("aten::")):
        return "convolutions"
    if any(n in GEMM_OPS for n in names):
        return "Mamba projections"
    return "elementwise"


def breakdown(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None,
              warmup: bool = True) -> dict[str, float]:
    """Seconds per part of one `model(x)` call under torch.profiler (no_grad; optional CPU autocast dtype).

    Returns {part: seconds} for PARTS plus "total" (the profiled call's wall time)."""
    from torch.profiler import ProfilerActivity, profile

    ctx = (lambda: torch.autocast("cpu", dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    with torch.no_grad(), labelled(model):
        if warmup:
            with ctx():
                model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            with torch.profiler.record_function("forward"), ctx():
                model(x)
            total = time.perf_counter() - t0
    parts = dict.fromkeys(PARTS, 0.0)
    for evt in prof.events():
        part = _part(evt)
        if part is not None:
            parts[part] += evt.self_cpu_time_total / 1e6
    parts["python/other"] = max(0.0, total - sum(parts.values()))
    parts["total"] = total
    return parts


def scan_split(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None,
               warmup: bool = True) -> dict[str, float]:
    """Wall seconds of one `model(x)` call (inference mode, optional CPU autocast dtype) and of its part inside
    the selective scan, timed without the profiler: {"total", "scan", "non_scan"}. The non-scan time is what
    the network's GEMM bound (counted FLOPs / GEMM throughput) is compared with."""
    import sepcli.nets.mamba as mamba_mod

    spent = [0.0]
    patched = []
    try:  # the module whose fused path calls selective_scan
        from sepcli.nets import bimamba
    except ImportError:  # pragma: no cover
        bimamba = None
    for mod in (mamba_mod, bimamba):
        fn = getattr(mod, "selective_scan", None) if mod is not None else None
        if fn is None:
            continue

        def timed(*args, _fn=fn, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        mod.selective_scan = timed
        patched.append((mod, fn))
    ctx = (lambda: torch.autocast("cpu", dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    try:
        with torch.inference_mode():
            if warmup:
                with ctx():
                    model(x)
            spent[0] = 0.0
            t0 = time.perf_counter()
            with ctx():
                model(x)
            total = time.perf_counter() - t0
    finally:
        for mod, fn in patched:
            mod.selective_scan = fn
    return {"total": total, "scan": spent[0], "non_scan": total - spent[0]}


def format_breakdown(parts: dict[str, float], audio_s: float, title: str = "",
                     gemm_bound: float | None = None) -> str:
    """One table: part, seconds per second of audio, share of the total; with `gemm_bound` (s per s of audio:
    counted GEMM FLOPs / measured GEMM throughput) also the time outside the scan as a multiple of it."""
    total = parts["total"]
    rows = [f"{title}" if title else "", f"  {'part':<18} {'s per s audio':>13} {'share':>6}"]
    for p in PARTS:
        rows.append(f"  {p:<18} {parts[p] / audio_s:>13.3f} {100 * parts[p] / total:>5.1f}%")
    rows.append(f"  {'total (profiled)':<18} {total / audio_s:>13.3f}")
    non_scan = (total - parts["scan"]) / audio_s
    rows.append(f"  {'not the scan':<18} {non_scan:>13.3f}"
                + (f"  = {non_scan / gemm_bound:.2f} x the GEMM bound {gemm_bound:.3f}" if gemm_bound else ""))
    return "\n".join(r for r in rows if r)
