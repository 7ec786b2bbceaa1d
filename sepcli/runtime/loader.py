"""Build a network from a model folder and load its weights.

A model folder holds config.json (its keys: docs/models.md) and weights.safetensors. Folders are
loaded with safetensors only. A .pt/.pth file (with config.json beside it) is read with
torch.load(weights_only=True), never unpickling arbitrary objects; a `state_dict` or `model` entry is used when
the file holds a training checkpoint. config.json is validated as data: every problem is a ModelError naming the
file and the key. The network is built with sepcli.nets.build_network(arch, arch_args).

A weights file that cannot be read (garbage bytes, a truncated download, a Git LFS pointer left by a clone
without LFS) is a ModelError `<file>: not a readable safetensors file (...)`, also from `weights_summary`, so
listings can skip it. A pickle that torch.load(weights_only=True) refuses is described by
`torch_load_problem`: it names the refused global and never repeats torch's advice to load with
weights_only=False.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..errors import ModelError, UnknownModel, one_line  # noqa: F401 (UnknownModel: importable from here)
from . import registry
from .model_folder import _err, locate, read_config, unreadable_safetensors, validate_config, weights_summary  # noqa: F401


@dataclass
class LoadedModel:
    """A separation network plus what the pipeline needs to know about it.

    `network` is any callable mapping a float32 tensor [B, T] to [B, n_src, T] at `sample_rate`
    (an nn.Module for real models; tests may inject any callable)."""

    network: Any
    sample_rate: int
    n_src: int
    segment: float = 4.0
    overlap: float = 0.25
    input_loudness: float | None = None
    name: str = "custom"
    arch: str = "custom"
    config: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_params(self) -> int:
        if isinstance(self.network, torch.nn.Module):
            return sum(p.numel() for p in self.network.parameters())
        return 0


def torch_load_problem(exc: BaseException) -> str:
    """One line saying why torch.load(weights_only=True) refused or failed to read a file (no file name).

    A pickle whose global torch refused is 'not a plain weights checkpoint' naming that global; anything else
    (garbage, a damaged file) 'not a readable PyTorch checkpoint'. torch's own text (which suggests loading
    with weights_only=False) is not repeated."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        m = (re.search(r"GLOBAL (\S+) was not an allowed global", text)
             or re.search(r"unsupported GLOBAL (\S+) whose module", text))
        if m:
            return ("not a plain weights checkpoint: it holds Python objects besides tensors, which "
                    f"torch.load(weights_only=True) does not load (refused global {m.group(1)})")
        # no global named: garbage or a damaged pickle; torch appends the unpickler's own message after a blank
        # line, then a link to its docs
        body = text.split("\n\nCheck the documentation")[0]
        inner = body.rsplit("\n\n", 1)[-1] if "\n\n" in body else ""
        inner = one_line(inner, 120).removeprefix("WeightsUnpickler error: ") if inner.strip() else ""
        detail = inner if inner and "weights_only" not in inner else "unreadable content"
        return f"not a readable PyTorch checkpoint (damaged, or not a checkpoint: {detail})"
    line = one_line(exc, 1000)
    if "weights_only" in line:  # never pass on advice to load unsafely
        line = type(exc).__name__
    elif len(line) > 160:  # whole sentences: torch's zip reader appends advice that one_line would cut mid-word
        end = line.rfind(". ", 0, 160)
        line = line[:end] if end > 0 else line[:160]
    return f"not a readable PyTorch checkpoint ({type(exc).__name__}: {line})"


def without_ddp_prefix(sd: dict) -> dict:
    """A state_dict saved from a DistributedDataParallel wrapper (every key 'module.<name>') as the network's own."""
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a .pt/.pth file through torch.load(weights_only=True)."""
    if not weights.is_file():
        raise _err(weights, "weights file not found")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except Exception as exc:  # noqa: BLE001
            raise unreadable_safetensors(weights, exc) from None
    if weights.suffix in (".pt", ".pth", ".ckpt"):
        try:
            obj = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise _err(weights, torch_load_problem(exc)) from None
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise _err(weights, "does not hold a state_dict of tensors")
        return without_ddp_prefix(obj)
    raise _err(weights, "unsupported weights format (use .safetensors, or .pt/.pth)")


def state_dict_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], show: int = 3,
                        names: tuple[str, str] = ("file", "network")) -> str:
    """'' when `got` has exactly `expected`'s keys and shapes, else the first wrongly shaped, missing and unexpected
    keys ('2 wrong shape (file != network): a (3,) != (4,) | 1 missing: b'; `names` for got and expected)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    labels = (f"wrong shape ({names[0]} != {names[1]})", "missing", "unexpected")
    for label, items in zip(labels, (shapes, missing, unexpected)):
        if items:
            more = f", ... ({len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {'; '.join(items[:show])}{more}")
    return " | ".join(parts)


