"""The data recipe's package step (recipes/make_data.py ensure_packages) against fake dpkg / apt-cache / apt-get
programs on PATH: what it installs, when it enables contrib/non-free, and how it fails."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import make_data  # noqa: E402

FAKES = {
    # dpkg -s PKG: installed unless listed in $FAKE_MISSING
    "dpkg": 'for m in $FAKE_MISSING; do [ "$2" = "$m" ] && exit 1; done; exit 0',
    "apt-cache": 'echo "$@" >> "$FAKE_LOG.cache"\n'
                 'printf "mbrola-us1 - American English male voice\\nmbrola-de4 - German voice\\n"',
    "apt-get": 'echo "$DEBIAN_FRONTEND $*" >> "$FAKE_LOG"\n'
               '[ "$1" = "install" ] && [ -n "$FAKE_FAIL" ] && { echo "E: Could not open lock file" >&2; exit 100; }\n'
               # download -q PKG: the test's package file (built with the real dpkg-deb) into the working folder
               '[ "$1" = "download" ] && [ -n "$FAKE_FAIL" ] && '
               '{ echo "E: Unable to locate package $3" >&2; exit 100; }\n'
               '[ "$1" = "download" ] && cp "$FAKE_DEB" "./$3_1.0_all.deb"\n'
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


def _deb(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A real Debian package (dpkg-deb --build) holding `files` and symbolic `links` (path -> target)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: speechpkg\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: t <t@t>\nDescription: test\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    for path, target in (links or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(target)
    out = tmp_path / "speechpkg.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def test_unpack_takes_only_the_named_files_once_without_installing(apt, tmp_path, monkeypatch):
    """A package in UNPACK is downloaded (not installed) and only the regular files under its named paths are
    copied out, byte for byte; links are not followed or made; a second run downloads nothing."""
    _, log = apt
    files = {"usr/share/speech/voices/a.ogg": b"first", "usr/share/speech/voices/de/b.ogg": b"second",
             "usr/share/speech/other.txt": b"not wanted", "usr/share/speech/voices.txt": b"prefix only"}
    monkeypatch.setenv("FAKE_DEB", str(_deb(tmp_path, files, {"usr/share/speech/voices/link.ogg": "/etc/passwd"})))
    monkeypatch.setattr(make_data, "UNPACK", {"speechpkg": ("usr/share/speech/voices/",)})
    root = tmp_path / "unpacked"
    make_data.ensure_unpacked(root)
    got = {str(f.relative_to(root / "speechpkg")): f.read_bytes()
           for f in (root / "speechpkg").rglob("*") if f.is_file() or f.is_symlink()}
    assert got == {"usr/share/speech/voices/a.ogg": b"first", "usr/share/speech/voices/de/b.ogg": b"second",
                   ".complete": b""}
    assert _calls(log) == ["noninteractive download -q speechpkg"]
    assert sorted(p.name for p in root.iterdir()) == ["speechpkg"]  # the download folder is gone
    make_data.ensure_unpacked(root)
    assert len(_calls(log)) == 1


def test_unpack_failures_are_one_line_and_leave_nothing(apt, tmp_path, monkeypatch):
    monkeypatch.setattr(make_data, "UNPACK", {"speechpkg": ("usr/share/speech/voices/",)})
    root = tmp_path / "unpacked"
    monkeypatch.setenv("FAKE_DEB", str(_deb(tmp_path, {"usr/share/speech/readme": b"no voices"})))
    with pytest.raises(SystemExit) as e:  # the package does not hold the named files
        make_data.ensure_unpacked(root)
    assert "\n" not in str(e.value) and "holds none of usr/share/speech/voices/" in str(e.value)
    assert list(root.iterdir()) == []
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(SystemExit) as e:  # apt-get download fails
        make_data.ensure_unpacked(root)
    assert "\n" not in str(e.value) and "apt-get download failed (exit 100: E: Unable to locate package" in str(e.value)
    assert list(root.iterdir()) == []
