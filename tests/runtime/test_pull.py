"""`sepcli models pull` end to end against a loopback HTTP server (tests/loopback.py), never the internet.

The server serves zips in the format of the official SPMamba release (SPMamba-LibriMix.zip, built by
tests/spmamba_release.py from a small random SPMamba): a folder holding conf.yml (audionet_name TFGridNetMamba) and
best_model.pth (model_name TFGridNetMamba, the Mamba blocks under `.layers.` / `.backward_layers.`,
`infos.software_versions.torch_version` a torch.torch_version.TorchVersion). The catalogue is pointed at the
server with SEPCLI_CATALOGUE (a JSON file of the shipped form) and the user store at a temporary SEPCLI_HOME.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from tests.loopback import Behaviour, Loopback, fill_disk_after, refused_url
from tests.spmamba_release import make_release, random_spmamba, release_checkpoint, release_zip, small_yml

NAME = "spmamba-libri2mix"
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- release zips (tests/spmamba_release.py)
def release_bytes(tmp: Path, seed: int) -> tuple[bytes, torch.nn.Module]:
    """The bytes of a release zip of a small random SPMamba, and that network."""
    path, model = make_release(tmp / f"release-{seed}.zip", seed=seed)
    data = path.read_bytes()
    path.unlink()
    return data, model


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return release_bytes(tmp_path_factory.mktemp("release"), seed=3)


@pytest.fixture
def server():
    with Loopback() as srv:
        yield srv


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh user store and fast network settings; returns a function writing a catalogue for a URL."""
    home = tmp_path / "home"
    monkeypatch.setenv("SEPCLI_HOME", str(home))
    monkeypatch.delenv("SEPCLI_MODEL", raising=False)
    monkeypatch.setenv("SEPCLI_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_RETRIES", "2")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_BACKOFF", "0.01")

    def catalogue(url: str | None, sha256: str | None = None, size: int | None = None) -> Path:
        doc = json.loads((REPO / "sepcli" / "runtime" / "catalogue.json").read_text())
        entry = next(m for m in doc["models"] if m["name"] == NAME)
        entry.update(url=url, sha256=sha256, size_bytes=size)
        path = tmp_path / "catalogue.json"
        path.write_text(json.dumps(doc))
        monkeypatch.setenv("SEPCLI_CATALOGUE", str(path))
        return path

    catalogue.home = home
    return catalogue


def pull(*args: str):
    return runner.invoke(app, ["models", "pull", NAME, *args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("sepcli: error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def assert_nothing_installed(home: Path, parts_allowed: bool = True) -> None:
    """No model folder of NAME (nor a temporary one) and, in downloads/, nothing but resumable .part files (and the
    pull's lock file); `sepcli models` lists no broken model."""
    models = home / "models"
    assert not models.exists() or not any(models.iterdir()), list(models.iterdir())
    downloads = home / "downloads"
    left = sorted(p.name for p in downloads.iterdir()) if downloads.exists() else []
    allowed = [n for n in left if n.endswith(".lock") or (parts_allowed and n.endswith(".zip.part"))]
    assert left == allowed, left
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output and "skipped" not in res.output
    mine = [r for r in json.loads(res.stdout) if r["name"] == NAME]
    assert len(mine) == 1 and mine[0]["installed"] is False and mine[0]["source"] == "catalogue", mine


def installed_config(home: Path) -> dict:
    return json.loads((home / "models" / NAME / "config.json").read_text())


# ---------------------------------------------------------------------- the happy paths
def test_pull_then_separate_from_another_directory(env, server, release, tmp_path, monkeypatch):
    data, model = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url)
    assert_nothing_installed(env.home)  # listed as a catalogue model, not installed
    res = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert f"{NAME} (not installed)" in res.stdout and "catalogue" in res.stdout
    res = pull()
    assert res.exit_code == 0, res.output
    listing = runner.invoke(app, ["models", "--json"])
    (row,) = [r for r in json.loads(listing.stdout) if r["name"] == NAME]
    assert row["installed"] is True and row["source"] == "user" and row["path"] == str(env.home / "models" / NAME)
    sha = hashlib.sha256(data).hexdigest()
    assert f"installed {NAME}" in res.output and sha in res.output
    cfg = installed_config(env.home)
    prov = cfg["provenance"]
    assert prov["sha256"] == sha and prov["size_bytes"] == len(data) and prov["url"] == url
    assert prov["licence"] == "Apache-2.0" and "issues/2" in " ".join(prov["url_source"])
    assert sorted(p.name for p in (env.home / "downloads").iterdir()) == [f"{NAME}.lock"]  # the zip is gone

    # the installed model is the served network: same output as the official model on the same input
    from sepcli.runtime.loader import load_model

    loaded = load_model(env.home / "models" / NAME)
    x = torch.randn(1, 800)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), model(x), rtol=1e-4, atol=1e-5)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sf.write(elsewhere / "mix.wav", np.random.default_rng(0).standard_normal(4000).astype("float32") * 0.1, 8000)
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["separate", "mix.wav", "-o", "out", "-m", NAME, "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == ["mix_spk1.wav", "mix_spk2.wav"]


def test_already_installed_is_exit_0_without_network_and_force_installs_again(env, server, release, tmp_path):
    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url)
    assert pull("-q").exit_code == 0
    before = installed_config(env.home)["provenance"]["sha256"]
    n = len(server.requests)
    res = pull()
    assert res.exit_code == 0 and "already installed" in res.output and len(server.requests) == n

    other, _ = release_bytes(tmp_path, seed=4)  # a new release behind the same URL
    server.files["/SPMamba-LibriMix.zip"] = Behaviour(other)
    res = pull("--force", "-q")
    assert res.exit_code == 0, res.output
    after = installed_config(env.home)["provenance"]["sha256"]
    assert after == hashlib.sha256(other).hexdigest() != before
    assert sorted(p.name for p in (env.home / "models").iterdir()) == [NAME]  # no temporary or old folder left


