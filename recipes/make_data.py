"""Data recipe: speaker pools from Debian's speech packages, and fixed LibriMix-style validation/test sets.

    python recipes/make_data.py --out data            # installs packages (apt), builds everything
    python recipes/make_data.py --out data --stage sets --sample-rate 8000

Stages:
  packages  apt-get install the speech packages (enables Debian contrib/non-free for MBROLA), and unpack the
            speech of the packages in UNPACK into <out>/unpacked/ (apt-get download; not installed)
  pools     data/pools/<speaker>.npy + speakers.json at 16 kHz: real recorded people and synthetic voices
  update    packages, then only the pools that the index lacks (a source added to the recipe since the build),
            the splits again if HELD_OUT changed, the missing voice variants, and the fixed sets that an older
            HELD_OUT/SETS_VERSION made
  variants  data/pools/<speaker>.v.npy (and .v2.npy with --variants-per-person 2): each real training person's
            speech with formants and pitch shifted (sepcli/train/variants.py), used by `sepcli train --variants`;
            makes the ones the index lacks and removes those beyond the count
  sets      data/<rate>/{val,test_real,test_synth}/{mix,s1,s2}/*.wav + metadata.csv (LibriMix layout), and
            seen_real, seen_synth: the same kind of mixture made of training people, to measure how much of the
            held-out gap is the people being new (a diagnostic; never used for selection)
  example   examples/mix.wav (10 s of two held-out real people) for `make demo`

Split by person (see HELD_OUT): validation and test people never appear in training. Nothing is downloaded
except Debian packages; generated data stays out of git (data/ is ignored).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sepcli.train.mixing import MixOptions, make_mixture, rng_for  # noqa: E402
from sepcli.train.speakers import Speaker, assign_splits, load_pool, read_index, read_skipped, write_index  # noqa: E402
from sepcli.train.variants import (VARIANTS_PER_PERSON, choose_shift, make_variant, pitch_median,  # noqa: E402
                                   variant_id, variant_number, variant_source)

POOL_SR = 16000
SND = "/usr/share/asterisk/sounds"

APT_PACKAGES = [
    "espeak-ng", "mbrola", "flite", "libttspico-utils",
    "asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722", "asterisk-core-sounds-fr-g722",
    "asterisk-core-sounds-it-g722", "asterisk-core-sounds-ru-g722", "asterisk-prompt-it-menardi-wav",
    "asterisk-prompt-fr-armelle", "asterisk-prompt-es-co", "fillets-ng-data-nl", "klettres-data",
    "ktuberling-data", "uqm-voice", "tuxpaint-stamps-default", "hedgewars-data", "flight-of-the-amazon-queen",
    "fillets-ng-data-cs", "festvox-ru", "drascula", "drascula-spanish",
]
KTUBERLING = "/usr/share/ktuberling/sounds"
UQM_ADDONS = "/usr/share/games/uqm/content/addons"
TUXPAINT_STAMPS = "/usr/share/tuxpaint/stamps"
HEDGEWARS_VOICES = "/usr/share/games/hedgewars/Data/Sounds/voices"
FOTAQ = "/usr/share/scummvm/flight-of-the-amazon-queen/queen.1c"
FILLETS = "/usr/share/games/fillets-ng/sound"
DRASCULA = "/usr/share/scummvm/drascula"
# Packages whose speech the recipe unpacks (apt-get download, dpkg-deb) into <out>/unpacked/<package>/ instead of
# installing them: installing would pull in a game engine, Qt or 456 MB of textures for a few minutes of speech.
# Found by session 13's survey of Debian's Contents files: recipes/SPEECH_SOURCES.md (also what was left out and why).
UNPACK = {
    "kajongg": ("usr/share/kajongg/voices/",),
    "nexuiz-data": ("usr/share/games/nexuiz/data/data.pk3",),
    "warzone2100-data": ("usr/share/games/warzone2100/base.wz",),
}
# the recordings festvox-ru's unit-selection voice was cut from: Nickolay Shmyrev reading 620 Russian sentences
FESTVOX_RU = "/usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav"

# person -> split. Everything not named here trains.
HELD_OUT = {
    # real recorded people, 16 kHz: the test of generalisation to unseen humans
    "carlo": "test", "ivr-ru": "test", "june": "test",
    # real, for validation during training: two 8 kHz people and (from session 4) two wideband Tux Paint readers
    # (Kseniya Buraya, Krasimir Petkov), so the real+real validation pairs include the test's kind of audio
    "menardi": "val", "armelle": "val", "tuxpaint-be": "val", "tuxpaint-bg": "val",
    # synthetic voices (MBROLA databases = recorded people behind them)
    "mbrola-us2": "test", "mbrola-fr4": "test", "mbrola-de5": "test", "mbrola-it3": "test",
    "mbrola-nl2": "test", "mbrola-pl1": "test",
    "mbrola-us3": "val", "mbrola-de2": "val", "mbrola-es2": "val", "mbrola-fr1": "val",
}


# The fixed sets' layout; recorded in <rate>/README.json with HELD_OUT, and `--stage update` rebuilds sets that
# were made by another version. 2: validation holds same-kind pairs only (real+real and synthetic+synthetic
# alternating, each pair of people in turn), the kinds of mixture the test sets measure. 3: the level of one
# speaker relative to the other is uniform in -5..+5 dB (version 2 drew each source in +-5 dB and centred them,
# so two speakers differed by up to +-10 dB). 4: adds seen_real and seen_synth (sets 1-3 unchanged). 5: seen_real
# drawn from the training persons of session 6's sources too (Czech Fillets-NG heroes, festvox-ru's reader); the
# other sets are unchanged. A change of the pools' people (pool_digest) marks the sets stale too: session 13 added
# training persons without a new version, and a machine that had built the sets before kept the older seen_real
# while a fresh build drew them (session 16: 5.07 against 5.12 dB for one model).
SETS_VERSION = 5

# Speaker-id prefixes of the sources recorded at 11 kHz (band-limited to 5.5 kHz). They train, but seen_real
# leaves them out so that it holds wideband speech like the 16 kHz test people.
NARROWBAND = ("fotaq-", "uqm-", "drascula-", "warzone-")

# ----------------------------------------------------------------------------------------------- packages
APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")


def _apt_enables_contrib_non_free(apt_dir: Path) -> bool:
    """Whether some apt source already has both the contrib and the non-free component (deb822 or one-line)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.sources")),
             *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":  # deb822 stanzas separated by blank lines; "Enabled: no" switches one off
            stanzas = [st for st in re.split(r"\n\s*\n", text) if not re.search(r"^Enabled:\s*no", st, re.M | re.I)]
            lines = [ln.split(":", 1)[1] for st in stanzas for ln in st.splitlines()
                     if ln.lower().startswith("components:")]
        else:
            lines = [ln for ln in text.splitlines() if ln.strip().startswith("deb ")]
        if any({"contrib", "non-free"} <= set(ln.split()) for ln in lines):
            return True
    return False


