"""The data recipe's package step (recipes/make_data.py ensure_packages) against fake dpkg / apt-cache / apt-get
programs on PATH: what it installs, when it enables contrib/non-free, and how it fails."""

import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import make_data  # noqa: E402

FAKES = {
    # dpkg -s PKG: installed unless listed in $FAKE_MISSING
    "dpkg": 'for m in $FAKE_MISSING; do [ "$2" = "$m" ] && exit 1; done; exit 0',
    "apt-cache": 'echo "$@" >> "$FAKE_LOG.cache"\n'
                 'printf "mbrola-us1 - American English male voice\\nmbrola-de4 - German voice\\n"',
    "apt-get": 'echo "$DEBIAN_FRONTEND $*" >> "$FAKE_LOG"\n'
               '[ "$1" = "install" ] && [ -n "$FAKE_FAIL" ] && { echo "E: Could not open lock file" >&2; exit 100; }\n'
               'exit 0',
}


@pytest.fixture
def apt(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        f = bin_dir / name
        f.write_text("#!/bin/sh\n" + body + "\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    apt_dir = tmp_path / "etc-apt"
    (apt_dir / "sources.list.d").mkdir(parents=True)
    (apt_dir / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n")
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=trixie\n')
    log = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr(make_data, "APT_DIR", apt_dir)
    monkeypatch.setattr(make_data, "OS_RELEASE", os_release)
    return apt_dir, log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_missing_runs_no_apt(apt, monkeypatch):
    apt_dir, log = apt
    monkeypatch.setenv("FAKE_MISSING", "")
    monkeypatch.setattr(make_data.glob, "glob", lambda pattern: ["/usr/share/mbrola/us1/"])
    make_data.ensure_packages()
    assert _calls(log) == [] and not (apt_dir / "sources.list.d" / "sepcli-contrib.sources").exists()


def test_missing_package_enables_contrib_and_installs_everything_with_the_mbrola_voices(apt, monkeypatch):
    apt_dir, log = apt
    monkeypatch.setenv("FAKE_MISSING", "klettres-data")
    make_data.ensure_packages()
    src = (apt_dir / "sources.list.d" / "sepcli-contrib.sources").read_text()
    assert "Components: contrib non-free" in src and "Suites: trixie trixie-updates" in src  # this release's
    update, install = _calls(log)
    assert update == "noninteractive update -qq"
    args = install.split()
    assert args[:4] == ["noninteractive", "install", "-y", "-q"]
    assert args[4:] == make_data.APT_PACKAGES + ["mbrola-de4", "mbrola-us1"]
    assert "--names-only" in Path(f"{log}.cache").read_text()  # not festvox-* packages whose text names mbrola


@pytest.mark.parametrize("existing", [
    "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: contrib non-free\n",
    "deb http://deb.debian.org/debian trixie main contrib non-free\n",
])
def test_a_source_that_already_enables_contrib_is_not_duplicated(apt, monkeypatch, existing):
    apt_dir, log = apt
    name = "contrib.sources" if existing.startswith("Types") else "extra.list"
    (apt_dir / "sources.list.d" / name).write_text(existing)
    monkeypatch.setenv("FAKE_MISSING", "drascula")
    make_data.ensure_packages()
    assert not (apt_dir / "sources.list.d" / "sepcli-contrib.sources").exists()
    assert len(_calls(log)) == 2


def test_disabled_or_partial_sources_do_not_count(apt):
    apt_dir, _ = apt
    d = apt_dir / "sources.list.d"
    (d / "off.sources").write_text("Types: deb\nURIs: http://x\nSuites: trixie\nComponents: contrib non-free\n"
                                   "Enabled: no\n")
    (d / "half.list").write_text("deb http://x trixie main contrib\n# deb http://x trixie contrib non-free\n")
    assert not make_data._apt_enables_contrib_non_free(apt_dir)


def test_apt_failure_is_one_line_without_traceback(apt, monkeypatch):
    _, log = apt
    monkeypatch.setenv("FAKE_MISSING", "flite")
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(SystemExit) as e:
        make_data.ensure_packages()
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install failed (exit 100" in msg and "Could not open lock file" in msg
    assert "as root" in msg


def test_unwritable_apt_folder_is_one_line(apt, monkeypatch):
    apt_dir, log = apt
    monkeypatch.setenv("FAKE_MISSING", "flite")
    monkeypatch.setattr(make_data, "APT_DIR", apt_dir / "missing")  # writing the sources file fails
    with pytest.raises(SystemExit, match=r"cannot write .*sepcli-contrib.sources .*as root"):
        make_data.ensure_packages()
    assert _calls(log) == []
