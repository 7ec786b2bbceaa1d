"""sepcli.runtime.download against a loopback HTTP server (tests/loopback.py): never the internet."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading

import pytest

from sepcli.runtime import download as dl
from sepcli.runtime.download import (Busy, DiskFull, HTTPStatusError, PlainProgress, Settings, Stalled, TooLarge,
                                     Unreachable, download, part_path, pull_lock, sha256_file)
from tests.loopback import Behaviour, Loopback, fill_disk_after, refused_url

FAST = Settings(connect_timeout=2.0, read_timeout=0.3, retries=3, backoff=0.01, cap=1 << 24)
DATA = os.urandom(300_000)  # several chunks of the transfer


@pytest.fixture
def server():
    with Loopback() as srv:
        yield srv


def no_sleep(_):
    pass


def test_plain_download_writes_the_exact_bytes(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA))
    got = download(url, tmp_path / "f.zip", settings=FAST)
    assert got.path.read_bytes() == DATA and got.size == len(DATA) and got.resumed_from == 0
    assert sha256_file(got.path) == hashlib.sha256(DATA).hexdigest()
    assert not part_path(tmp_path / "f.zip").exists()
    assert server.ranges("/f.zip") == [None]


def test_dropped_connection_is_resumed_with_range_in_the_same_call(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, drop_after=100_000))
    got = download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert got.path.read_bytes() == DATA
    ranges = server.ranges("/f.zip")
    assert ranges[0] is None and len(ranges) == 2
    start = int(ranges[1][len("bytes="):-1])
    assert 0 < start <= 100_000  # what arrived before the drop is kept, the rest asked for


def test_a_partial_file_left_by_a_failed_call_is_resumed_by_the_next(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, drop_after=120_000, drops=10))
    with pytest.raises(dl.DownloadError, match="closed after|lost after"):
        download(url, tmp_path / "f.zip", settings=Settings(**{**FAST.__dict__, "retries": 0}))
    part = part_path(tmp_path / "f.zip")
    kept = part.read_bytes()
    assert 0 < len(kept) <= 120_000 and DATA.startswith(kept)  # a prefix of the file, resumable
    server.files["/f.zip"] = Behaviour(DATA)
    got = download(url, tmp_path / "f.zip", settings=FAST)
    assert got.path.read_bytes() == DATA and got.resumed_from == len(kept)
    assert server.ranges("/f.zip")[-1] == f"bytes={len(kept)}-"


def test_a_server_ignoring_range_restarts_from_the_start(server, tmp_path):
    dest = tmp_path / "f.zip"
    part_path(dest).write_bytes(b"garbage that is not a prefix")
    url = server.serve("/f.zip", Behaviour(DATA, ignore_range=True))
    got = download(url, dest, settings=FAST)
    assert got.path.read_bytes() == DATA  # not the garbage + the whole file
    assert server.ranges("/f.zip") == ["bytes=28-"]


def test_416_with_a_complete_part_finishes_without_a_body(server, tmp_path):
    dest = tmp_path / "f.zip"
    part_path(dest).write_bytes(DATA)
    url = server.serve("/f.zip", Behaviour(DATA))
    got = download(url, dest, settings=FAST)
    assert got.path.read_bytes() == DATA and len(server.requests) == 1


def test_416_with_a_longer_part_starts_again(server, tmp_path):
    dest = tmp_path / "f.zip"
    part_path(dest).write_bytes(DATA + b"extra")
    url = server.serve("/f.zip", Behaviour(DATA))
    got = download(url, dest, settings=FAST, sleep=no_sleep)
    assert got.path.read_bytes() == DATA and server.ranges("/f.zip") == [f"bytes={len(DATA) + 5}-", None]


def test_404_is_not_retried(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, status=404))
    with pytest.raises(HTTPStatusError, match="HTTP 404") as exc:
        download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert exc.value.status == 404 and len(server.requests) == 1
    assert "\n" not in str(exc.value) and url in str(exc.value)
    assert not part_path(tmp_path / "f.zip").exists()


def test_500_is_retried_with_exponential_back_off_then_reported(server, tmp_path):
    waits = []
    url = server.serve("/f.zip", Behaviour(DATA, status=500))
    with pytest.raises(HTTPStatusError, match="HTTP 500"):
        download(url, tmp_path / "f.zip", settings=Settings(**{**FAST.__dict__, "backoff": 0.5}),
                 sleep=waits.append)
    assert len(server.requests) == 1 + FAST.retries
    assert waits == [0.5, 1.0, 2.0]


def test_a_few_500s_then_success(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, fail_first=2))
    assert download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep).path.read_bytes() == DATA
    assert len(server.requests) == 3


def test_a_stalled_server_times_out_names_the_host_and_keeps_the_prefix(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, stall_after=50_000, stalls=10, stall_for=1.0))
    s = Settings(**{**FAST.__dict__, "retries": 1})
    with pytest.raises(Stalled, match=r"no data from 127\.0\.0\.1 for 0\.3 s"):
        download(url, tmp_path / "f.zip", settings=s, sleep=no_sleep)
    kept = part_path(tmp_path / "f.zip").read_bytes()
    assert 0 < len(kept) <= 100_000 and DATA.startswith(kept)


def test_a_stall_then_a_good_answer_resumes(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA, stall_after=50_000, stall_for=1.0))
    got = download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert got.path.read_bytes() == DATA and server.ranges("/f.zip")[1] is not None


def test_connection_refused_is_unreachable_after_the_retries(tmp_path):
    url = refused_url()
    with pytest.raises(Unreachable, match="connection refused") as exc:
        download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert url in str(exc.value)


def test_content_length_over_the_cap_is_refused_before_reading(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA))
    with pytest.raises(TooLarge, match="cap"):
        download(url, tmp_path / "f.zip", settings=Settings(**{**FAST.__dict__, "cap": 1000}))
    assert not part_path(tmp_path / "f.zip").exists() and not (tmp_path / "f.zip").exists()


def test_a_body_growing_past_the_cap_is_stopped(server, tmp_path, monkeypatch):
    url = server.serve("/f.zip", Behaviour(DATA))
    # a server whose Content-Length says less than it sends cannot be made with http.server; drop the header
    # client-side instead so only the body counts
    real = dl.http.client.HTTPResponse.getheader

    def no_length(self, name, default=None):
        return None if name == "Content-Length" else real(self, name, default)

    monkeypatch.setattr(dl.http.client.HTTPResponse, "getheader", no_length)
    with pytest.raises(TooLarge, match="stopped"):
        download(url, tmp_path / "f.zip", settings=Settings(**{**FAST.__dict__, "cap": 100_000}))
    assert not part_path(tmp_path / "f.zip").exists()


def test_disk_full_is_one_error_and_the_part_stays_resumable(server, tmp_path, monkeypatch):
    url = server.serve("/f.zip", Behaviour(DATA))
    fill_disk_after(monkeypatch, dl, 150_000)
    with pytest.raises(DiskFull, match="disk full") as exc:
        download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert "\n" not in str(exc.value)
    kept = part_path(tmp_path / "f.zip").read_bytes()
    assert 0 < len(kept) <= 150_000 and DATA.startswith(kept)
    monkeypatch.undo()
    got = download(url, tmp_path / "f.zip", settings=FAST)
    assert got.path.read_bytes() == DATA and got.resumed_from == len(kept)


def test_redirects_are_followed(server, tmp_path):
    server.serve("/real.zip", Behaviour(DATA))
    url = server.serve("/f.zip", Behaviour(b"", redirect_to="/real.zip"))
    assert download(url, tmp_path / "f.zip", settings=FAST).path.read_bytes() == DATA


def test_plain_progress_lines(server, tmp_path):
    url = server.serve("/f.zip", Behaviour(DATA))
    out = io.StringIO()
    download(url, tmp_path / "f.zip", settings=FAST, progress=PlainProgress("pull x", stream=out, every=3600))
    lines = out.getvalue().splitlines()
    assert lines[0] == "pull x: 0.0 MB of 0.3 MB (0%)" and lines[-1] == "pull x: 0.3 MB of 0.3 MB (100%)"


def test_the_lock_refuses_a_second_holder(tmp_path):
    import subprocess
    import sys

    lock = tmp_path / "m.lock"
    with pull_lock(lock, "m"):
        code = ("import sys; from pathlib import Path; from sepcli.runtime.download import pull_lock, Busy\n"
                "try:\n  with pull_lock(Path(sys.argv[1]), 'm'): print('got it')\n"
                "except Busy as e: print(e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True).stdout
        assert "another pull of m is running" in out
    with pull_lock(lock, "m"):  # released on exit
        pass
    t_err = []

    def other():
        try:
            with pull_lock(lock, "m"):
                pass
        except Busy as e:
            t_err.append(e)

    with pull_lock(lock, "m"):  # flock is per open file: another open in this process is refused too
        th = threading.Thread(target=other)
        th.start()
        th.join()
    assert t_err and isinstance(t_err[0], Busy)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEPCLI_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_RETRIES", "inf")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_BACKOFF", "nan")
    monkeypatch.setenv("SEPCLI_DOWNLOAD_CONNECT_TIMEOUT", "-3")
    s = Settings.from_env()
    assert s.read_timeout == 0.5 and s.retries == 20
    assert s.backoff == Settings.backoff and s.connect_timeout == Settings.connect_timeout
    assert Settings.from_env(cap=5).cap == 5


def test_disk_full_found_only_when_the_file_is_closed(server, tmp_path, monkeypatch):
    url = server.serve("/f.zip", Behaviour(DATA))
    real_open = open

    class NoRoom(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        if str(path).endswith(".part") and "b" in mode:  # every byte fits the buffer: the error comes at close
            return io.BufferedWriter(NoRoom(path, mode.replace("b", "")), buffer_size=1 << 22)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(dl, "open", fake_open, raising=False)
    with pytest.raises(DiskFull, match="disk full"):
        download(url, tmp_path / "f.zip", settings=FAST, sleep=no_sleep)
    assert part_path(tmp_path / "f.zip").read_bytes() == b""  # nothing written, nothing claimed
    assert not (tmp_path / "f.zip").exists()
