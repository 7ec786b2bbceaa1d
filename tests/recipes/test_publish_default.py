"""recipes/publish_default.py's choice of the shipped model: the shipped model stays unless a challenger beats it
on the same validation mixtures by more than `margin` paired standard errors."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import publish_default as pub  # noqa: E402

FILES = [f"m{i:03d}.wav" for i in range(120)]


def _scores(base: np.ndarray, gain: float, noise: float, seed: int) -> dict[str, float]:
    """Per-mixture SI-SNRi: a shared difficulty per mixture, plus a model's gain and its own per-mixture noise."""
    rng = np.random.default_rng(seed)
    return {f: float(b + gain + noise * rng.standard_normal()) for f, b in zip(FILES, base)}


@pytest.fixture
def base():
    return np.random.default_rng(0).normal(3.0, 4.0, len(FILES))  # mixtures differ far more than models


def test_paired_difference_matches_a_paired_t_test(base):
    a, b = _scores(base, 0.3, 0.8, 1), _scores(base, 0.0, 0.8, 2)
    st = pub.paired_difference(a, b)
    x, y = np.array([a[f] for f in FILES]), np.array([b[f] for f in FILES])
    assert st["n"] == len(FILES)
    assert st["diff"] == pytest.approx(float(np.mean(x - y)), abs=1e-12)
    assert st["diff"] / st["se"] == pytest.approx(stats.ttest_rel(x, y).statistic, rel=1e-9)


def test_a_gain_within_the_noise_keeps_the_shipped_model(base):
    """Session 7's case: a challenger a few hundredths of a dB ahead with a paired SE near 0.08 dB."""
    files = {"shipped": _scores(base, 0.0, 0.6, 1), "best": _scores(base, 0.02, 0.6, 2)}
    st = pub.paired_difference(files["best"], files["shipped"])
    assert 0 < st["diff"] < 2 * st["se"], st  # the premise: ahead on the mean, inside the margin
    pick, out = pub.choose(files, "shipped", margin=2.0)
    assert pick == "shipped" and out["best"] == st
    # the old rule (the larger mean) would have shipped the challenger
    assert max(files, key=lambda k: np.mean(list(files[k].values()))) == "best"


def test_a_clear_gain_replaces_it_and_the_largest_of_several_wins(base):
    files = {"shipped": _scores(base, 0.0, 0.6, 1), "best": _scores(base, 0.5, 0.6, 2),
             "latest": _scores(base, 0.9, 0.6, 3)}
    pick, out = pub.choose(files, "shipped", margin=2.0)
    assert pick == "latest"
    assert all(st["diff"] > 2 * st["se"] for st in out.values())
    files["latest"] = _scores(base, -0.9, 0.6, 3)  # a regression never ships
    assert pub.choose(files, "shipped", margin=2.0)[0] == "best"


def test_the_margin_is_in_standard_errors(base):
    files = {"shipped": _scores(base, 0.0, 0.6, 1), "best": _scores(base, 0.2, 0.6, 2)}
    st = pub.paired_difference(files["best"], files["shipped"])
    z = st["diff"] / st["se"]
    assert pub.choose(files, "shipped", margin=z * 0.99)[0] == "best"
    assert pub.choose(files, "shipped", margin=z * 1.01)[0] == "shipped"


def test_without_a_shipped_model_the_best_mean_wins(base):
    files = {"best": _scores(base, 0.02, 0.6, 2), "latest": _scores(base, 0.0, 0.6, 3)}
    means = {k: np.mean(list(v.values())) for k, v in files.items()}
    assert pub.choose(files, "shipped")[0] == max(means, key=means.get)


def test_candidates_must_be_scored_on_the_same_mixtures(base):
    a = _scores(base, 0.0, 0.6, 1)
    b = dict(list(a.items())[1:])
    with pytest.raises(ValueError, match="different mixtures"):
        pub.choose({"shipped": a, "best": b}, "shipped")