def _codename() -> str:
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", OS_RELEASE.read_text() if OS_RELEASE.is_file() else "", re.M)
    return m.group(1) if m else "bookworm"


def _apt(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run apt-get; a failure ends the recipe with one line (the usual causes: not root, no network)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        r = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise SystemExit("make_data: apt-get not found: the recipe installs Debian packages (install them by hand: "
                         + " ".join(APT_PACKAGES) + ")") from None
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"make_data: apt-get {args[0]} failed (exit {r.returncode}: {last}); run the recipe as root "
                         "or install the packages it names (recipes/make_data.py APT_PACKAGES)")
    return r


def _mbrola_voices() -> list[str]:
    r = subprocess.run(["apt-cache", "search", "--names-only", "^mbrola-"], capture_output=True, text=True)
    return sorted(line.split()[0] for line in r.stdout.splitlines() if line.strip())


def ensure_packages() -> None:
    """Install the recipe's Debian packages and every MBROLA voice when any is missing. MBROLA lives in Debian's
    contrib/non-free sections: a sources file enables them unless an apt source already does."""
    missing = [p for p in APT_PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if not missing and glob.glob("/usr/share/mbrola/*/"):
        return
    if not _apt_enables_contrib_non_free(APT_DIR):
        src, release = APT_DIR / "sources.list.d" / "sepcli-contrib.sources", _codename()
        try:
            src.write_text(f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {release} {release}-updates\n"
                           "Components: contrib non-free\n"
                           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        except OSError as e:
            raise SystemExit(f"make_data: cannot write {src} ({e.strerror}): run the recipe as root, or enable "
                             "Debian's contrib and non-free sections and install the packages it names") from None
    _apt("update", "-qq")
    _apt("install", "-y", "-q", *APT_PACKAGES, *_mbrola_voices())


def ensure_unpacked(root: Path) -> None:
    """Each UNPACK package's named files under root/<package>/ (their paths inside the package kept): downloaded
    with `apt-get download` (no root needed) and unpacked with `dpkg-deb -x`, never installed. A package is
    unpacked once; its folder appears complete or not at all."""
    for pkg, wanted in UNPACK.items():
        dest = root / pkg
        if (dest / ".complete").exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{pkg}.") as tmp:
            _apt("download", "-q", pkg, cwd=tmp)
            debs = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
            if not debs:
                raise SystemExit(f"make_data: apt-get download {pkg} left no .deb file")
            tree = Path(tmp) / "tree"
            if not _extract_deb(debs[0], wanted, tree):
                raise SystemExit(f"make_data: {debs[0].name} holds none of {', '.join(wanted)}")
            (tree / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tree, dest)
        print(f"unpacked {pkg} into {dest}", flush=True)


def _extract_deb(deb: Path, wanted: tuple[str, ...], dest: Path) -> int:
    """Move the regular files of `deb` whose paths start with one of `wanted` to dest/<path>; returns how many.
    `dpkg-deb -x` unpacks beside dest (it keeps paths inside its folder); links are not taken."""
    raw = dest.with_name("raw")
    r = subprocess.run(["dpkg-deb", "-x", str(deb), str(raw)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"make_data: dpkg-deb cannot read {deb.name}: "
                         f"{(r.stderr.strip().splitlines() or ['no message'])[-1]}")
    n = 0
    for f in sorted(raw.rglob("*")):
        name = f.relative_to(raw).as_posix()
        if name.startswith(wanted) and f.is_file() and not f.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest / name)
            n += 1
    return n


# ----------------------------------------------------------------------------------------------- decoding
def decode(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 and its rate. `archive::member` reads a member of a zip archive (the UQM voice pack)."""
    if "::" in path:
        import io

        archive, member = path.split("::", 1)
        if archive.endswith(".1c"):
            return decode_queen(archive, member)
        x, rate = sf.read(io.BytesIO(_zip(archive).read(member)), dtype="float32", always_2d=True)
        return x.mean(1), rate
    ext = path.rsplit(".", 1)[-1].lower()
    if ext == "als":  # Drascula's speech: raw unsigned 8-bit PCM at 11025 Hz, no header
        return (np.fromfile(path, np.uint8).astype(np.float32) - 128.0) / 128.0, 11025
    if ext in ("g722", "gsm"):
        import av

        with av.open(path, format=ext) as c:
            rate = c.streams.audio[0].rate
            frames = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
        x = np.concatenate(frames).astype(np.float32)
        return x / 32768.0 if frames and frames[0].dtype == np.int16 else x, rate
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(1), rate


def _zip(archive: str):
    """One open ZipFile per archive and process (pool builds read thousands of members). Keyed by the process id:
    a forked worker must not share its parent's file offset."""
    return _zip_for(archive, os.getpid())


@lru_cache(maxsize=8)
def _zip_for(archive: str, pid: int):
    import zipfile

    return zipfile.ZipFile(archive)


QUEEN_CODECS = {1: "mp3", 2: "ogg", 3: "flac"}  # the compression byte of a compressed (QTBL) queen.1c


@lru_cache(maxsize=4)
def queen_table(archive: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Codec and {name: (offset, size)} of a compressed Flight of the Amazon Queen resource file. Layout (as read
    by ScummVM's queen engine): "QTBL", 6-byte version, 2 skipped, compression byte, uint16 BE entry count, then
    per entry a 12-byte name, a bundle byte, uint32 BE offset and uint32 BE size."""
    import struct

    with open(archive, "rb") as f:
        head = f.read(15)
        if head[:4] != b"QTBL":
            raise ValueError(f"{archive}: not a compressed queen resource file")
        codec = QUEEN_CODECS.get(head[12])
        if codec is None:
            raise ValueError(f"{archive}: uncompressed speech is not supported")
        (count,) = struct.unpack(">H", head[13:15])
        raw = f.read(21 * count)
    table = {}
    for i in range(count):
        e = raw[21 * i: 21 * (i + 1)]
        offset, size = struct.unpack(">II", e[13:21])
        table[e[:12].rstrip(b"\0").decode("latin-1")] = (offset, size)
    return codec, table


def decode_queen(archive: str, member: str) -> tuple[np.ndarray, int]:
    import io

    import av

    codec, table = queen_table(archive)
    offset, size = table[member]
    with open(archive, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    parts = []
    with av.open(io.BytesIO(data), format=codec) as c:
        rate = c.streams.audio[0].rate
        for frame in c.decode(audio=0):
            a = frame.to_ndarray()  # (channels, n) planar or (1, n * channels) packed; mono: speech
            scale = float(np.iinfo(a.dtype).max + 1) if a.dtype.kind == "i" else 1.0  # FLAC decodes to int16
            parts.append((a.reshape(a.shape[0], -1).mean(0) / scale).astype(np.float32))
    return np.concatenate(parts), rate


def trim(x: np.ndarray, sr: int, floor_db: float = -40.0) -> np.ndarray:
    hop = sr // 100
    n = len(x) // hop
    if n == 0:
        return x[:0]
    e = 10 * np.log10((x[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)
    on = np.nonzero(e > e.max() + floor_db)[0]
    if len(on) == 0:
        return x[:0]
    return x[max(0, on[0] - 2) * hop: (on[-1] + 3) * hop]


def join_utterances(parts: list[np.ndarray], seed: int) -> np.ndarray:
    """Utterances joined with 50-350 ms pauses, resampled to POOL_SR already."""
    rng = np.random.default_rng(seed)
    out = []
    for p in parts:
        out.append(p)
        out.append(np.zeros(int(POOL_SR * rng.uniform(0.05, 0.35)), np.float32))
    x = np.concatenate(out) if out else np.zeros(0, np.float32)
    peak = np.abs(x).max() if len(x) else 0
    return x / peak * 0.9 if peak > 0 else x


def to_pool_rate(x: np.ndarray, sr: int) -> np.ndarray:
    return x if sr == POOL_SR else soxr.resample(x, sr, POOL_SR).astype(np.float32)


# ----------------------------------------------------------------------------------------------- sources
def real_jobs(unpacked: Path = Path("data") / "unpacked") -> list[tuple[str, str, list[str]]]:
    """(speaker id, person, files). Folder names are per person; symlinked duplicates are skipped. `unpacked`: where
    ensure_unpacked put the UNPACK packages."""
    jobs = [
        ("allison-en", "allison", sorted(glob.glob(f"{SND}/en_US_f_Allison/**/*.g722", recursive=True))),
        ("allison-es", "allison", sorted(glob.glob(f"{SND}/es_MX_f_Allison/**/*.g722", recursive=True))),
        ("june", "june", sorted(glob.glob(f"{SND}/fr_CA_f_June/**/*.g722", recursive=True))),
        ("carlo", "carlo", sorted(glob.glob(f"{SND}/it_IT_m_Carlo/**/*.g722", recursive=True))),
        ("ivr-ru", "ivr-ru", sorted(glob.glob(f"{SND}/ru_RU_f_IvrvoiceRU/**/*.g722", recursive=True))),
        ("menardi", "menardi", sorted(glob.glob(f"{SND}/it_IT_f_Menardi/**/*.wav", recursive=True))),
        ("armelle", "armelle", sorted(glob.glob(f"{SND}/fr/**/*.gsm", recursive=True))),
        ("es-co", "es-co", sorted(glob.glob(f"{SND}/es/**/*.gsm", recursive=True))),
    ]
    jobs += fillets_jobs()
    jobs.append(("festvox-ru-nsh", "festvox-ru-nsh", sorted(glob.glob(f"{FESTVOX_RU}/*.wav"))))
    jobs += drascula_jobs()
    for lang_dir in sorted(glob.glob("/usr/share/klettres/*/")):
        lang = Path(lang_dir).name
        files = sorted(glob.glob(f"{lang_dir}**/*.ogg", recursive=True))
        if files:
            jobs.append((f"klettres-{lang}", f"klettres-{lang}", files))
    jobs += ktuberling_jobs()
    jobs += uqm_jobs()
    jobs += tuxpaint_jobs()
    jobs += hedgewars_jobs()
    jobs += fotaq_jobs()
    jobs += kajongg_jobs(unpacked / "kajongg" / UNPACK["kajongg"][0])
    jobs += nexuiz_jobs(unpacked / "nexuiz-data" / UNPACK["nexuiz-data"][0])
    jobs += warzone_jobs(unpacked / "warzone2100-data" / UNPACK["warzone2100-data"][0])
    return [j for j in jobs if j[2]]


# Kajongg's spoken mahjong calls (44.1 kHz, about 40 words and phrases per folder): the files' ARTIST tags name
# the readers; Petra, Maria and Wolfgang read the English and the German set. The English male2 folder carries
# no name ("Processed by SoX", a digitally silent floor: perhaps synthetic) and is left out.
KAJONGG_READERS = {"female1": "petra", "female2": "maria", "male1": "wolfgang",
                   "de/female1": "petra", "de/female2": "maria", "de/male1": "wolfgang", "de/male2": "klaus"}


def kajongg_jobs(root: Path) -> list[tuple[str, str, list[str]]]:
    """One entry per reader and language (kajongg-petra-en, kajongg-petra-de: person kajongg-petra)."""
    jobs = []
    for folder, reader in KAJONGG_READERS.items():
        lang = folder.split("/")[0] if "/" in folder else "en"
        files = sorted(str(f) for f in (root / folder).glob("*.ogg"))
        jobs.append((f"kajongg-{reader}-{lang}", f"kajongg-{reader}", files))
    return jobs


def _members(archive: Path, pattern: str) -> list[str]:
    """`archive::member` paths of the zip members whose names match `pattern` entirely; [] without the archive."""
    if not archive.exists():
        return []
    return [f"{archive}::{n}" for n in sorted(_zip(str(archive)).namelist()) if re.fullmatch(pattern, n)]


def nexuiz_jobs(archive: Path) -> list[tuple[str, str, list[str]]]:
    """Nexuiz (data.pk3, a zip; 44.1/48 kHz): the tutorial's narrator (7 min of sentences, one voice), the player
    models' team commands and taunts (5 min; the credits name one actor for the player voices, Michael Quinn), and
    the male announcer (Amos Dudley). Three entries; the narrator is not credited and may be one of the two, so
    they only ever train. Grunts (sound/player/*/player), the robotic announcer and coms/ideas are left out."""
    return [("nexuiz-tutorial", "nexuiz-tutorial", _members(archive, r"sound/tutorial/[^/]+\.ogg")),
            ("nexuiz-coms", "nexuiz-coms", _members(archive, r"sound/player/[^/]+/coms/[^/]+\.ogg")),
            ("nexuiz-announcer", "nexuiz-announcer", _members(archive, r"sound/announcer/male/[^/]+\.ogg"))]


def warzone_jobs(archive: Path) -> list[tuple[str, str, list[str]]]:
    """Warzone 2100 (base.wz, a zip; 11 kHz): the female announcer of every in-game message (audio/memressp, 4.4
    min, one voice by pitch in every folder). The three taunt voices (14 s each) are left out."""
    return [("warzone-announcer", "warzone-announcer", _members(archive, r"audio/memressp/.+\.ogg"))]


def fillets_jobs(root: str = FILLETS) -> list[tuple[str, str, list[str]]]:
    """Fish Fillets NG's two heroes in each dubbed language (Dutch, from session 6 Czech: other actors, so other
    persons). Files are <level>/<lang>/<level>-m-*.ogg (the small fish) and -v- (the big fish); the side roles'
    actors are not credited, so they are left out."""
    jobs = []
    for lang, prefix in (("nl", "fillets"), ("cs", "fillets-cs")):  # the Dutch ids predate the Czech dub
        files = sorted(glob.glob(f"{root}/*/{lang}/*.ogg"))
        for code, role in (("m", "small-fish"), ("v", "big-fish")):
            sid = f"{prefix}-{role}"
            jobs.append((sid, sid, [f for f in files if re.match(rf"^[a-z0-9]+-{code}-", Path(f).name)]))
    return jobs


def drascula_jobs(root: str = DRASCULA) -> list[tuple[str, str, list[str]]]:
    """Drascula's hero, John Hacker, in the English and the Spanish release (two casts, so two persons): the
    numbered speech files <n>.ALS of each language folder (ScummVM's engines/drascula/talk.cpp names a line of the
    hero "<n>.als" and, e.g., one of Igor "I<n>.als"). The other characters' files carry a letter prefix
    (D, VB, I, ...) and are left out, as are sound effects (S): the cast list does not say who voiced whom."""
    jobs = []
    for lang in ("en", "es"):
        files = sorted(f for f in glob.glob(f"{root}/{lang}/*") if re.fullmatch(r"\d+\.ALS", Path(f).name))
        jobs.append((f"drascula-{lang}-hero", f"drascula-{lang}-hero", files))
    return jobs


def ktuberling_jobs(min_seconds: float = 45.0, min_rate: int = 16000) -> list[tuple[str, str, list[str]]]:
    """KTuberling's spoken words: one volunteer reader per language folder (a person per folder; the
    Serbian variants are one recording set and are skipped with the other folders under `min_seconds`).
    Files below `min_rate` (a few 8 kHz recordings mixed into some folders) are left out."""
    jobs = []
    for lang_dir in sorted(glob.glob(f"{KTUBERLING}/*/")):
        files, seconds = _wideband(sorted(glob.glob(f"{lang_dir}*.*")), min_rate)
        if seconds >= min_seconds:
            lang = Path(lang_dir).name
            jobs.append((f"ktuberling-{lang}", f"ktuberling-{lang}", files))
    return jobs


def _wideband(files: list[str], min_rate: int) -> tuple[list[str], float]:
    """The files at `min_rate` or above, and their total duration in seconds."""
    kept, seconds = [], 0.0
    for f in files:
        try:
            info = sf.info(f)
        except Exception:
            continue
        if info.samplerate >= min_rate:
            kept.append(f)
            seconds += info.duration
    return kept, seconds


def tuxpaint_jobs(root: str = TUXPAINT_STAMPS, min_seconds: float = 240.0,
                  min_rate: int = 16000) -> list[tuple[str, str, list[str]]]:
    """Tux Paint's spoken stamp descriptions (`<stamp>_desc_<lang>.ogg`, 44.1 kHz): recorded by one volunteer per
    language according to its changelog (bg Krasimir Petkov, be Kseniya Buraya, da Joe Dalton, el Kiriaki
    Serafeim, es Estefania Ortiz, fr Jacques Chion, ...). Languages with at least `min_seconds` of wideband
    speech are taken (about 9, 5-30 min each); the few English/Dutch files and `_outline_` variants are not."""
    by_lang: dict[str, list[str]] = {}
    for f in sorted(glob.glob(f"{root}/**/*_desc_*.ogg", recursive=True)):
        m = re.search(r"_desc_([A-Za-z]+(?:_[A-Z]+)?)\.ogg$", f)
        if m and "_outline_" not in Path(f).name:
            by_lang.setdefault(m.group(1), []).append(f)
    jobs = []
    for lang, files in sorted(by_lang.items()):
        kept, seconds = _wideband(files, min_rate)
        if seconds >= min_seconds:
            jobs.append((f"tuxpaint-{lang}", f"tuxpaint-{lang}", kept))
    return jobs


def hedgewars_jobs(root: str = HEDGEWARS_VOICES,
                   skip: tuple[str, ...] = ("Robot",)) -> list[tuple[str, str, list[str]]]:
    """Hedgewars' voice packs: about a minute of acted exclamations each, 44.1/48 kHz, one speaker entry per pack
    (an actor may have recorded more than one pack, so they only ever train); `Robot` is a processed voice."""
    jobs = []
    for pack in sorted(glob.glob(f"{root}/*/")):
        name = Path(pack).name
        files = sorted(glob.glob(f"{pack}*.ogg"))
        if name not in skip and files:
            jobs.append((f"hedgewars-{name.lower()}", f"hedgewars-{name.lower()}", files))
    return jobs


def fotaq_jobs(archive: str = FOTAQ) -> list[tuple[str, str, list[str]]]:
    """Flight of the Amazon Queen's talkie speech (`RRNNNNXk.SB`, 11 kHz; NNNN is a line code such as 001E, SSSS or
    XXXX): X = J is Joe King, X = P the other character of conversation file RR; one entry for Joe and one per RR
    for the conversation partners (the cast of about a dozen actors voiced several characters, and a character
    may have several conversation files, so these only ever train). Files named otherwise (cut-scene and
    narration lines such as C100A032.SB) are not attributed to a speaker and are left out."""
    if not Path(archive).exists():
        return []
    groups: dict[str, list[str]] = {}
    for name in sorted(queen_table(archive)[1]):
        m = re.fullmatch(r"([0-9A-Z]{2})[0-9A-Z]{4}([JP])\d\.SB", name)
        if m:
            who = "joe" if m.group(2) == "J" else m.group(1).lower()
            groups.setdefault(who, []).append(f"{archive}::{name}")
    return [(f"fotaq-{who}", f"fotaq-{who}", files) for who, files in sorted(groups.items())]


def uqm_jobs(archive: str | None = None, skip: tuple[str, ...] = ("probe",)) -> list[tuple[str, str, list[str]]]:
    """The Ur-Quan Masters' 3DO dialogue (package uqm-voice, 11 h, 11.025 kHz): one speaker entry per character
    folder (mostly alien races), voiced by the 3DO cast. Some actors voice more than one folder (commander and
    starbase are likely the same human captain) and zoqfotpik holds three characters, so these entries are only
    ever used for training (none is named in HELD_OUT); `probe` is a machine voice.
    Licence: CC BY-NC-SA 2.5 (see the model card's data section)."""
    if archive is None:  # the package's file name carries its version (uqm-0.8.0-voice.uqm)
        found = sorted(glob.glob(f"{UQM_ADDONS}/*voice*.uqm"))
        if not found:
            print(f"  no UQM voice pack in {UQM_ADDONS} (package uqm-voice): source left out", flush=True)
            return []
        archive = found[-1]
    if not Path(archive).exists():
        return []
    names = sorted(n for n in _zip(archive).namelist() if n.endswith(".ogg") and n.count("/") == 2)
    races: dict[str, list[str]] = {}
    for n in names:
        races.setdefault(n.split("/")[1], []).append(f"{archive}::{n}")
    return [(f"uqm-{r}", f"uqm-{r}", files) for r, files in sorted(races.items()) if r not in skip]


def build_real(job) -> tuple[str, str, str, np.ndarray]:
    sid, person, files = job
    parts = []
    for f in files:
        try:
            x, sr = decode(f)
        except Exception:  # a damaged prompt is skipped, not fatal
            continue
        x = trim(x, sr)
        if len(x) > sr // 10:
            parts.append(to_pool_rate(x, sr))
    return sid, person, "real", join_utterances(parts, seed=len(sid))


# The synthetic voices' text, frozen: what docstring_sentences() gave on Python 3.11.7, the interpreter that built
# this project's pools. Derived afresh, the text changed with the interpreter's patch release (3.11.2 gave 1695
# sentences against 1711, session 10), so every synthetic pool came out different on another machine.
SENTENCES = Path(__file__).with_name("sentences.txt")


def sentences() -> list[str]:
    """The English sentences the synthetic voices read (recipes/sentences.txt, sorted, one per line)."""
    return [line for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line]


def docstring_sentences() -> list[str]:
    """English sentences from the docstrings of Python's standard library (offline text); how sentences.txt was
    made: python -c 'import make_data; print(*make_data.docstring_sentences(), sep="\\n")' > sentences.txt"""
    import pydoc  # noqa: F401  (forces many stdlib modules to be importable)

    mods = ["os", "re", "json", "collections", "itertools", "functools", "pathlib", "subprocess", "argparse",
            "logging", "threading", "socket", "email", "http.client", "unittest", "decimal", "fractions",
            "statistics", "random", "datetime", "calendar", "textwrap", "string", "shutil", "tarfile", "zipfile",
            "csv", "sqlite3", "xml.dom.minidom", "urllib.parse", "asyncio", "typing", "inspect", "dataclasses"]
    out = []
    for name in mods:
        try:
            mod = __import__(name, fromlist=["x"])
        except Exception:
            continue
        docs = [mod.__doc__ or ""] + [getattr(getattr(mod, a, None), "__doc__", "") or "" for a in dir(mod)]
        for d in docs:
            if not isinstance(d, str):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(d.split())):
                words = s.split()
                if 5 <= len(words) <= 25 and re.fullmatch(r"[A-Za-z ,;:'\-.()!?]+", s):
                    out.append(s)
    return sorted(set(out))


def tts(cmd: list[str], wav: str) -> np.ndarray:
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    return to_pool_rate(x.mean(1), sr)


def render_mbrola(voice: str, speed: int, pitch: int, text: str, wav: str) -> np.ndarray:
    """An MBROLA voice in two deterministic steps: espeak-ng writes the phonemes (`--pho`), mbrola renders them
    (`-e`: a diphone the database lacks becomes a short silence instead of an error).

    espeak-ng's own call of mbrola (`-w` with an mb- voice) is not deterministic when mbrola warns a lot, as the
    non-English databases do for English text: its wrapper races with mbrola's stderr ("mbrowrap error: mbrola
    closed stderr") and drops a little audio at random, so the same recipe gave different pools on two builds.
    The two steps differ from the one-step output by a fixed gain and by the millisecond rounding of the
    phoneme file's durations."""
    db = re.match(r"mb-([a-z]+\d)", voice).group(1)
    pho = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-q", "--pho", text],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    pho_file = f"{wav}.pho"
    Path(pho_file).write_text(pho)
    return tts(["mbrola", "-e", f"/usr/share/mbrola/{db}/{db}", pho_file, wav], wav)


def synth_jobs(n_sentences: int = 60) -> list[tuple]:
    """(speaker id, person, engine, voice, [(speed, pitch)...]) for every synthetic voice."""
    jobs = []
    voices = subprocess.run(["espeak-ng", "--voices=mb"], capture_output=True, text=True).stdout.splitlines()[1:]
    by_db: dict[str, list[str]] = {}
    for line in voices:
        f = line.split()[4] if len(line.split()) > 4 else ""
        m = re.match(r"mb/(mb-([a-z]+\d)(-en)?)$", f)
        if m and Path(f"/usr/share/mbrola/{m.group(2)}/{m.group(2)}").exists():
            by_db.setdefault(m.group(2), []).append(m.group(1))
    for db, vs in sorted(by_db.items()):
        voice = next((v for v in vs if v.endswith("-en")), vs[0])
        jobs.append((f"mbrola-{db}", f"mbrola-{db}", "espeak", voice))
    for v in ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
              "croak", "whisper", "Andy", "Denis", "Mr serious", "Alvin", "Gene", "Lee", "Mario", "Michael"]:
        jobs.append((f"espeak-{v.replace(' ', '')}", f"espeak-{v.replace(' ', '')}", "espeak", f"en-us+{v}"))
    for v in ["kal16", "awb", "rms", "slt"]:
        jobs.append((f"flite-{v}", f"flite-{v}", "flite", v))
    for v in ["en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT"]:
        jobs.append((f"pico-{v}", f"pico-{v}", "pico", v))
    return jobs


def build_synth(job_and_text) -> tuple[str, str, str, np.ndarray]:
    (sid, person, engine, voice), text = job_and_text
    rng = np.random.default_rng(zlib.crc32(sid.encode()))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = f"{tmp}/o.wav"
        for chunk in range(0, len(text), 6):
            t = " ".join(text[chunk: chunk + 6])
            speed, pitch = int(rng.uniform(130, 200)), int(rng.uniform(25, 75))
            try:
                if engine == "espeak" and voice.startswith("mb-"):
                    x = render_mbrola(voice, speed, pitch, t, wav)
                elif engine == "espeak":
                    x = tts(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav, t], wav)
                elif engine == "flite":
                    x = tts(["flite", "-voice", voice, "-t", t, "-o", wav], wav)
                else:
                    x = tts(["pico2wave", "-l", voice, "-w", wav, t], wav)
            except Exception:
                continue
            x = trim(x, POOL_SR)
            if len(x):
                parts.append(x)
    return sid, person, "synthetic", join_utterances(parts, seed=len(sid))


def build_pools(out: Path, n_sentences: int, jobs_n: int, only: str | None = None, missing: bool = False) -> None:
    """All pools; or with `only` (comma-separated id prefixes) just those speakers, or with `missing` just the
    recipe's speakers that the index lacks, merged into the existing index (a source added to the recipe is
    built without re-rendering the others)."""
    pool_dir = out / "pools"
    pool_dir.mkdir(parents=True, exist_ok=True)
    sj = synth_jobs()
    rj = real_jobs(out / "unpacked")
    wanted = None  # None: every speaker
    results, skipped = [], []
    if only or missing:
        index_exists = (pool_dir / "speakers.json").exists()
        have = read_index(pool_dir)[1] if index_exists else []
        skipped = read_skipped(pool_dir) if index_exists else []
        ids = [j[0] for j in rj] + [j[0] for j in sj]
        if only:
            wanted = {i for i in ids if i.startswith(tuple(p for p in only.split(",") if p))}
            if not wanted:
                raise SystemExit(f"no speaker id starts with {only!r}")
        else:
            known = {s.id for s in have} | set(skipped)
            wanted = {i for i in ids if i not in known}
            if not wanted:
                print("pools: every speaker of the recipe is built")
                return
        # a rebuilt speaker's variants are dropped with it (`--stage variants` makes it again from the new pool)
        results = [(s.id, s.person, s.kind, s.seconds, s.source) for s in have
                   if s.id not in wanted and variant_source(s.id) not in wanted]
        skipped = [sid for sid in skipped if sid not in wanted]
    # texts are drawn for every synthetic voice in order, so a voice's sentences do not depend on the selection
    text = sentences()
    rng = np.random.default_rng(0)
    synth_inputs = [(j, list(rng.choice(text, size=min(n_sentences, len(text)), replace=False))) for j in sj]
    if wanted is not None:
        rj = [j for j in rj if j[0] in wanted]
        synth_inputs = [j for j in synth_inputs if j[0][0] in wanted]
    with ProcessPoolExecutor(jobs_n) as ex:
        for sid, person, kind, x in itertools.chain(ex.map(build_real, rj), ex.map(build_synth, synth_inputs)):
            if len(x) < POOL_SR * 2:
                print(f"  skip {sid}: {len(x) / POOL_SR:.1f} s", flush=True)
                skipped.append(sid)
                continue
            # a new file renamed into place: a training run may have the old one memory-mapped
            tmp = pool_dir / f".{sid}.npy.part"
            with open(tmp, "wb") as f:
                np.save(f, x.astype(np.float16))
            os.replace(tmp, pool_dir / f"{sid}.npy")
            results.append((sid, person, kind, len(x) / POOL_SR, ""))
            print(f"  {sid:28s} {kind:9s} {len(x) / POOL_SR:7.1f} s", flush=True)
    split = assign_splits(sorted({r[1] for r in results}), HELD_OUT)
    speakers = [Speaker(id=sid, person=p, kind=k, split=split[p], seconds=round(s, 1), source=src)
                for sid, p, k, s, src in results]
    write_index(pool_dir, POOL_SR, speakers, skipped)
    for name in ("train", "val", "test"):
        sel = [s for s in speakers if s.split == name]
        print(f"{name}: {len({s.person for s in sel})} persons, {sum(s.seconds for s in sel) / 60:.0f} min")


# ----------------------------------------------------------------------------------------------- voice variants
VARIANT_SECONDS = 600.0  # of each speaker entry (a variant is one more voice, not more hours of the same)


def _build_variant(job) -> float:
    """Write the variant's `<vid>.npy`; returns its seconds."""
    pool_dir, sr, sid, vid, shift, median = job
    x = np.load(pool_dir / f"{sid}.npy", mmap_mode="r")[: int(VARIANT_SECONDS * sr)]
    y = make_variant(x, sr, shift, median)
    tmp = pool_dir / f".{vid}.npy.part"
    with open(tmp, "wb") as f:
        np.save(f, y.astype(np.float16))
    os.replace(tmp, pool_dir / f"{vid}.npy")
    return len(y) / sr


def build_variants(out: Path, jobs_n: int, per_person: int = VARIANTS_PER_PERSON) -> None:
    """`per_person` variant voices per real training person (all of the person's entries shifted alike by the
    n-th shift), added to the index as kind "variant" under the person's own name, so they stay in the person's
    split. Only the variants the index lacks are made; those beyond `per_person` are removed."""
    pool_dir = out / "pools"
    sr, speakers = read_index(pool_dir)
    extra = [s.id for s in speakers if s.kind == "variant" and variant_number(s.id) > per_person]
    if extra:
        speakers = _remove_from_pool(pool_dir, sr, speakers, set(extra))
        print(f"variants: removed {len(extra)} beyond {per_person} per person")
    have = {s.id for s in speakers}
    todo = [(s, n) for n in range(1, per_person + 1) for s in speakers
            if s.kind == "real" and s.split == "train" and variant_id(s.id, n) not in have]
    if not todo:
        print(f"variants: every real training person has {per_person}")
        return
    # each person's shifts follow the pitch of its longest entry
    persons = {s.person for s, _ in todo}
    longest: dict[str, Speaker] = {}
    for s in speakers:
        if s.kind == "real" and s.person in persons and s.seconds > getattr(longest.get(s.person), "seconds", -1):
            longest[s.person] = s
    median = {p: pitch_median(np.load(pool_dir / f"{s.id}.npy", mmap_mode="r")[: 120 * sr], sr)
              for p, s in longest.items()}
    for s in {s.id: s for s, _ in todo if not np.isfinite(median[s.person])}.values():
        print(f"  skip {s.id}: no voiced frames")
    todo = [(s, n) for s, n in todo if np.isfinite(median[s.person])]
    shifts = {(s.id, n): choose_shift(s.person, median[s.person], n) for s, n in todo}
    jobs = [(pool_dir, sr, s.id, variant_id(s.id, n), shifts[s.id, n], median[s.person]) for s, n in todo]
    with ProcessPoolExecutor(jobs_n) as ex:
        for (s, n), seconds in zip(todo, ex.map(_build_variant, jobs)):
            vid, shift = variant_id(s.id, n), shifts[s.id, n]
            ratios = f"formants x{shift.formant_ratio}, pitch x{shift.pitch_ratio}"
            speakers.append(Speaker(id=vid, person=s.person, kind="variant", split=s.split,
                                    seconds=round(seconds, 1), source=f"{s.id}: {ratios}"))
            print(f"  {vid:28s} {seconds:7.1f} s  {ratios} (median {median[s.person]:.0f} Hz)", flush=True)
            if len(speakers) % 20 == 0:  # a long stage keeps what it made if it is stopped
                write_index(pool_dir, sr, speakers, read_skipped(pool_dir))
    write_index(pool_dir, sr, speakers, read_skipped(pool_dir))


# ----------------------------------------------------------------------------------------------- fixed sets
def write_set(folder: Path, pools, persons, sr_pool: int, sr: int, n: int, seed: int, seconds: float,
              pairs: list[tuple[str, str]] | None = None) -> None:
    """LibriMix layout: mix/, s1/, s2/ with identical names, metadata.csv. Clean mixtures (no augmentation)."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("mix", "s1", "s2"):
        (folder / sub).mkdir(parents=True)
    opt = MixOptions(seconds=seconds, speed=0.0, tilt_prob=0.0, reverb_prob=0.0, noise_prob=0.0,
                     level_db=(-28.0, -22.0))
    rows = []
    for i in range(n):
        rng = rng_for(seed, i)
        if pairs:
            a, b = pairs[i % len(pairs)]
            keep = [j for j, p in enumerate(persons) if p in (a, b)]
            mix, src, meta = make_mixture(rng, [pools[j] for j in keep], [persons[j] for j in keep], sr_pool, opt)
        else:
            mix, src, meta = make_mixture(rng, pools, persons, sr_pool, opt)
        if sr != sr_pool:
            mix = soxr.resample(mix, sr_pool, sr)
            src = np.stack([soxr.resample(s, sr_pool, sr) for s in src])
        name = f"{i:04d}_{meta['speakers'][0]}_{meta['speakers'][1]}.wav"
        sf.write(folder / "mix" / name, mix, sr, subtype="FLOAT")
        for k in range(2):
            sf.write(folder / f"s{k + 1}" / name, src[k], sr, subtype="FLOAT")
        rows.append({"mixture_ID": name[:-4], "mixture_path": f"mix/{name}", "source_1_path": f"s1/{name}",
                     "source_2_path": f"s2/{name}", "speaker_1": meta["speakers"][0],
                     "speaker_2": meta["speakers"][1], "gain_db_1": meta["gains_db"][0],
                     "gain_db_2": meta["gains_db"][1], "length": len(mix)})
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def same_kind_pairs(speakers: list[Speaker]) -> list[tuple[str, str]]:
    """Every pair of real persons and every pair of synthetic ones, alternating real and synthetic (the shorter
    list cycles), so that any prefix of a set made from them, such as a quick validation, holds both kinds."""
    by_kind = [list(itertools.combinations(sorted({s.person for s in speakers if s.kind == k}), 2))
               for k in ("real", "synthetic")]
    by_kind = [p for p in by_kind if p]
    if not by_kind:
        raise SystemExit("a fixed set needs two persons of one kind: " + ", ".join(sorted(s.id for s in speakers)))
    longest = max(len(p) for p in by_kind)
    return [kind[i % len(kind)] for i in range(longest) for kind in by_kind]


def build_sets(out: Path, sr: int, n: int, seconds: float) -> None:
    pool_dir = out / "pools"
    resplit(out)  # the sets are labelled with HELD_OUT: the pools' splits must follow it
    base = out / f"{sr // 1000}k"
    for name, split, kinds, seed in (("val", "val", ("real", "synthetic"), 1),
                                     ("test_real", "test", ("real",), 2),
                                     ("test_synth", "test", ("synthetic",), 3)):
        sr_pool, spk, audio = load_pool(pool_dir, split, kinds)
        persons = [s.person for s in spk]
        pairs = same_kind_pairs(spk) if name in ("val", "test_real") else None
        write_set(base / name, audio, persons, sr_pool, sr, n, seed, seconds, pairs)
        print(f"{base / name}: {n} mixtures of {len(set(persons))} persons", flush=True)
    # people heard in training, random pairs of one kind (the test sets' kinds of mixture)
    for name, kind, seed in (("seen_real", "real", 4), ("seen_synth", "synthetic", 5)):
        sr_pool, spk, audio = load_pool(pool_dir, "train", (kind,))
        keep = [i for i, s in enumerate(spk) if not s.id.startswith(NARROWBAND)]
        persons = [spk[i].person for i in keep]
        if len(set(persons)) < 2:
            shutil.rmtree(base / name, ignore_errors=True)
            print(f"{base / name}: left out (fewer than two {kind} training persons)", flush=True)
            continue
        write_set(base / name, [audio[i] for i in keep], persons, sr_pool, sr, n, seed, seconds)
        print(f"{base / name}: {n} mixtures of {len(set(persons))} training persons", flush=True)
    (base / "README.json").write_text(json.dumps({"held_out": HELD_OUT, "seconds": seconds, "n": n,
                                                  "sample_rate": sr, "version": SETS_VERSION,
                                                  "pools": pool_digest(pool_dir)}, indent=1))


def pool_digest(pool_dir: Path) -> str | None:
    """A digest of the pool entries the fixed sets draw from (voice variants are for training only), or None
    without an index: the sets record it, so adding, removing or re-splitting people makes them stale."""
    if not (pool_dir / "speakers.json").exists():
        return None
    entries = sorted((s.id, s.person, s.kind, s.split, s.seconds) for s in read_index(pool_dir)[1]
                     if s.kind != "variant")
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _remove_from_pool(pool_dir: Path, sr: int, speakers: list[Speaker], ids: set[str]) -> list[Speaker]:
    """Write the index of `speakers` without `ids`, then delete those entries' audio (so the index never names a
    missing file); returns the speakers kept."""
    kept = [s for s in speakers if s.id not in ids]
    write_index(pool_dir, sr, kept, read_skipped(pool_dir))
    for sid in ids:
        (pool_dir / f"{sid}.npy").unlink(missing_ok=True)
    return kept


def resplit(out: Path) -> None:
    """Re-assign the pools' splits by HELD_OUT when it changed since they were built (no audio is rebuilt). Voice
    variants exist for training only: those of a person who leaves training are deleted (a person who joins it
    gets them from the variants stage)."""
    pool_dir = out / "pools"
    sr, speakers = read_index(pool_dir)
    split = assign_splits(sorted({s.person for s in speakers}), HELD_OUT)
    moved = [s.id for s in speakers if s.split != split[s.person] and s.kind != "variant"]
    dropped = [s.id for s in speakers if s.kind == "variant" and split[s.person] != "train"]
    if moved or dropped:
        for s in speakers:
            s.split = split[s.person]
        _remove_from_pool(pool_dir, sr, speakers, set(dropped))
        print(f"pools: split changed for {', '.join(moved)}"
              + (f"; voice variants removed: {', '.join(dropped)}" if dropped else ""))


def stale_sets(out: Path) -> list[tuple[int, int, float]]:
    """(rate, n, seconds) of the built fixed sets that another HELD_OUT, SETS_VERSION or pool (pool_digest) made."""
    stale = []
    pools = pool_digest(out / "pools")
    for readme in sorted(out.glob("*k/README.json")):
        info = json.loads(readme.read_text())
        rate = info.get("sample_rate")  # sets from before it was recorded: 8k, 16k
        if rate is None and re.fullmatch(r"(8|16)k", readme.parent.name):
            rate = int(readme.parent.name[:-1]) * 1000
        if rate and (info.get("held_out") != HELD_OUT or info.get("version", 1) != SETS_VERSION
                     or info.get("pools") != pools):
            stale.append((int(rate), int(info["n"]), float(info["seconds"])))
    return stale


def unbuilt_rates(out: Path, rates: list[int]) -> list[int]:
    """The rates of `rates` whose fixed sets were never built."""
    return [sr for sr in rates if not (out / f"{sr // 1000}k" / "README.json").exists()]


def build_example(out_file: Path, seconds: float = 10.0) -> None:
    """examples/mix.wav: two held-out real people (never trained on) talking at once, 16 kHz 16-bit."""
    sr_pool, spk, audio = load_pool(Path("data") / "pools", "test", ("real",))
    keep = [i for i, s in enumerate(spk) if s.person in ("carlo", "june")]
    opt = MixOptions(seconds=seconds, speed=0.0, tilt_prob=0.0, level_db=(-24.0, -24.0), min_active=0.8)
    mix, _, meta = make_mixture(rng_for(7, 0), [audio[i] for i in keep], [spk[i].person for i in keep],
                                sr_pool, opt)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out_file, mix, sr_pool, subtype="PCM_16")
    print(f"{out_file}: {seconds:.0f} s, {' + '.join(meta['speakers'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data"))
    ap.add_argument("--stage", choices=["all", "packages", "pools", "update", "variants", "sets", "example"],
                    default="all",
                    help="update = packages, then only the pools the index lacks (after a source was added), the "
                    "splits if HELD_OUT changed, the missing voice variants, the fixed sets an older "
                    "HELD_OUT/SETS_VERSION made, and those of a --sample-rate not built yet")
    ap.add_argument("--sample-rate", type=int, nargs="+", default=[16000, 8000])
    ap.add_argument("--sentences", type=int, default=60, help="sentences per synthetic voice")
    ap.add_argument("--n", type=int, default=120, help="mixtures per fixed set (120: the sets every figure of the "
                    "default model's card was measured on)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants-per-person", type=int, choices=[0, 1, 2], default=VARIANTS_PER_PERSON,
                    help=f"voice variants per real training person (default {VARIANTS_PER_PERSON}; 2 measured no "
                    "better in session 8)")
    ap.add_argument("--only", help="pools stage: rebuild only the speakers whose id starts with one of these "
                    "comma-separated prefixes, keeping the others (e.g. --only uqm-,tuxpaint-)")
    a = ap.parse_args()
    if a.only and a.stage != "pools":
        ap.error("--only applies to --stage pools")
    if a.stage in ("all", "packages", "update"):
        ensure_packages()
        ensure_unpacked(a.out / "unpacked")
    if a.stage == "update":
        build_pools(a.out, a.sentences, a.jobs, missing=True)
        resplit(a.out)
        build_variants(a.out, a.jobs, a.variants_per_person)
        for sr, n, seconds in stale_sets(a.out):
            build_sets(a.out, sr, n, seconds)
        for sr in unbuilt_rates(a.out, a.sample_rate):  # e.g. 8 kHz on machines that built 16 kHz only
            build_sets(a.out, sr, a.n, a.seconds)
    if a.stage in ("all", "pools"):
        build_pools(a.out, a.sentences, a.jobs, a.only)
    if a.stage in ("all", "variants"):
        build_variants(a.out, a.jobs, a.variants_per_person)
    if a.stage in ("all", "sets"):
        for sr in a.sample_rate:
            build_sets(a.out, sr, a.n, a.seconds)
    if a.stage == "example":
        build_example(Path("examples/mix.wav"))


if __name__ == "__main__":
    main()
