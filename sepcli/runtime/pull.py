"""`sepcli models pull NAME`: install a catalogue model into the user store; the only code that downloads.

`pull(name, source=None, force=False, quiet=False)`:
1. looks NAME up in the catalogue (sepcli.runtime.catalogue); an unknown name is a usage error listing the
   catalogue's names;
2. a model already installed under `store.models_dir()/NAME` is left alone (PullResult.already_installed)
   unless `force`;
3. takes the pull's lock (`downloads_dir()/NAME.lock`): a second pull of NAME while one runs fails at once;
4. gets the release file: from `source` when given (a mirror URL, or a local copy of the release file, for
   machines without internet; a local file is read where it is, never modified), else from the catalogue URL;
   a download goes to `downloads_dir()/NAME-<hash of the URL>.zip` through a resumable `.part`
   (sepcli.runtime.download);
5. computes the sha256 of the whole file: a sha256 pinned in the catalogue must match, else the file is removed
   and the pull fails; otherwise the sha256 is printed by the CLI and recorded in the model's provenance;
6. imports it with import_release into `models_dir()/NAME` (built aside, renamed into place when complete),
   provenance: url, where the URL is stated, sha256, size, licence, date;
7. removes the downloaded file (the model folder holds what is needed).
A failed or interrupted pull installs nothing; what may stay is a resumable `.part` of a download (a complete
file that fails its check or its import is removed, so the next pull fetches it again).

Errors are PullError with an exit code: 2 for usage (unknown name, a catalogue model without URL and no
--from, a missing --from file, a URL that is not http(s)), 1 for everything else.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import FailedError
from . import catalogue, download, store

EXIT_FAILED, EXIT_USAGE = 1, 2


class PullError(FailedError):
    """A pull that did not install; `code` (= exit_code) is 2 for a bad argument (unknown name, missing --from
    file), 1 otherwise."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = self.exit_code = code


@dataclass
class PullResult:
    name: str
    folder: Path
    already_installed: bool = False
    source: str | None = None
    sha256: str | None = None
    size: int | None = None
    sha256_pinned: bool = False
    notes: list[str] = field(default_factory=list)


def manual_steps(name: str, url: str) -> str:
    return (f"download {url} with a browser (or on another machine), then run "
            f"`sepcli models pull {name} --from FILE`")


def _download_path(name: str, url: str) -> Path:
    """Where a download of `url` for `name` goes: one file per URL, so a mirror's part never continues another's."""
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return store.downloads_dir() / f"{name}-{tag}.zip"


def _is_url(source: str) -> bool:
    return "://" in source


def _entry(name: str) -> catalogue.Entry:
    try:
        entry = catalogue.find(name)
    except catalogue.CatalogueError as exc:
        raise PullError(str(exc)) from None
    if entry is None:
        known = ", ".join(catalogue.names()) or "none"
        raise PullError(f"{name!r} is not in the catalogue (catalogue models: {known})", EXIT_USAGE)
    return entry


def installed_folder(name: str) -> Path | None:
    folder = store.models_dir() / name
    return folder if (folder / "config.json").is_file() else None


def pull(name: str, source: str | None = None, force: bool = False, quiet: bool = False,
         progress: download.Progress | None = None, settings: download.Settings | None = None) -> PullResult:
    """Install catalogue model `name` into the user store; see the module docstring. Raises PullError."""
    entry = _entry(name)
    folder = store.models_dir() / name
    if not force and installed_folder(name):
        return PullResult(name, folder, already_installed=True)
    if source is None and entry.url is None:
        raise PullError(f"{name} has no confirmed download URL ({entry.unavailable or 'none is known'})", EXIT_USAGE)
    if source is not None and not _is_url(source) and not Path(source).is_file():
        raise PullError(f"{source}: no such file (--from takes a URL or a copy of the release file)", EXIT_USAGE)
    if source is not None and _is_url(source) and urlsplit(source).scheme not in ("http", "https"):
        raise PullError(f"{source}: --from takes an http(s) URL or a file", EXIT_USAGE)
    try:
        with download.pull_lock(store.downloads_dir() / f"{name}.lock", name):
            if not force and installed_folder(name):  # a pull that ended between the check above and the lock
                return PullResult(name, folder, already_installed=True)
            return _pull_locked(entry, folder, source, force, quiet, progress, settings)
    except download.Busy as exc:
        raise PullError(str(exc)) from None
    except OSError as exc:  # the store cannot be created or written
        where = exc.filename if exc.filename is not None else store.home()
        raise PullError(f"{where}: {exc.strerror or exc}") from None


def _pull_locked(entry: catalogue.Entry, folder: Path, source: str | None, force: bool, quiet: bool,
                 progress: download.Progress | None, settings: download.Settings | None) -> PullResult:
    from .spmamba_import import CheckpointError, import_release

    name = entry.name
    url = source if source is not None and _is_url(source) else (entry.url if source is None else None)
    if url is not None:
        dest = _download_path(name, url)
        progress = progress or download.progress_for(f"pulling {name}", quiet)
        try:
            got = download.download(url, dest, settings=settings, progress=progress, expected_size=entry.size_bytes)
        except download.Unreachable as exc:
            raise PullError(f"{exc}: no connection; {manual_steps(name, url)}") from None
        except download.DownloadError as exc:
            raise PullError(str(exc)) from None
        file, size, remove_after = got.path, got.size, True
    else:
        file = Path(source)
        size, remove_after = file.stat().st_size, False
    try:
        sha = download.sha256_file(file)
        if entry.sha256 is not None and sha != entry.sha256:
            raise PullError(f"{url or file}: sha256 {sha} does not match the catalogue's {entry.sha256}"
                            + (" (the downloaded file was removed)" if remove_after else ""))
        provenance = {"pulled_as": name, "url": url, "catalogue_url": entry.url,
                      "from_file": None if url else str(file.resolve()),
                      "url_source": list(entry.url_source), "sha256": sha, "size_bytes": size,
                      "licence": entry.licence, "licence_source": entry.licence_source,
                      "published_figures": entry.figures or None,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            result = import_release(file, folder, name=name, provenance=provenance, replace=force)
        except CheckpointError as exc:
            raise PullError(f"{url or file}: cannot be installed: {exc}") from None
    except KeyboardInterrupt:  # SIGINT/SIGTERM: keep a complete download as a part (the next pull ends at once)
        if remove_after:
            os.replace(file, download.part_path(file))
        raise
    except BaseException:  # refused: a complete file that fails its check or import is never resumed
        if remove_after:
            file.unlink(missing_ok=True)
        raise
    if remove_after:
        file.unlink(missing_ok=True)
    if url is not None:
        _forget_other_parts(name, file)
    return PullResult(name, result.folder, source=url or str(file), sha256=sha, size=size,
                      sha256_pinned=entry.sha256 is not None, notes=list(result.notes))


def _forget_other_parts(name: str, kept: Path) -> None:
    """After an install, partial downloads of NAME from other URLs are of no further use."""
    d = store.downloads_dir()
    for p in d.glob(f"{name}-*.zip.part"):
        if p != download.part_path(kept):
            p.unlink(missing_ok=True)
