"""Shared input builders for the selective-scan tests (not a test module)."""

from __future__ import annotations

import torch

# (B layout, C layout): "const" (d, n), "var" (b, n, l), "g1" (b, 1, n, l), "g2" (b, 2, n, l)
LAYOUTS = [("const", "const"), ("var", "var"), ("g1", "g2"), ("g2", "g2"), ("const", "g2"), ("var", "const")]


def make_bc(kind: str, b: int, d: int, n: int, l: int, gen: torch.Generator, dtype=torch.float32):
    shape = {"const": (d, n), "var": (b, n, l), "g1": (b, 1, n, l), "g2": (b, 2, n, l)}[kind]
    return torch.randn(shape, generator=gen, dtype=dtype)


def make_inputs(b: int, d: int, l: int, n: int, bkind: str = "var", ckind: str = "var", has_D: bool = True,
                has_z: bool = True, has_bias: bool = True, softplus: bool = True, seed: int = 0,
                dtype=torch.float32) -> dict:
    """Well-conditioned inputs (decaying states): keyword arguments for selective_scan."""
    g = torch.Generator().manual_seed(seed)
    if softplus:
        delta = torch.randn(b, d, l, generator=g, dtype=dtype) * 0.5 - 1.0
    else:
        delta = torch.rand(b, d, l, generator=g, dtype=dtype) * 0.5 + 0.01
    return {
        "u": torch.randn(b, d, l, generator=g, dtype=dtype),
        "delta": delta,
        "A": -(0.1 + torch.rand(d, n, generator=g, dtype=dtype)),
        "B": make_bc(bkind, b, d, n, l, g, dtype),
        "C": make_bc(ckind, b, d, n, l, g, dtype),
        "D": torch.randn(d, generator=g, dtype=dtype) if has_D else None,
        "z": torch.randn(b, d, l, generator=g, dtype=dtype) if has_z else None,
        "delta_bias": (torch.rand(d, generator=g, dtype=dtype) * 0.2) if has_bias else None,
        "delta_softplus": softplus,
    }


def grad_inputs(kw: dict) -> dict:
    """Copy of kw with every tensor a fresh leaf requiring grad."""
    return {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


TENSOR_KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
