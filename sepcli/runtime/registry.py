"""Model names -> model folders.

Three places hold models, searched in this order:
- `SEPCLI_ZOO` (source "SEPCLI_ZOO"): an extra folder named by that environment variable, e.g. a shared models
  mount; searched first, so its models may take a name or alias (`default`) from the others;
- the user store (source "user"): `$SEPCLI_HOME/models` (sepcli.runtime.store.models_dir()), where
  `sepcli models import-spmamba` and `models pull` install;
- the shipped zoo (source "shipped"): the folder `models/` of the repository, installed as the package
  `sepcli_zoo` (pyproject.toml maps it with package-dir), found through `importlib.util.find_spec("sepcli_zoo")`
  and, when running from a source tree, the `models/` folder next to the `sepcli` package.
A model is one sub-folder holding config.json; folders whose names start with a dot (temporaries, a folder being
replaced or removed) are never models.

`resolve(name)` accepts, in this order: a path to a model folder (or to a .safetensors/.pt/.pth file with a
config.json beside it), a folder name, a model's config `name`, one of its `aliases`. `default` (what no `-m`
means) is, in this order: the model named by the environment variable SEPCLI_MODEL, the user's default
(`sepcli models default NAME`, kept by sepcli.runtime.store), the model holding the alias `default` (the shipped
one unless SEPCLI_ZOO or the store take it). `sepcli models` warns for every name that resolves to another model
than its own. Unknown names raise ModelNotFound listing what exists.

`new_name_problem(name)` says why a name cannot be given to a new model: it must be one plain folder-name
component (no path separators, `..`, leading dot, or weights-file suffix) and not already a folder name, model
name or alias of any model (a new model must not shadow `default`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import sepcli

from ..errors import UnknownModel, one_line
from . import store

SHIPPED, EXTRA, USER = "shipped", "SEPCLI_ZOO", "user"  # where a model lives (ZooEntry.source)
DEFAULT = "default"


ModelNotFound = UnknownModel  # the one "unknown model" error (sepcli.errors), by the name this module used


class UnknownName(ModelNotFound):
    """A plain name (not a path) that no installed model has; `name` is that name (e.g. for a hint to pull it)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


@dataclass
class ZooEntry:
    folder: Path
    name: str
    aliases: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    problem: str | None = None  # why config.json could not be read (the entry then has its folder's name only)
    source: str = SHIPPED  # SHIPPED, EXTRA (SEPCLI_ZOO) or USER (the user store)


def zoo_sources() -> list[tuple[str, Path]]:
    """(source, folder) of every existing folder that may hold models, in search order, without duplicates."""
    out: list[tuple[str, Path]] = []
    env = os.environ.get("SEPCLI_ZOO")  # optional extra zoo folder (e.g. a shared models mount)
    if env:
        out.append((EXTRA, Path(env)))
    out.append((USER, store.models_dir()))
    try:
        spec = importlib.util.find_spec("sepcli_zoo")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        out.extend((SHIPPED, Path(p)) for p in spec.submodule_search_locations)
    out.append((SHIPPED, Path(sepcli.__file__).resolve().parent.parent / "models"))
    seen, uniq = set(), []
    for source, p in out:
        try:
            key = p.resolve()
        except OSError:
            continue
        if key not in seen and p.is_dir():
            seen.add(key)
            uniq.append((source, p))
    return uniq


def zoo_dirs() -> list[Path]:
    """Folders that may hold models, in search order, without duplicates."""
    return [p for _, p in zoo_sources()]


def _scan() -> list[ZooEntry]:
    """Every model folder of every zoo, in the order of zoo_dirs() (SEPCLI_ZOO first), duplicates included."""
    entries: list[ZooEntry] = []
    for source, d in zoo_sources():
        try:
            subs = sorted(d.iterdir())
        except OSError:  # an unreadable SEPCLI_ZOO or store must not hide the other models
            continue
        for sub in subs:
            if sub.name.startswith("."):  # temporaries and the old folder of an interrupted replacement
                continue
            cfg_path = sub / "config.json"
            if not cfg_path.is_file():
                continue
            problem = None
            try:
                cfg = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as exc:
                cfg, problem = {}, f"{cfg_path}: not readable JSON ({one_line(str(exc), 120)})"
            if not isinstance(cfg, dict):
                cfg, problem = {}, f"{cfg_path}: not a JSON object"
            aliases = cfg.get("aliases") or []
            aliases = [str(a) for a in aliases] if isinstance(aliases, list) else []
            entries.append(ZooEntry(sub, str(cfg.get("name") or sub.name), aliases, cfg, problem, source))
    return entries


def _owner(text: str, entries: list[ZooEntry]) -> Path | None:
    """The folder `text` names among `entries`: a folder name first, then a model name, then an alias."""
    for match in (lambda e: e.folder.name == text, lambda e: e.name == text, lambda e: text in e.aliases):
        for e in entries:
            if match(e):
                return e.folder
    return None


def _reached(scanned: list[ZooEntry]) -> list[ZooEntry]:
    """The entries names reach, as resolve() decides: a model whose name an earlier one has is left out, and an
    alias that names another model is dropped from the aliases."""
    entries: list[ZooEntry] = []
    names: set[str] = set()
    for e in scanned:
        if e.name not in names:
            names.add(e.name)
            entries.append(e)
    return [replace(e, aliases=[a for a in e.aliases if _owner(a, entries) == e.folder]) for e in entries]


