"""The loudness decision and the one-owner cleanup of one input's outputs (sepcli.separate.outputs), checked
against the rules written out by hand: -1 dBFS = 10 ** (-1 / 20), and files on disk."""

import numpy as np

from sepcli.separate.options import SeparationOptions
from sepcli.separate.outputs import InputOutputs, loudness_gains


def test_match_lowers_all_speakers_by_one_gain_only_when_a_fixed_point_file_would_clip():
    o = SeparationOptions().validated()  # wav, PCM_16, match
    gains, flags = loudness_gains(o, [2.0, 0.5], [])
    assert np.allclose(gains, [(1 - 1e-6) / 2.0] * 2)
    assert flags == [["scaled_to_avoid_clipping"], ["scaled_to_avoid_clipping"]]
    assert loudness_gains(o, [0.9, 0.5], []) == ([1.0, 1.0], [[], []])
    flt = SeparationOptions(subtype="FLOAT").validated()
    assert loudness_gains(flt, [2.0, 0.5], []) == ([1.0, 1.0], [[], []])  # a float file stores it as it is


def test_match_keeps_minus_one_dbfs_headroom_in_a_lossy_file():
    o = SeparationOptions(format="ogg").validated()
    ceiling = 10 ** (-1 / 20)
    gains, flags = loudness_gains(o, [0.95, 0.1], [])  # below full scale, above -1 dBFS
    assert np.allclose(gains, [ceiling * (1 - 1e-6) / 0.95] * 2)
    assert flags[0] == ["scaled_to_avoid_clipping"]


def test_cleanup_after_a_failure_removes_temporaries_and_renamed_outputs(tmp_path):
    o = SeparationOptions(loudness="off").validated()
    outs = [tmp_path / "a_spk1.wav", tmp_path / "a_spk2.wav"]
    journal: dict = {}
    owner = InputOutputs(outs, 8000, o, lambda **e: journal.update(e))
    block = np.full((2, 800), 0.1, np.float32)
    infos = owner.write(iter([block]), replace=False)
    assert all(p.exists() for p in outs) and [i.frames for i in infos] == [800, 800]
    assert journal["committing"] == [str(p) for p in outs]
    owner.cleanup(ok=False)  # a failure after the renames: all speakers or none
    assert sorted(tmp_path.iterdir()) == []


def test_cleanup_after_success_keeps_outputs_and_leaves_no_temporary(tmp_path):
    o = SeparationOptions().validated()  # match: through float spools
    outs = [tmp_path / "b_spk1.wav", tmp_path / "b_spk2.wav"]
    owner = InputOutputs(outs, 8000, o, lambda **e: None)
    owner.write(iter([np.full((2, 400), 0.2, np.float32)]), replace=False)
    assert owner.temporaries  # the spools' and writers' temporary files were all registered
    owner.cleanup(ok=True)
    assert sorted(tmp_path.iterdir()) == outs