def test_selection_uses_the_same_kind_pairs_and_falls_back_to_all():
    kind = {"ann": "real", "bob": "real", "kal": "synthetic", "rms": "synthetic"}
    rows = [{"file": "1.wav", "pair": "ann+bob", "si_snri": 1.0},
            {"file": "2.wav", "pair": "kal+rms", "si_snri": 2.0},
            {"file": "3.wav", "pair": "ann+kal", "si_snri": 9.0},   # mixed kinds: easier, not what targets measure
            {"file": "4.wav", "pair": "ann+zed", "si_snri": 9.0},   # unknown person
            {"file": "5.wav", "pair": "", "si_snri": 9.0}]
    assert pub.selection_files(rows, kind) == {"1.wav": 1.0, "2.wav": 2.0}
    assert pub.selection_files(rows[2:], kind) == {"3.wav": 9.0, "4.wav": 9.0, "5.wav": 9.0}
    pairs = {"ann+bob": {"n": 3, "si_snri": {"mean": 1.0}}, "kal+rms": {"n": 1, "si_snri": {"mean": 5.0}},
             "ann+kal": {"n": 9, "si_snri": {"mean": 20.0}}}
    assert pub.kind_means(pairs, kind) == pytest.approx({"real": 1.0, "synthetic": 5.0, "same": (3 + 5) / 4})


def test_run_candidates_include_best_only_when_the_run_exported_one(tmp_path):
    run, latest = tmp_path / "run", tmp_path / "latest"
    (run / "best").mkdir(parents=True)  # an empty folder (an interrupted export) is no candidate
    assert pub.run_candidates(run, latest) == {"latest": latest}
    (run / "best" / "weights.safetensors").write_bytes(b"x")
    assert pub.run_candidates(run, latest) == {"best": run / "best", "latest": latest}
    assert list(pub.run_candidates(run, latest)) == ["best", "latest"]


def test_a_best_picked_on_the_first_mixtures_is_compared_on_the_others(base):
    """A run's best/ is the top of many noisy validations on the first val_limit mixtures: there its score is high
    by chance. With the picked-on mixtures left out, such a 'best' (no real gain) no longer beats the shipped
    model; on all mixtures it would."""
    shipped = _scores(base, 0.0, 0.3, 1)
    used = set(FILES[:60])
    lucky = {f: v + (0.6 if f in used else 0.0) for f, v in _scores(base, 0.0, 0.3, 2).items()}
    assert pub.choose({"shipped": shipped, "best": lucky})[0] == "best"
    files, on = pub.unselected({"shipped": shipped, "best": lucky}, used)
    pick, st = pub.choose(files)
    assert pick == "shipped" and st["best"]["n"] == 60 and set(files["best"]) == set(FILES[60:])
    assert on == "the 60 validation mixtures outside the 60 the run picks its best on"
    # a run that validates on every mixture (no val_limit): best/ has no unbiased mixtures and is left out
    latest = _scores(base, 0.0, 0.3, 3)
    files, on = pub.unselected({"shipped": shipped, "best": lucky, "latest": latest}, set(FILES))
    assert set(files) == {"shipped", "latest"} and len(files["latest"]) == 120 and "best/ is left out" in on
    assert pub.unselected({"shipped": shipped}, set()) == ({"shipped": shipped}, "all validation mixtures")


def test_write_model_replaces_the_folder_whole_and_keeps_the_card(tmp_path):
    dest = tmp_path / "models" / "m"
    dest.mkdir(parents=True)
    (dest / "weights.safetensors").write_bytes(b"old")
    (dest / "config.json").write_text('{"step": 1}')
    (dest / "MODEL_CARD.md").write_text("card")
    new = tmp_path / "w.safetensors"
    new.write_bytes(b"new")
    pub.write_model(dest, new, {"step": 2})
    assert (dest / "weights.safetensors").read_bytes() == b"new" and (dest / "MODEL_CARD.md").read_text() == "card"
    assert (dest / "config.json").read_text() == '{\n  "step": 2\n}\n'
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]  # no temporary or old folder left
    # a failure while building the new folder leaves the old one as it was
    with pytest.raises(FileNotFoundError):
        pub.write_model(dest, tmp_path / "missing.safetensors", {"step": 3})
    assert (dest / "weights.safetensors").read_bytes() == b"new" and (dest / "config.json").read_text().count("2")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]


def test_write_model_interrupted_between_the_renames_keeps_the_old_model(tmp_path, monkeypatch):
    import os

    from sepcli.train import export

    dest = tmp_path / "models" / "m"
    dest.mkdir(parents=True)
    (dest / "weights.safetensors").write_bytes(b"old")
    (dest / "config.json").write_text("{}")
    new = tmp_path / "w.safetensors"
    new.write_bytes(b"new")
    real = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # dest -> .m.old done; now the new folder -> dest: Ctrl-C
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(export.os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt):
        pub.write_model(dest, new, {"step": 2})
    monkeypatch.setattr(export.os, "replace", real)
    assert (dest / "weights.safetensors").read_bytes() == b"old" and (dest / "config.json").read_text() == "{}"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]
