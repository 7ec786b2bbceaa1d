"""Shared fixtures of the CLI reliability tests."""

from __future__ import annotations

import pytest

from tests.testnets import bandsplit_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A cheap real model folder (BandSplit, 8 kHz, 0.5 s segments), one per test module."""
    return bandsplit_folder(tmp_path_factory.mktemp("m") / "bandsplit", sample_rate=8000, segment=0.5)