class _TooLarge(Exception):
    pass


class _ElementBudget(TorchFunctionMode):
    """Counts the elements of the tensors created while a network is built (in-place ops aside) and stops the
    build past `limit`: a config from an untrusted folder with, say, 3000 layers is refused in milliseconds
    instead of building them all on the meta device first (minutes and GBs of Python objects). The shipped
    configurations create 1.01-1.05 times their weights' elements."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.used = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not getattr(func, "__name__", "").endswith("_"):
            self.used += out.numel()
            if self.used > self.limit:
                raise _TooLarge
        return out


def _build(cfg: dict, folder: Path, budget: int | None = None) -> torch.nn.Module:
    """The config's network; with a `budget`, on the meta device (shapes only, no memory) and stopped past that
    many elements (ModelError)."""
    from ..nets import build_network

    try:
        if budget is not None:
            with torch.device("meta"), _ElementBudget(budget):
                return build_network(cfg["arch"], cfg["arch_args"])
        return build_network(cfg["arch"], cfg["arch_args"])
    except _TooLarge:
        raise _err(folder / "config.json", f"'arch_args' describe a network far larger than its weights "
                                           f"(over {budget:,} elements against the weights' file)") from None
    except ValueError as exc:
        raise _err(folder / "config.json", str(exc)) from None
    except TypeError as exc:
        raise _err(folder / "config.json", f"'arch_args' do not fit arch {cfg['arch']!r} ({exc})") from None
    except ImportError as exc:
        raise _err(folder / "config.json", f"arch {cfg['arch']!r} is not available ({exc})") from None
    except Exception as exc:  # noqa: BLE001  (e.g. an 'arch_args' value of the wrong kind or size)
        raise _err(folder / "config.json", f"cannot build arch {cfg['arch']!r} from 'arch_args' "
                                           f"({type(exc).__name__}: {one_line(str(exc), 200)})") from None


def load_model(name: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Resolve `name` (zoo name, alias or path), build its network, load its weights, move it to `device`.

    The network is first built on the meta device, within a budget of 4 times the weights' elements, and compared
    with the weights' names and shapes, so a config from an untrusted folder with huge sizes or counts is refused
    before the network is allocated."""
    try:
        target = registry.resolve(name)
    except registry.UnknownName as exc:  # a plain name: a catalogue model not pulled yet is said so, never downloaded
        from .catalogue import not_installed_hint

        raise UnknownModel(not_installed_hint(exc.name) or str(exc)) from None
    folder, weights = locate(target)
    cfg = read_config(folder)
    state = read_state_dict(weights)
    shape_only = _build(cfg, folder, budget=4 * sum(v.numel() for v in state.values()) + (1 << 22))
    outputs = getattr(shape_only, "n_src", getattr(shape_only, "n_srcs", None))
    if outputs is not None and outputs != cfg["n_src"]:
        raise _err(folder / "config.json", f"'n_src' {cfg['n_src']} differs from the {outputs} outputs of the "
                                           "network its 'arch_args' describe")
    rate = getattr(shape_only, "sample_rate", None)  # arch_args' sample_rate, or the network's default
    if isinstance(rate, int) and rate != cfg["sample_rate"]:
        raise _err(folder / "config.json", f"'sample_rate' {cfg['sample_rate']} differs from the network's "
                                           f"{rate} Hz ('arch_args')")
    expected = shape_only.state_dict()
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise _err(weights, f"weights do not match the network: {problem}")
    net = _build(cfg, folder)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a dtype torch cannot copy
        raise _err(weights, f"weights do not match the network ({one_line(str(exc), 300)})") from None
    net.eval().to(device)
    return LoadedModel(network=net, sample_rate=cfg["sample_rate"], n_src=cfg["n_src"],
                       segment=float(cfg["segment"]), overlap=float(cfg["overlap"]),
                       input_loudness=cfg["input_loudness"], name=cfg["name"], arch=cfg["arch"],
                       config=cfg, path=folder)
