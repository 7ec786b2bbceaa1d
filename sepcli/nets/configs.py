"""Named network configurations, gathered from each network module (each owns its own table)."""

from __future__ import annotations

from collections.abc import Mapping


def _gather() -> dict:
    out: dict = {}
    from . import s4m, spmamba

    for mod in (s4m, spmamba):
        out.update(getattr(mod, "CONFIGS", {}))
    return out


class _Lazy(Mapping):
    """A read-only mapping gathered from the network modules on first use (importing them is slow)."""

    def __init__(self):
        self._table: dict | None = None

    def _filled(self) -> dict:
        if self._table is None:
            self._table = _gather()
        return self._table

    def __getitem__(self, k):
        return self._filled()[k]

    def __iter__(self):
        return iter(self._filled())

    def __len__(self):
        return len(self._filled())


# name -> (arch, arch_args, sample_rate)
CONFIGS = _Lazy()
