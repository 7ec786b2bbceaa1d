"""Separation networks. Each is an nn.Module with forward(mix [B, T]) -> [B, n_src, T].

`ARCHS` maps an architecture name (the `arch` of a model's config.json) to its class, imported lazily;
`CONFIGS` maps a named configuration (what `sepcli train --arch` takes) to (arch, arch_args, sample_rate).
"""

from __future__ import annotations

import importlib

_ARCH_CLASSES = {
    "s4m": ("sepcli.nets.s4m", "S4M"),
    "spmamba": ("sepcli.nets.spmamba", "SPMamba"),
}


def arch_class(arch: str):
    if arch not in _ARCH_CLASSES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(sorted(_ARCH_CLASSES))})")
    module, name = _ARCH_CLASSES[arch]
    return getattr(importlib.import_module(module), name)


def build_network(arch: str, arch_args: dict):
    return arch_class(arch)(**arch_args)


def named_config(name: str) -> tuple[str, dict, int]:
    """(arch, arch_args, sample_rate) of a named configuration such as 's4m-tiny-16k' or 'spmamba-8k'."""
    from .configs import CONFIGS

    if name not in CONFIGS:
        raise ValueError(f"unknown network configuration {name!r} (known: {', '.join(sorted(CONFIGS))})")
    arch, args, sr = CONFIGS[name]
    return arch, dict(args), sr
