"""The catalogue of remote models that `sepcli models pull NAME` installs: data shipped in the package.

The data is catalogue.json beside this module (package data): one entry per model with its download URL and the
public source that states it, the licence and its source, the sample rate, the published figures with their
source, the expected size and sha256 where a public source states them (None otherwise), and the importer that
turns the downloaded file into a model folder. An entry whose `url` is None is known but has no confirmed
download address (`unavailable` says why); it can still be installed from a copy with `--from FILE`.

The environment variable SEPCLI_CATALOGUE names another catalogue file of the same form, used instead of the
shipped one (tests point it at a loopback server; a site may point it at its own mirror).

Nothing here touches the network: `pull` (sepcli.runtime.pull) is the only code that does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import FailedError, one_line

ENV = "SEPCLI_CATALOGUE"
IMPORTERS = ("spmamba-release",)


class CatalogueError(FailedError, ValueError):
    """The catalogue file cannot be read or an entry is malformed; str() names the file and the problem."""


@dataclass(frozen=True)
class Entry:
    name: str
    url: str | None
    url_source: tuple[str, ...]
    licence: str | None
    licence_source: str | None
    sample_rate: int | None
    importer: str
    description: str = ""
    size_bytes: int | None = None
    sha256: str | None = None
    figures: dict = field(default_factory=dict)
    unavailable: str | None = None
    n_src: int | None = None

    def figures_line(self, source: bool = True) -> str:
        """'19.9 dB SI-SNRi / 20.4 dB SDRi on Libri2Mix test set (source)' or '' when none are published."""
        f = self.figures or {}
        parts = [f"{f[k]} dB {label}" for k, label in (("si_snri_db", "SI-SNRi"), ("sdri_db", "SDRi"))
                 if isinstance(f.get(k), (int, float))]
        if not parts:
            return ""
        where = f" ({f.get('source', 'source unknown')})" if source else ""
        return f"{' / '.join(parts)} on {f.get('dataset', 'its test set')}{where}"


def _source() -> tuple[str, str]:
    """(where, text) of the catalogue in use."""
    env = os.environ.get(ENV)
    if env:
        try:
            return env, Path(env).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogueError(f"{env} ({ENV}): cannot read ({exc.strerror or exc})") from None
    ref = resources.files("sepcli.runtime").joinpath("catalogue.json")
    return str(ref), ref.read_text(encoding="utf-8")


def _entry(raw: object, where: str) -> Entry:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise CatalogueError(f"{where}: an entry without a name")
    name = raw["name"]

    def opt(key: str, kind: type):
        v = raw.get(key)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise CatalogueError(f"{where}: {name}.{key} must be a {kind.__name__} or null, got {v!r}")
        return v

    url = opt("url", str)
    if url is not None and not url.startswith(("https://", "http://")):
        raise CatalogueError(f"{where}: {name}.url must be an http(s) URL, got {url!r}")
    sha = opt("sha256", str)
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise CatalogueError(f"{where}: {name}.sha256 must be 64 hex digits, got {sha!r}")
    importer = raw.get("importer")
    if importer not in IMPORTERS:
        raise CatalogueError(f"{where}: {name}.importer must be one of {', '.join(IMPORTERS)}, got {importer!r}")
    src = raw.get("url_source") or []
    src = (src,) if isinstance(src, str) else tuple(str(s) for s in src)
    size = opt("size_bytes", int)
    return Entry(name=name, url=url, url_source=src, licence=opt("licence", str),
                 licence_source=opt("licence_source", str), sample_rate=opt("sample_rate", int),
                 importer=importer, description=opt("description", str) or "", size_bytes=size,
                 sha256=sha.lower() if sha else None, figures=opt("figures", dict) or {},
                 unavailable=opt("unavailable", str), n_src=opt("n_src", int))


def entries() -> list[Entry]:
    """Every catalogue entry, in the file's order. Raises CatalogueError for an unreadable or malformed file."""
    where, text = _source()
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CatalogueError(f"{where}: not readable JSON ({one_line(str(exc), 120)})") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        raise CatalogueError(f"{where}: no 'models' list")
    out = [_entry(m, where) for m in models]
    names = [e.name for e in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise CatalogueError(f"{where}: the name {dup!r} is given twice")
    return out


def find(name: str) -> Entry | None:
    """The entry called `name`, or None."""
    return next((e for e in entries() if e.name == name), None)


def names() -> list[str]:
    return [e.name for e in entries()]


def not_installed_hint(name: str) -> str | None:
    """The one-line error for `-m NAME` when NAME is a catalogue model that is not installed (None otherwise):
    separate, batch and eval never download, they say how to."""
    try:
        entry = find(name)
    except CatalogueError:
        return None
    if entry is None:
        return None
    if entry.url:
        return f"model {name!r} is not installed: get it with `sepcli models pull {name}` (nothing is downloaded here)"
    return (f"model {name!r} is not installed and has no confirmed download URL: download it yourself, then run "
            f"`sepcli models pull {name} --from FILE`")