def list_zoo() -> list[ZooEntry]:
    """The zoo models that names reach (zoo_conflicts() says which names reach another model than their own)."""
    return _reached(_scan())


def zoo_conflicts() -> list[str]:
    """One line for each folder name, model name or alias of a zoo model that resolves to another model (an
    extra zoo, SEPCLI_ZOO, is searched first and may take names of the shipped models)."""
    scanned = _scan()
    reached = _reached(scanned)
    folders = {e.folder for e in reached}
    source_of = {e.folder: e.source for e in reached}
    why = {EXTRA: "SEPCLI_ZOO is searched first", USER: "user models are searched before shipped ones"}
    lines = []
    for e in scanned:
        if e.folder not in folders:  # an earlier model has its name: not listed, reached by none of its names
            also = f" and its aliases {', '.join(map(repr, e.aliases))}" if e.aliases else ""
            owner = _owner(e.name, reached)
            lines.append(f"zoo model {e.folder} is hidden: its name {e.name!r}{also} name "
                         f"{owner} or nothing ({why.get(source_of.get(owner), 'searched first')})")
            continue
        for ident in dict.fromkeys([e.folder.name, e.name, *e.aliases]):
            owner = _owner(ident, reached)
            if owner is not None and owner != e.folder:
                lines.append(f"{ident!r} of zoo model {e.folder} names {owner} "
                             f"({why.get(source_of[owner], 'searched first')})")
    return lines


def looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(".") or name.endswith((".safetensors", ".pt", ".pth"))


def _zoo_folder(text: str) -> Path | None:
    if text == DEFAULT:
        chosen = _resolve_default()
        if chosen is not None:
            return chosen
    return _owner(text, list_zoo())


def default_choice() -> tuple[str | None, str]:
    """(what `default` stands for, why): (SEPCLI_MODEL's value, "SEPCLI_MODEL"), (the user's default, "user
    setting"), or (None, "alias") when the model holding the alias `default` is meant. Raises ModelNotFound when
    the settings file cannot be read."""
    env = store.env_default()
    if env is not None and env != DEFAULT:
        return env, "SEPCLI_MODEL"
    try:
        user = store.get_user_default()
    except store.SettingsError as exc:
        raise ModelNotFound(f"{exc}; the default model cannot be known") from None
    if user is not None and user != DEFAULT:
        return user, "user setting"
    return None, "alias"


def _resolve_default() -> Path | None:
    """The model `default` names when SEPCLI_MODEL or the user's setting chooses it, else None (the alias)."""
    target, why = default_choice()
    if target is None:
        return None
    try:
        return resolve(target)
    except ModelNotFound as exc:
        if why == "SEPCLI_MODEL":
            raise ModelNotFound(f"SEPCLI_MODEL={target}: {exc}") from None
        raise ModelNotFound(f"your default model {target!r} (set with `sepcli models default`) is not installed "
                            f"any more: run `sepcli models default --reset` or choose another") from None


def resolve(name: str | os.PathLike) -> Path:
    """Path of the model folder (or weights file) named by `name`: an existing path that holds a model, else a
    model name or alias; `default` as default_choice() says. A plain name (no '/', no weights ending) that exists
    here but holds no model, e.g. an empty folder `default/` in the working directory, does not hide the model of
    that name."""
    text = str(name)
    p = Path(text).expanduser()
    if p.exists():
        holds_model = (p / "config.json").is_file() if p.is_dir() else p.name.endswith((".safetensors", ".pt", ".pth"))
        zoo = None if holds_model or looks_like_path(text) else _zoo_folder(text)
        if zoo is not None:
            return zoo
        if p.is_dir() and not holds_model:
            raise ModelNotFound(f"{p}: not a model folder (no config.json)")
        return p
    if looks_like_path(text):
        raise ModelNotFound(f"{text}: no such model folder or file")
    zoo = _zoo_folder(text)
    if zoo is not None:
        return zoo
    entries = list_zoo()
    known = ", ".join(sorted({e.name for e in entries} | {a for e in entries for a in e.aliases})) or "none installed"
    raise UnknownName(f"unknown model {text!r} (installed models: {known}; or give a path to a model folder)", text)


def find_installed(name: str) -> ZooEntry | None:
    """The installed model that `name` (a folder name, model name or alias, not a path) reaches, or None."""
    entries = list_zoo()
    folder = _owner(name, entries)
    return next((e for e in entries if e.folder == folder), None)


def installed_names() -> str:
    """The installed models' names, for messages."""
    return ", ".join(sorted(e.name for e in list_zoo())) or "none installed"


def new_name_problem(name: str) -> str | None:
    """Why `name` cannot name a new zoo model (its folder and its config name), or None when it can."""
    if not name or not name.strip():
        return "a model name must not be empty"
    if (name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or os.sep in name
            or (os.altsep and os.altsep in name) or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or name != name.strip() or Path(name).name != name or looks_like_path(name)):
        return (f"{name!r} is not a plain model name: give one folder name (no '/', '\\', leading '.', "
                f"control characters, or .safetensors/.pt/.pth ending)")
    for e in list_zoo():
        if name in (e.folder.name, e.name) or name in e.aliases:
            what = "an alias of" if name in e.aliases and name not in (e.folder.name, e.name) else "taken by"
            return f"{name!r} is already {what} zoo model {e.name!r} ({e.folder}); choose another name"
    return None