def test_from_file_needs_no_network(env, release, tmp_path, monkeypatch):
    data, _ = release
    env(refused_url())
    copy = tmp_path / "SPMamba-LibriMix.zip"
    copy.write_bytes(data)

    def no_connect(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    res = pull("--from", str(copy))
    assert res.exit_code == 0, res.output
    prov = installed_config(env.home)["provenance"]
    assert prov["sha256"] == hashlib.sha256(data).hexdigest() and prov["from_file"] == str(copy.resolve())
    assert copy.read_bytes() == data  # the user's copy is untouched


def test_from_a_mirror_url(env, server, release):
    data, _ = release
    env(refused_url())  # the catalogue's own URL is down
    mirror = server.serve("/mirror/SPMamba-LibriMix.zip", Behaviour(data))
    res = pull("--from", mirror, "-q")
    assert res.exit_code == 0, res.output
    assert installed_config(env.home)["provenance"]["url"] == mirror


def test_plain_progress_lines_when_stderr_is_not_a_terminal_and_none_with_q(env, server, release):
    data, _ = release
    env(server.serve("/SPMamba-LibriMix.zip", Behaviour(data)))
    res = pull()
    assert res.exit_code == 0
    assert f"pulling {NAME}: " in res.stderr and "(100%)" in res.stderr
    res = pull("--force", "-q")
    assert res.exit_code == 0 and res.stderr == ""


def test_unknown_name_is_a_usage_error_listing_the_catalogue(env):
    env("http://127.0.0.1:9/x.zip")
    res = runner.invoke(app, ["models", "pull", "spmamba-nope"])
    assert res.exit_code == 2
    assert NAME in one_error_line(res) and "spmamba-echo2mix" in res.output


def test_missing_from_file_is_a_usage_error(env, tmp_path):
    env("http://127.0.0.1:9/x.zip")
    res = pull("--from", str(tmp_path / "nope.zip"))
    assert res.exit_code == 2 and "no such file" in one_error_line(res)


# ---------------------------------------------------------------------- network failures
def test_dropped_mid_file_then_resumed_by_the_next_pull(env, server, release, monkeypatch):
    data, _ = release
    monkeypatch.setenv("SEPCLI_DOWNLOAD_RETRIES", "0")
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data, drop_after=len(data) // 2, drops=99))
    env(url)
    res = pull("-q")
    assert res.exit_code == 1
    assert url in one_error_line(res)
    assert_nothing_installed(env.home)
    (part,) = (env.home / "downloads").glob("*.zip.part")
    kept = part.read_bytes()
    assert 0 < len(kept) <= len(data) // 2 and data.startswith(kept)

    server.files["/SPMamba-LibriMix.zip"] = Behaviour(data)
    res = pull("-q")
    assert res.exit_code == 0, res.output
    assert server.ranges("/SPMamba-LibriMix.zip")[-1] == f"bytes={len(kept)}-"
    sha = hashlib.sha256(data).hexdigest()
    assert sha in res.output and installed_config(env.home)["provenance"]["sha256"] == sha


def test_404_is_one_line_and_not_retried(env, server):
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(b"", status=404))
    env(url)
    res = pull()
    assert res.exit_code == 1
    line = one_error_line(res)
    assert "HTTP 404" in line and url in line and len(server.requests) == 1
    assert_nothing_installed(env.home, parts_allowed=False)


