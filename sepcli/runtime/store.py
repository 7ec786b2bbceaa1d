"""The user's own place for models and settings (never inside the installed package).

`home()` is `$SEPCLI_HOME` when set, else `$XDG_DATA_HOME/sepcli` (an absolute XDG_DATA_HOME only, as the XDG
base-directory spec says), else `~/.local/share/sepcli`. Under it:
- `models/NAME/` (`models_dir()`): model folders installed by `sepcli models import-spmamba` and `models pull`
  (config.json + weights.safetensors, the format of the shipped zoo);
- `downloads/` (`downloads_dir()`): partial and finished downloads of `models pull`;
- `settings.json`: the user's choices, today only the default model (`sepcli models default NAME`), written
  atomically (a temporary file renamed over it).

Nothing here creates folders on reading: a user who never imported a model has no `home()` at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import FailedError

SETTINGS = "settings.json"
DEFAULT_KEY = "default_model"
ENV_HOME = "SEPCLI_HOME"
ENV_MODEL = "SEPCLI_MODEL"  # overrides the user default and the shipped `default` alias


class SettingsError(FailedError, OSError):
    """settings.json cannot be read or written; str() names the file and the problem in one line."""


def home() -> Path:
    """The user's sepcli data folder (not created here)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # the spec: a relative path is invalid and is ignored
        return Path(xdg) / "sepcli"
    return Path.home() / ".local" / "share" / "sepcli"


def models_dir() -> Path:
    """Where user models live, one folder per model (not created here)."""
    return home() / "models"


def downloads_dir() -> Path:
    """Where `models pull` keeps its downloads (not created here)."""
    return home() / "downloads"


def settings_path() -> Path:
    return home() / SETTINGS


def read_settings() -> dict:
    """The settings as a dict ({} when there is no file). Raises SettingsError for an unreadable file."""
    path = settings_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise SettingsError(f"{path}: not valid JSON (fix or delete it)") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: not a JSON object (fix or delete it)")
    return data


def write_settings(data: dict) -> None:
    """Write the settings atomically (a temporary file in the same folder, renamed over settings.json)."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{SETTINGS}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SettingsError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def get_user_default() -> str | None:
    """The model name set with `sepcli models default NAME`, or None."""
    value = read_settings().get(DEFAULT_KEY)
    return value if isinstance(value, str) and value else None


def set_user_default(name: str) -> None:
    """Make `name` this user's default model (the caller checks that it names an installed model)."""
    data = read_settings()
    data[DEFAULT_KEY] = name
    write_settings(data)


def reset_user_default() -> bool:
    """Forget the user default; True when one was set."""
    data = read_settings()
    if DEFAULT_KEY not in data:
        return False
    del data[DEFAULT_KEY]
    write_settings(data)
    return True


def env_default() -> str | None:
    """The model named by $SEPCLI_MODEL, or None when unset or empty."""
    value = os.environ.get(ENV_MODEL, "").strip()
    return value or None


def remove_model(folder: Path) -> None:
    """Delete a model folder of the store: renamed first to a dot name (never listed as a model), then deleted, so
    an interrupted removal leaves no half model behind. Raises OSError."""
    folder = Path(folder)
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.removing.", dir=folder.parent))
    try:
        os.replace(folder, aside / "model")
    except BaseException:
        aside.rmdir()
        raise
    import shutil

    shutil.rmtree(aside)
