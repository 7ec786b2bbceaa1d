"""Named network configurations, gathered from each network module (each owns its own table)."""

from __future__ import annotations


def _gather() -> dict:
    out: dict = {}
    from . import s4m, spmamba

    for mod in (s4m, spmamba):
        out.update(getattr(mod, "CONFIGS", {}))
    return out


class _Lazy(dict):
    def _fill(self):
        if not self:
            self.update(_gather())

    def __contains__(self, k):
        self._fill()
        return super().__contains__(k)

    def __getitem__(self, k):
        self._fill()
        return super().__getitem__(k)

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def keys(self):
        self._fill()
        return super().keys()

    def items(self):
        self._fill()
        return super().items()


# name -> (arch, arch_args, sample_rate)
CONFIGS = _Lazy()