def test_500_is_retried_then_one_line(env, server):
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(b"", status=500))
    env(url)
    res = pull()
    assert res.exit_code == 1 and "HTTP 500" in one_error_line(res)
    assert len(server.requests) == 3  # the first try and SEPCLI_DOWNLOAD_RETRIES=2 more
    assert_nothing_installed(env.home, parts_allowed=False)


def test_stalled_server_times_out_with_the_host_named(env, server, release, monkeypatch):
    data, _ = release
    monkeypatch.setenv("SEPCLI_DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_RETRIES", "1")
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data, stall_after=1000, stalls=99, stall_for=1.0))
    env(url)
    t0 = time.monotonic()
    res = pull("-q")
    assert res.exit_code == 1
    assert "no data from 127.0.0.1 for 0.3 s" in one_error_line(res)
    assert time.monotonic() - t0 < 10
    assert_nothing_installed(env.home)


def test_connection_refused_names_the_url_and_the_manual_steps(env):
    url = refused_url()
    env(url)
    res = pull()
    assert res.exit_code == 1
    line = one_error_line(res)
    assert url in line and "connection refused" in line
    assert "with a browser" in line and f"sepcli models pull {NAME} --from FILE" in line
    assert_nothing_installed(env.home, parts_allowed=False)


def test_disk_full_is_one_line_and_the_part_is_resumed_later(env, server, release, monkeypatch):
    from sepcli.runtime import download as dl

    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url)
    fill_disk_after(monkeypatch, dl, len(data) // 3)
    res = pull("-q")
    assert res.exit_code == 1 and "disk full" in one_error_line(res)
    assert_nothing_installed(env.home)
    (part,) = (env.home / "downloads").glob("*.zip.part")
    kept = part.stat().st_size
    assert data.startswith(part.read_bytes()) and kept > 0
    monkeypatch.setattr(dl, "open", open, raising=False)  # the disk has room again
    res = pull("-q")
    assert res.exit_code == 0, res.output
    assert server.ranges("/SPMamba-LibriMix.zip")[-1] == f"bytes={kept}-"
    assert installed_config(env.home)["provenance"]["sha256"] == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- bad files
def test_pinned_sha256_that_does_not_match(env, server, release):
    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url, sha256="0" * 64)
    res = pull("-q")
    assert res.exit_code == 1
    line = one_error_line(res)
    assert "does not match" in line and hashlib.sha256(data).hexdigest() in line
    assert_nothing_installed(env.home, parts_allowed=False)  # the bad file is removed, not resumed


def test_pinned_sha256_that_matches(env, server, release):
    data, _ = release
    env(server.serve("/SPMamba-LibriMix.zip", Behaviour(data)), sha256=hashlib.sha256(data).hexdigest(),
        size=len(data))
    res = pull("-q")
    assert res.exit_code == 0 and "matches the catalogue" in res.output


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_zip_installs_nothing(env, server, release, damage):
    data, _ = release
    if damage == "truncated":
        bad = data[: len(data) // 2]
    else:  # bytes flipped in the middle of the compressed checkpoint
        mid = len(data) // 2
        bad = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(bad))
    env(url)
    res = pull("-q")
    assert res.exit_code == 1
    assert "cannot be installed" in one_error_line(res)
    assert_nothing_installed(env.home, parts_allowed=False)


def leave_marker(path: str) -> None:
    Path(path).touch()


