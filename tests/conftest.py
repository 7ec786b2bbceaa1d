"""Shared test setup.

Layout: the tests mirror the package. tests/<package>/test_<module>.py tests sepcli/<package>/<module>.py
(audio, kernels, nets, runtime, separate, train; kernels/test_dispatch.py is the dispatcher in kernels/__init__);
tests/test_errors.py and tests/test_metrics.py test sepcli's top-level modules; tests/cli holds the CLI's tests and
the end-to-end and reliability tests that drive it; tests/models the shipped model folder (models/), tests/recipes
the scripts in recipes/. The helpers shared by several folders stay here at the root (testnets, faultnets,
loopback, scan_cases, spmamba_release, _memory_probe); every folder is a package, so tests import each other by
their full name (tests.nets.test_spmamba).

Test networks: tests/testnets.py defines a test double (OracleNet) and a cheap real network (BandSplit). They
are test-only code, so they are not part of sepcli.nets; instead this conftest registers them for the test
session in sepcli.nets._ARCH_CLASSES under the archs "test-oracle" and "test-bandsplit". A model folder whose
config.json names one of these archs then loads through the ordinary registry/loader path, so CLI tests (run
in-process with typer.testing.CliRunner) exercise exactly the product's code. Subprocess tests call
tests.testnets.register_test_archs() themselves.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.testnets import register_test_archs

register_test_archs()
torch.set_num_threads(1)  # a training run shares this machine; tests stay light


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    # batch --shard falls back to torchrun's RANK/WORLD_SIZE; tests must not inherit them by accident
    for k in ("RANK", "WORLD_SIZE"):
        if k in os.environ:
            monkeypatch.delenv(k)


@pytest.fixture(autouse=True)
def _not_the_sepcli_process(monkeypatch):
    """Each test starts as a program that imports sepcli.cli does: a test that calls cli.main.run() in-process marks
    the process as the `sepcli` command (startup_gc.own_process), and later CliRunner tests in the same worker would
    then pause the collector and freeze the test process's objects."""
    from sepcli.cli import startup_gc

    monkeypatch.setattr(startup_gc, "_OWN", False)


@pytest.fixture(autouse=True)
def _fresh_s4m_fused_state(monkeypatch):
    """Each test starts as a fresh process does: S4M's fused kernels not yet loaded, no forwards counted
    (sepcli.nets.s4m_fused switches them on at a process's FUSE_AFTER-th forward; without this, which path a test
    ran would depend on the tests before it)."""
    import sepcli.nets.s4m_fused as fused

    monkeypatch.setattr(fused, "_seen", 0)
    monkeypatch.setattr(fused, "_loaded", None)


@pytest.fixture(autouse=True)
def _sepcli_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user store ($SEPCLI_HOME, outside its tmp_path so listings of tmp_path are
    unchanged), and no SEPCLI_MODEL from the developer's shell: nothing writes to the real home, and a user's own
    default model or imported models cannot change a test's outcome. Yields the folder."""
    home = tmp_path_factory.mktemp("sepcli-home")
    monkeypatch.setenv("SEPCLI_HOME", str(home))
    monkeypatch.delenv("SEPCLI_MODEL", raising=False)
    yield home