class _RunsCode:
    """Pickled, it asks the unpickler to call leave_marker(marker): code that must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (leave_marker, (str(self.marker),))


def test_pickle_payload_is_refused_and_never_run(env, server, tmp_path):
    marker = tmp_path / "payload-ran"
    text = small_yml()
    ck = release_checkpoint(random_spmamba(text, seed=5), hook=_RunsCode(marker))
    data = release_zip(tmp_path / "evil.zip", text, ck).read_bytes()
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url)
    res = pull("-q")
    assert res.exit_code == 1
    line = one_error_line(res)
    assert "refused global tests.runtime.test_pull.leave_marker" in line
    assert not marker.exists()
    assert_nothing_installed(env.home, parts_allowed=False)


# ---------------------------------------------------------------------- concurrency and signals
def test_two_pulls_of_one_model_at_once(env, server, release, monkeypatch):
    from sepcli.runtime import pull as pull_mod

    data, _ = release
    # the first pull's first answer stalls for 1 s after 1000 bytes, then the connection closes; it resumes
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data, stall_after=1000, stall_for=1.0))
    env(url)
    done = {}

    def first():
        try:
            done["result"] = pull_mod.pull(NAME, quiet=True)
        except Exception as exc:  # noqa: BLE001
            done["error"] = exc

    th = threading.Thread(target=first)
    th.start()
    deadline = time.monotonic() + 10
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    res = pull("-q")  # while the first holds the lock
    th.join()
    assert res.exit_code == 1
    assert f"another pull of {NAME} is running" in one_error_line(res)
    assert "error" not in done, done
    assert installed_config(env.home)["provenance"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_sigint_during_the_download_installs_nothing_and_is_resumed(env, server, release, tmp_path):
    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data, stall_after=len(data) // 3, stall_for=30.0))
    env(url)
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", "models", "pull", NAME, "-q"], cwd=tmp_path,
                            env={**os.environ, "SEPCLI_DOWNLOAD_TIMEOUT": "60"}, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    parts = []
    while time.monotonic() < deadline and not (parts and parts[0].stat().st_size > 0):
        time.sleep(0.05)
        parts = list((env.home / "downloads").glob("*.zip.part")) if (env.home / "downloads").exists() else []
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "nothing installed" in err and "Traceback" not in err
    assert_nothing_installed(env.home)
    (part,) = (env.home / "downloads").glob("*.zip.part")
    assert data.startswith(part.read_bytes()) and part.stat().st_size > 0
    server.files["/SPMamba-LibriMix.zip"] = Behaviour(data)
    res = pull("-q")
    assert res.exit_code == 0, res.output
    assert server.ranges("/SPMamba-LibriMix.zip")[-1].startswith("bytes=")


# ---------------------------------------------------------------------- part 4: no surprise network access
@pytest.mark.parametrize("command", ["separate", "batch", "eval", "info"])
def test_commands_never_download_a_catalogue_model(env, server, release, tmp_path, monkeypatch, command):
    data, _ = release
    env(server.serve("/SPMamba-LibriMix.zip", Behaviour(data)))
    sf.write(tmp_path / "mix.wav", np.zeros(800, dtype="float32"), 8000)
    attempts = []
    real_connect = socket.socket.connect

    def watch(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", watch)
    args = {"separate": ["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "out")],
            "batch": ["batch", str(tmp_path), "-o", str(tmp_path / "out")],
            "eval": ["eval", str(tmp_path)], "info": ["models", "info"]}[command]
    res = runner.invoke(app, [*args, NAME] if command == "info" else [*args, "-m", NAME])
    assert res.exit_code == 2, res.output
    line = one_error_line(res)
    assert f"`sepcli models pull {NAME}`" in line and "not installed" in line
    assert attempts == [] and server.requests == []  # not one connection, not one request
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the catalogue data
def test_shipped_catalogue_states_only_cited_facts(monkeypatch):
    import tomllib

    from sepcli.runtime import catalogue

    monkeypatch.delenv("SEPCLI_CATALOGUE", raising=False)
    by_name = {e.name: e for e in catalogue.entries()}
    lib = by_name[NAME]
    assert lib.url == "https://github.com/JusperLee/SPMamba/releases/download/LibriMix/SPMamba-LibriMix.zip"
    assert any("issues/2 " in s for s in lib.url_source) and any("issues/13 " in s for s in lib.url_source)
    assert lib.licence == "Apache-2.0" and lib.sample_rate == 8000 and lib.importer == "spmamba-release"
    assert lib.sha256 is None and lib.size_bytes is None  # no public source states them
    echo = by_name["spmamba-echo2mix"]
    assert echo.url is None and "v1.0" in echo.unavailable  # asset name unconfirmed: no URL
    for e in by_name.values():
        assert e.url_source and e.licence_source and (not e.figures or e.figures.get("source"))
    # shipped in the wheel as package data
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "catalogue.json" in data["sepcli.runtime"]


def test_a_catalogue_model_without_url_needs_from(env, release, tmp_path):
    data, _ = release
    env(None)
    res = runner.invoke(app, ["models", "pull", "spmamba-echo2mix"])
    assert res.exit_code == 2 and "no confirmed download URL" in one_error_line(res) and "v1.0" in res.output
    res = runner.invoke(app, ["separate", str(tmp_path / "x.wav"), "-o", str(tmp_path / "o"), "-m",
                              "spmamba-echo2mix"])
    assert res.exit_code == 2 and "--from FILE" in one_error_line(res)
    copy = tmp_path / "echo.zip"
    copy.write_bytes(data)
    res = runner.invoke(app, ["models", "pull", "spmamba-echo2mix", "--from", str(copy), "-q"])
    assert res.exit_code == 0, res.output
    assert (env.home / "models" / "spmamba-echo2mix" / "config.json").is_file()


def test_a_bad_catalogue_file_is_one_line(env, tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    monkeypatch.setenv("SEPCLI_CATALOGUE", str(bad))
    res = pull()
    assert res.exit_code == 1 and str(bad) in one_error_line(res) and "not readable JSON" in res.output
    res = runner.invoke(app, ["models", "--json"])  # the installed models are still listed, with a warning
    assert res.exit_code == 0 and "s4m-tiny-16k" in res.stdout and f"sepcli: warning: {bad}" in res.stderr


def test_dns_failure_names_the_url_and_the_manual_steps(env, monkeypatch):
    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "https://github.invalid/JusperLee/SPMamba/releases/download/LibriMix/SPMamba-LibriMix.zip"
    env(url)
    res = pull()
    assert res.exit_code == 1
    line = one_error_line(res)
    assert url in line and "cannot resolve github.invalid" in line and "--from FILE" in line
    assert_nothing_installed(env.home, parts_allowed=False)


def test_sigterm_during_the_download_is_143_and_installs_nothing(env, server, release, tmp_path):
    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data, stall_after=1000, stall_for=30.0))
    env(url)
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", "models", "pull", NAME, "-q"], cwd=tmp_path,
                            env={**os.environ, "SEPCLI_DOWNLOAD_TIMEOUT": "60"}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert_nothing_installed(env.home)


def test_an_interrupted_import_keeps_the_complete_download_for_the_next_pull(env, server, release, monkeypatch):
    from sepcli.runtime import spmamba_import

    data, _ = release
    url = server.serve("/SPMamba-LibriMix.zip", Behaviour(data))
    env(url)
    real = spmamba_import.import_release

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(spmamba_import, "import_release", interrupted)
    res = pull("-q")
    assert res.exit_code == 130 and "nothing installed" in one_error_line(res)
    assert_nothing_installed(env.home)
    (part,) = (env.home / "downloads").glob("*.zip.part")
    assert part.read_bytes() == data  # complete, kept as a part
    monkeypatch.setattr(spmamba_import, "import_release", real)
    res = pull("-q")
    assert res.exit_code == 0, res.output
    assert server.ranges("/SPMamba-LibriMix.zip")[-1] == f"bytes={len(data)}-"  # answered 416: nothing sent again
    assert installed_config(env.home)["provenance"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_progress_bar_when_stderr_is_a_terminal(env, server, release, tmp_path):
    import pty

    data, _ = release
    env(server.serve("/SPMamba-LibriMix.zip", Behaviour(data)))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", "models", "pull", NAME], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, seen
    assert f"pulling {NAME}".encode() in seen and b"\x1b[" in seen  # rich's bar, drawn with terminal codes
    assert re.search(rb"(\d+\.\d)/\1 [kM]B", seen)  # the bar reached the end (done/total, equal)
    assert b"installed" in out


@pytest.mark.parametrize("kind", ["zip-slip", "zip-bomb"])
def test_a_hostile_archive_is_refused_and_installs_nothing(env, server, tmp_path, monkeypatch, kind):
    """The importer's archive checks (tests/runtime/test_spmamba_import.py covers them in depth) hold for a pulled file:
    a member named outside the archive, or one that would inflate absurdly, is refused before anything is
    written."""
    monkeypatch.chdir(tmp_path)
    text = small_yml()
    ck = release_checkpoint(random_spmamba(text, seed=6))
    if kind == "zip-slip":
        extra = {"../../evil.txt": b"owned"}
    else:  # 64 MiB of zeros deflate to ~64 KiB: over the ratio the importer accepts
        extra = {"SPMamba-LibriMix/padding.bin": bytes(64 << 20)}
    data = release_zip(tmp_path / "hostile.zip", text, ck, extra=extra).read_bytes()
    assert len(data) < 2 << 20
    env(server.serve("/SPMamba-LibriMix.zip", Behaviour(data)))
    res = pull("-q")
    assert res.exit_code == 1
    line = one_error_line(res)
    assert "cannot be installed" in line
    assert ("points outside the archive" in line) if kind == "zip-slip" else ("zip bomb" in line), line
    assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert_nothing_installed(env.home, parts_allowed=False)
