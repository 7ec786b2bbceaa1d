"""Import an official SPMamba checkpoint (JusperLee/SPMamba) into a sepcli model folder.

`import_release(source, out_dir, name=...)` takes what the authors released: the release zip
(SPMamba-LibriMix.zip: conf.yml and best_model.pth somewhere inside; the layout is not public, so both are looked
for anywhere in it), a folder holding them, or a checkpoint file with its conf.yml given apart.
`import_spmamba(config_yml, checkpoint, out_dir, name)` is the older form (a conf.yml and a checkpoint).

conf.yml gives the network (`audionet.audionet_config`; `audionet_name` SPMamba, or TFGridNetMamba as the release
was trained) and the sample rate (`datamodule.data_config.sample_rate`). The checkpoint is in either released
format:
- `best_model.pth`: a dict whose `state_dict` holds the network's tensors without prefix (look2hear's
  `BaseModel.serialize()`: model_name, state_dict, model_args, infos). The released file says `model_name`
  TFGridNetMamba, names the Mamba blocks' layers `.layers.` / `.backward_layers.` (renamed here to our
  `.forward_blocks.` / `.backward_blocks.`), and holds `infos.software_versions.torch_version` as a
  torch.torch_version.TorchVersion object (JusperLee/SPMamba issues #14, #17, #24);
- a Lightning `.ckpt`: the network's tensors under `state_dict` with the prefix `audio_model.`, beside
  Lightning's own entries (epoch, optimizer_states, ...), which are ignored.
The checkpoint is read with `torch.load(weights_only=True)` only, allowing exactly one class besides tensors
(TorchVersion, which the release needs; a str subclass that runs nothing when unpickled). The number of frequency
bins in the weights (the last dimension of the attention branches' LayerNormalization4DCF gamma, [1, C, 1, F]:
129 for n_fft 256, the 8 kHz release; 257 for n_fft 512, 16 kHz) is checked against conf.yml first, so a conf.yml
of another release is one clear line; then the tensors must match sepcli's SPMamba built from the config key for
key and shape (strict), else CheckpointError lists the first problems. The folder gets config.json (arch
"spmamba", arch_args = audionet_config + sample_rate) and weights.safetensors (fp32), written to a temporary
sibling folder first and renamed into place when complete, with the modes of ordinary files under the user's
umask (sepcli.runtime.permissions), so other users can read the model.

Problems in conf.yml (missing, unreadable, not SPMamba, a value such as `emb_dim: -4`) raise ConfigError, a
CheckpointError the CLI reports as a usage error; a checkpoint holding other pickled Python objects is refused
with a message naming the refused global (sepcli.runtime.loader.torch_load_problem), nothing executed. Archive
members are read through sepcli.runtime.archive (size caps, zip-bomb and zip-slip checks), never extracted by
their names.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import FailedError, UsageError, one_line
from .archive import ArchiveError, SafeZip
from .download import sha256_file
from .loader import state_dict_mismatch, torch_load_problem, without_ddp_prefix
from .permissions import apply_default_modes

PREFIX = "audio_model."
DEFAULT_SEGMENT = 4.0
DEFAULT_OVERLAP = 0.25
MODEL_NAMES = ("SPMamba", "TFGridNetMamba")  # the code's name, and the name the released checkpoint was saved with
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
CONFIG_SUFFIXES = (".yml", ".yaml")
CONFIG_CAP = 1 << 20  # bytes of conf.yml read (the official one is under 2 kB)
CHECKPOINT_CAP = 1 << 30  # bytes of a checkpoint copied out of an archive (the release's is about 25 MB)
# frequency bins of the official releases -> (n_fft, sample rate): JusperLee/SPMamba configs (32 ms windows)
RELEASE_BINS = {129: (256, 8000), 257: (512, 16000)}
_SHOW = 5  # problems listed in an error
_WALK_DEPTH = 4  # folders below a source folder searched for conf.yml and checkpoints
_WALK_FILES = 10_000


class CheckpointError(FailedError, ValueError):
    """The config or checkpoint cannot be imported; str() names the file and the problem in one line."""


class ConfigError(CheckpointError, UsageError):
    """conf.yml cannot be read or does not describe an SPMamba that can be built: a bad argument (exit 2), like a
    bad option value."""

    exit_code = UsageError.exit_code  # CheckpointError's FailedError comes first in the MRO: say it here




# audionet_config keys of the official SPMamba and the values they accept (others are left to SPMamba itself)
_POSITIVE_INTS = ("n_srcs", "n_fft", "stride", "n_imics", "n_layers", "lstm_hidden_units", "attn_n_head",
                  "attn_approx_qk_dim", "emb_dim", "emb_ks", "emb_hs")


def _check_audionet_config(args: dict, where_file: str) -> dict:
    """Values of audionet_config checked as data before any tensor is made; returns them (eps as a float)."""
    where = f"{where_file}: audionet.audionet_config"
    out = dict(args)
    for key in _POSITIVE_INTS:
        if key in out:
            v = out[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{where}.{key} must be a positive integer, got {v!r}")
    if out.get("input_dim") is not None:
        v = out["input_dim"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}.input_dim must be a positive integer or null, got {v!r}")
    if "eps" in out:
        v = out["eps"]
        try:  # YAML reads 1e-5 (no dot) as a string
            eps = float(v) if isinstance(v, str) else v
        except ValueError:
            eps = None
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"{where}.eps must be a positive number, got {v!r}")
        out["eps"] = float(eps)
    for key in ("window", "activation"):
        if key in out and not isinstance(out[key], str):
            raise ConfigError(f"{where}.{key} must be a string, got {out[key]!r}")
    if "use_builtin_complex" in out and not isinstance(out["use_builtin_complex"], bool):
        raise ConfigError(f"{where}.use_builtin_complex must be true or false, got {out['use_builtin_complex']!r}")
    return out


def read_official_config(config_yml: Path, label: str | None = None) -> tuple[dict, int, dict]:
    """(arch_args, sample_rate, extra provenance) from an official conf.yml; messages name `label` (e.g.
    'release.zip:SPMamba/conf.yml') or the file. Raises ConfigError."""
    import yaml

    where = label or str(config_yml)
    try:
        if Path(config_yml).stat().st_size > CONFIG_CAP:
            raise ConfigError(f"{where}: {Path(config_yml).stat().st_size} bytes, too large for a conf.yml")
        doc = yaml.safe_load(Path(config_yml).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({one_line(exc, 200)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML (nested too deeply)") from None
    net = doc.get("audionet") if isinstance(doc, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("audionet_config"), dict):
        raise ConfigError(f"{where}: no 'audionet.audionet_config' section (not an SPMamba conf.yml?)")
    model_name = net.get("audionet_name", "SPMamba")
    if model_name not in MODEL_NAMES:
        raise ConfigError(f"{where}: audionet_name is {model_name!r}, only 'SPMamba' (or 'TFGridNetMamba', its "
                          "name in the released checkpoints) can be imported")
    args = _check_audionet_config(net["audionet_config"], where)
    datamodule = doc.get("datamodule") if isinstance(doc.get("datamodule"), dict) else {}
    data_cfg = datamodule.get("data_config") if isinstance(datamodule.get("data_config"), dict) else {}
    sr = data_cfg.get("sample_rate", args.get("sample_rate"))
    if not isinstance(sr, int) or isinstance(sr, bool) or not (1000 <= sr <= 192000):  # as loader.validate_config
        raise ConfigError(f"{where}: no valid datamodule.data_config.sample_rate, an integer in Hz "
                          f"1000-192000 (got {sr!r})")
    args["sample_rate"] = sr
    extra = {}
    exp = doc.get("exp")
    if isinstance(exp, dict) and isinstance(exp.get("exp_name"), str):
        extra["exp_name"] = exp["exp_name"]
    if isinstance(datamodule.get("data_name"), str):
        extra["data_name"] = datamodule["data_name"]
    return args, sr, extra


def _load_pickle(checkpoint: Path) -> Any:
    """torch.load(weights_only=True) allowing TorchVersion (released checkpoints hold one in `infos`) beside
    tensors, in a context: nothing else is allowed, and the allowance ends with the call."""
    from torch.torch_version import TorchVersion

    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(str(checkpoint), map_location="cpu", weights_only=True)


def official_key(key: str) -> str:
    """Our name for a tensor of the released checkpoint: the Mamba blocks' `layers` / `backward_layers` are
    `forward_blocks` / `backward_blocks` (other keys are unchanged)."""
    parts = key.split(".")
    return ".".join({"layers": "forward_blocks", "backward_layers": "backward_blocks"}.get(p, p) for p in parts)


def read_checkpoint(checkpoint: Path, label: str | None = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state_dict without prefix and in our key naming, format name, provenance details) from best_model.pth or a
    Lightning .ckpt; messages name `label` or the file."""
    where = label or str(checkpoint)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{where}: file not found")
    if _is_zip(checkpoint):  # torch.load inflates deflated records: the limits of a release zip apply to them
        try:
            SafeZip(checkpoint, f"{where} (a PyTorch zip)").close()
        except ArchiveError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        obj = _load_pickle(checkpoint)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for unsafe content, zip or EOF errors, ...
        raise CheckpointError(f"{where}: {torch_load_problem(exc)}") from None
    details: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
        for key in ("model_name", "epoch", "global_step", "pytorch-lightning_version"):
            if isinstance(obj.get(key), (str, int)):
                details[key] = obj[key] if isinstance(obj[key], int) else str(obj[key])
        versions = (obj.get("infos") or {}).get("software_versions") if isinstance(obj.get("infos"), dict) else None
        if isinstance(versions, dict) and isinstance(versions.get("torch_version"), str):
            details["trained_with_torch"] = str(versions["torch_version"])  # a TorchVersion is a str
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state_dict
    else:
        raise CheckpointError(f"{where}: holds no 'state_dict' (expected best_model.pth or a Lightning .ckpt)")
    if "model_name" in details and details["model_name"] not in MODEL_NAMES:
        raise CheckpointError(f"{where}: model_name is {details['model_name']!r}, not an SPMamba checkpoint "
                              f"({' or '.join(MODEL_NAMES)})")
    if any(isinstance(k, str) and k.startswith(PREFIX) for k in sd):
        fmt = "lightning"
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(PREFIX)}
    else:
        fmt = "best_model" if "model_name" in details or "infos" in obj else "state_dict"
        sd = without_ddp_prefix(sd)
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: state_dict entries that are not tensors: {', '.join(bad[:_SHOW])}")
    renamed = {official_key(k): v for k, v in sd.items()}
    if len(renamed) != len(sd):
        raise CheckpointError(f"{where}: holds Mamba layers under both namings (.layers. and .forward_blocks.)")
    if any(official_key(k) != k for k in sd):
        details["renamed_keys"] = ".layers./.backward_layers. -> .forward_blocks./.backward_blocks."
    return renamed, fmt, details


def _frequency_bins(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(bins the config gives, bins the weights have) from a LayerNormalization4DCF gamma [1, C, 1, F] present in
    both, or None when there is none to compare."""
    for k, v in expected.items():
        if re.search(r"\.attn_\w+\.\d+\.gamma$", k) and v.dim() == 4 and k in got and got[k].dim() == 4:
            return int(v.shape[3]), int(got[k].shape[3])
    return None


def check_sample_rate(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], args: dict, sr: int,
                      conf: str, ck: str) -> list[str]:
    """CheckpointError when the weights have another number of frequency bins than conf.yml's n_fft gives (a
    conf.yml of another release); notes (one line each) when they fit but the rate is not the official one for
    that n_fft."""
    bins = _frequency_bins(expected, got)
    if bins is None:
        return []
    cfg_bins, w_bins = bins
    n_fft = args.get("n_fft")
    if cfg_bins != w_bins:
        known = RELEASE_BINS.get(w_bins)
        what = (f"a {known[1]} Hz model ({w_bins} frequency bins, n_fft {known[0]})" if known
                else f"{w_bins} frequency bins (n_fft {2 * (w_bins - 1)})")
        raise CheckpointError(f"{ck}: the weights are {what} but {conf} says {sr} Hz with n_fft {n_fft} "
                              f"({cfg_bins} bins): give the conf.yml released with this checkpoint")
    known = RELEASE_BINS.get(w_bins)
    if known and sr != known[1] and sr in {r for _, r in RELEASE_BINS.values()}:
        return [f"{conf} says {sr} Hz, but n_fft {known[0]} ({w_bins} frequency bins) is the official "
                f"{known[1]} Hz setting: check the sample rate"]
    return []


def match_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], checkpoint: Path | str) -> None:
    """Raise CheckpointError listing the first wrongly shaped, missing and unexpected keys, if any."""
    problem = state_dict_mismatch(expected, got, show=_SHOW, names=("checkpoint", "config"))
    if problem:
        raise CheckpointError(f"{checkpoint}: does not match the SPMamba described by the config: {problem}")


def _out_dir_problem(out_dir: Path, replace: bool) -> str | None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        return f"{out_dir}: already exists and is not a folder"
    if out_dir.is_dir() and not replace and any(out_dir.iterdir()):
        return f"{out_dir}: already exists and is not an empty folder"
    return None


def _install(tensors: dict[str, torch.Tensor], cfg: dict, out_dir: Path, replace: bool) -> None:
    """Write the model folder in a temporary sibling, then rename it into place (replacing an existing folder
    only when `replace`, and only once the new one is complete). Nothing is left behind on failure."""
    from safetensors.torch import save_file

    try:  # the store's folder may not be creatable (SEPCLI_HOME a file, read-only): one line, not a traceback
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write ({exc.strerror or exc})") from None
    old = None
    try:
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        apply_default_modes(tmp)  # mkdtemp made it 0700, save_file 0600: readable by others as umask allows
        problem = _out_dir_problem(out_dir, replace)
        if problem:
            raise CheckpointError(problem)
        try:
            if out_dir.is_dir():
                if any(out_dir.iterdir()):  # replace: move the old one aside (a dot name: never listed), then swap
                    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
                    os.replace(out_dir, old / "model")
                else:
                    out_dir.rmdir()
            os.replace(tmp, out_dir)
        except BaseException as exc:  # an OSError, or Ctrl-C / SIGTERM between the two renames
            if old is not None and (old / "model").is_dir() and not out_dir.exists():
                os.replace(old / "model", out_dir)  # put the previous model back (the finally deletes `old`)
            if not isinstance(exc, OSError):
                raise
            if out_dir.exists() and old is None:  # another import of the same name finished first
                raise CheckpointError(f"{out_dir}: already exists (installed meanwhile by another process)") \
                    from None
            raise CheckpointError(f"{out_dir}: cannot install ({exc.strerror or exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write ({exc.strerror or exc})") from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        raise CheckpointError(f"{out_dir}: cannot write ({type(exc).__name__}: {one_line(exc, 200)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _convert(config_yml: Path, checkpoint: Path, out_dir: Path, name: str, *, conf_label: str, ck_label: str,
             provenance: dict, replace: bool) -> list[str]:
    """Check, convert and install; returns notes for the user. `*_label`: how messages and provenance name the
    files (the name inside an archive rather than a temporary copy)."""
    from ..nets.spmamba import SPMamba

    problem = _out_dir_problem(out_dir, replace)  # before the work; checked again at the rename
    if problem:
        raise CheckpointError(problem)
    args, sr, extra = read_official_config(config_yml, conf_label)
    try:  # on the meta device first: shapes only, no memory, so a config with absurd sizes cannot exhaust RAM
        with torch.device("meta"):
            expected = SPMamba(**args).state_dict()
    except Exception as exc:  # noqa: BLE001 - unknown keys (TypeError), values SPMamba refuses, torch errors
        raise ConfigError(f"{conf_label}: audionet_config does not describe an SPMamba "
                          f"({type(exc).__name__}: {one_line(exc, 200)})") from None
    sd, fmt, details = read_checkpoint(checkpoint, ck_label)
    notes = check_sample_rate(expected, sd, args, sr, conf_label, ck_label)
    match_state_dict(expected, sd, ck_label)  # the network is now known to be the checkpoint's size
    model = SPMamba(**args)
    model.load_state_dict(sd, strict=True)  # exact fit checked above

    cfg = {
        "name": name,
        "arch": "spmamba",
        "arch_args": args,
        "sample_rate": sr,
        "n_src": int(args.get("n_srcs", 2)),
        "segment": DEFAULT_SEGMENT,
        "overlap": DEFAULT_OVERLAP,
        "input_loudness": None,
        "aliases": [],
        "description": f"SPMamba imported from an official checkpoint ({PurePosixPath(ck_label).name}), {sr} Hz.",
        "provenance": {
            "source": "official SPMamba (JusperLee/SPMamba), imported with sepcli models import-spmamba",
            "checkpoint": ck_label,
            "checkpoint_sha256": sha256_file(checkpoint),
            "checkpoint_format": fmt,
            "config": conf_label,
            **extra,
            **details,
            **provenance,
        },
        "eval": {},
    }
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    _install(tensors, cfg, out_dir, replace)
    return notes


def import_spmamba(config_yml: Path, checkpoint: Path, out_dir: Path, name: str | None = None) -> Path:
    """Write a sepcli model folder for an official SPMamba checkpoint; returns the folder.

    Raises CheckpointError (a ValueError) for an unreadable or unsafe checkpoint, a config that does not
    describe SPMamba, mismatched keys or shapes, or an existing non-empty `out_dir`; nothing is written then.
    """
    config_yml, checkpoint, out_dir = Path(config_yml), Path(checkpoint), Path(out_dir)
    _convert(config_yml, checkpoint, out_dir, name or out_dir.name, conf_label=str(config_yml),
             ck_label=str(checkpoint), provenance={"config": config_yml.name, "checkpoint": checkpoint.name},
             replace=False)
    return out_dir


@dataclass
class ImportResult:
    """What import_release installed: the model `folder`, the checkpoint it took (`checkpoint_member`: its name
    inside the archive or folder, for messages only, never used as a path) and `notes`, one line each, for the
    user (e.g. which of several checkpoints was taken)."""

    folder: Path
    checkpoint_member: str
    notes: list[str] = field(default_factory=list)


def _posix(name: str) -> str:
    return name.replace("\\", "/").strip("/")


def _base(name: str) -> str:
    return PurePosixPath(_posix(name)).name


def _parent(name: str) -> str:
    parent = str(PurePosixPath(_posix(name)).parent)
    return "" if parent == "." else parent


def _junk(name: str) -> bool:
    """macOS archivers' companions (`__MACOSX/`, `._best_model.pth`) and other hidden files."""
    parts = _posix(name).split("/")
    return "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def choose(names: list[str], where: str, want_config: bool) -> tuple[str, str | None, list[str]]:
    """(checkpoint, conf.yml or None, notes) among the file names of an archive or folder.

    The checkpoint: best_model.pth first, then another .pth/.pt, then a Lightning .ckpt; the shallowest first
    among equals. The config: conf.yml before another .yml/.yaml, in the checkpoint's folder or the nearest folder
    above it first. With several candidates, a note says which one was taken."""
    files = [n for n in names if not _junk(n)]
    cks = [n for n in files if _base(n).lower().endswith(CHECKPOINT_SUFFIXES)]
    if not cks:
        raise CheckpointError(f"{where}: no checkpoint in it (best_model.pth, a .pth or a Lightning .ckpt)")
    cks.sort(key=lambda n: (_base(n) != "best_model.pth", _base(n).lower().endswith(".ckpt"),
                            _posix(n).count("/"), n))
    ck, notes = cks[0], []
    if len(cks) > 1:
        others = ", ".join(cks[1:4]) + (", ..." if len(cks) > 4 else "")
        notes.append(f"{where} holds {len(cks)} checkpoints: took {ck} (not {others})")
    if not want_config:
        return ck, None, notes
    ymls = [n for n in files if _base(n).lower().endswith(CONFIG_SUFFIXES)]
    if not ymls:
        raise ConfigError(f"{where}: no conf.yml in it; give the training config with --config")
    ck_dir = _parent(ck)

    def rank(n: str) -> tuple:
        d = _parent(n)
        above = d == "" or ck_dir == d or ck_dir.startswith(d + "/")
        return (_base(n) != "conf.yml", not above, -len(d) if above else _posix(n).count("/"), n)

    ymls.sort(key=rank)
    if len(ymls) > 1:
        notes.append(f"{where} holds {len(ymls)} YAML files: took {ymls[0]} as the training config")
    return ck, ymls[0], notes


def _source_kind(source: Path) -> str:
    """'folder', 'archive' or 'checkpoint'. A PyTorch checkpoint is itself a zip (its members end in data.pkl):
    a .pth/.pt/.ckpt, or a zip holding data.pkl and no YAML, is a checkpoint."""
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix == ".zip":
        return "archive"
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as zf:
                names = zf.namelist()
            if any(_base(n) == "data.pkl" for n in names) and not any(
                    _base(n).lower().endswith(CONFIG_SUFFIXES) for n in names):
                return "checkpoint"
            return "archive"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass
    return "checkpoint"


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _walk(folder: Path) -> list[str]:
    """Relative names of the files under `folder` (symbolic links to folders not followed), a few levels deep."""
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if len(rel.parts) >= _WALK_DEPTH:
            dirs[:] = []
        dirs.sort()
        out.extend((rel / f).as_posix() for f in sorted(files))
        if len(out) > _WALK_FILES:
            raise CheckpointError(f"{folder}: more than {_WALK_FILES} files; give the checkpoint file and --config")
    return out


@dataclass
class _Sources:
    config: Path
    checkpoint: Path
    conf_label: str
    ck_label: str
    member: str
    notes: list[str]
    provenance: dict


def _gather(source: Path, config: Path | None, work: Path) -> _Sources:
    """Find (and for an archive copy into `work`, under names of our own) the conf.yml and checkpoint."""
    kind = _source_kind(source)
    if kind == "checkpoint" and source.suffix.lower() in CONFIG_SUFFIXES:
        raise ConfigError(f"{source}: a config, not a release: give the release zip, its folder or the checkpoint, "
                          "and this file with --config")
    if kind == "checkpoint":
        if config is None and source.suffix.lower() not in CHECKPOINT_SUFFIXES and not _is_zip(source):
            raise ConfigError(f"{source}: not a release zip, a release folder or a checkpoint (.pth, .pt, .ckpt); "
                              "a checkpoint under another name needs --config conf.yml")
        if config is None:
            raise ConfigError(f"{source}: a checkpoint file needs its training config: give --config conf.yml")
        return _Sources(config, source, str(config), str(source), source.name, [],
                        {"config": config.name, "checkpoint": source.name})
    if kind == "folder":
        ck, conf, notes = choose(_walk(source), str(source), want_config=config is None)
        conf_path = config if config is not None else source / conf
        return _Sources(conf_path, source / ck, str(conf_path), str(source / ck), ck, notes,
                        {"config": config.name if config is not None else conf, "checkpoint": ck})
    try:
        with SafeZip(source) as zf:
            by_name = {m.name: m for m in zf.members}
            ck, conf, notes = choose(list(by_name), str(source), want_config=config is None)
            ck_copy = work / f"checkpoint{PurePosixPath(_base(ck)).suffix.lower()}"
            zf.copy(by_name[ck], ck_copy, CHECKPOINT_CAP)
            if conf is not None:
                conf_copy = work / "conf.yml"
                zf.copy(by_name[conf], conf_copy, CONFIG_CAP)
    except ArchiveError as exc:
        raise CheckpointError(str(exc)) from None
    prov = {"archive": source.name, "archive_sha256": sha256_file(source), "checkpoint": ck,
            "config": conf if conf is not None else config.name}
    if conf is None:
        return _Sources(config, ck_copy, str(config), f"{source}:{ck}", ck, notes, prov)
    return _Sources(conf_copy, ck_copy, f"{source}:{conf}", f"{source}:{ck}", ck, notes, prov)


def import_release(source: Path, out_dir: Path, *, name: str, config: Path | None = None,
                   provenance: dict | None = None, replace: bool = False) -> ImportResult:
    """Install an official SPMamba release as the sepcli model folder `out_dir` named `name`.

    `source` is the release zip (conf.yml and best_model.pth or a Lightning .ckpt anywhere inside; members are
    read with size caps into temporary files of our own naming, see sepcli.runtime.archive), a folder holding
    them, or a checkpoint file (then `config` is required). `config`, when given, is used instead of the conf.yml
    found in the source. Both model names (SPMamba, TFGridNetMamba) and both Mamba key namings (`.layers.` /
    `.backward_layers.` of the release, `.forward_blocks.` / `.backward_blocks.`) are accepted; the checkpoint is
    read with torch.load(weights_only=True) allowing exactly torch.torch_version.TorchVersion besides tensors.

    The folder is built in a temporary sibling and renamed into place when complete. An existing non-empty
    `out_dir` is an error unless `replace`, which swaps it for the new one only after the new one is complete.
    `provenance` is merged into config.json's provenance (e.g. the pull helper's url and sha256).

    Raises ConfigError (a bad or missing conf.yml: a usage error) or CheckpointError (anything else: an unreadable
    or unsafe archive or checkpoint, weights that do not fit the config), one line naming the file; nothing is
    left behind then, neither `out_dir` nor a temporary folder.
    """
    source, out_dir = Path(source), Path(out_dir)
    config = Path(config) if config is not None else None
    if not source.exists():
        raise CheckpointError(f"{source}: file not found")
    problem = _out_dir_problem(out_dir, replace)
    if problem:
        raise CheckpointError(problem)
    with tempfile.TemporaryDirectory(prefix="sepcli-import-") as work:
        src = _gather(source, config, Path(work))
        notes = _convert(src.config, src.checkpoint, out_dir, name, conf_label=src.conf_label,
                         ck_label=src.ck_label, provenance={**src.provenance, **(provenance or {})},
                         replace=replace)
    return ImportResult(out_dir, src.member, src.notes + notes)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].strip("-")


def suggest_name(source: Path, config: Path | None = None) -> str:
    """A model name from the release's conf.yml: its experiment name (SPMamba-Libri2Mix -> spmamba-libri2mix), else
    its data module (Libri2MixDataModule -> spmamba-libri2mix), else the rate (spmamba-8k). Reads conf.yml only
    (from an archive: a capped copy). Raises ConfigError / CheckpointError as import_release would."""
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="sepcli-import-") as work:
        if config is None:
            kind = _source_kind(source) if source.exists() else "missing"
            if kind == "missing":
                raise CheckpointError(f"{source}: file not found")
            if kind == "checkpoint":
                _gather(source, None, Path(work))  # raises the ConfigError import_release would
            if kind == "folder":
                _, conf, _ = choose(_walk(source), str(source), want_config=True)
                config, label = source / conf, str(source / conf)
            else:
                try:
                    with SafeZip(source) as zf:
                        by_name = {m.name: m for m in zf.members}
                        _, conf, _ = choose(list(by_name), str(source), want_config=True)
                        config, label = Path(work) / "conf.yml", f"{source}:{conf}"
                        zf.copy(by_name[conf], config, CONFIG_CAP)
                except ArchiveError as exc:
                    raise CheckpointError(str(exc)) from None
        else:
            label = str(config)
        _, sr, extra = read_official_config(config, label)
    for text, strip in ((extra.get("exp_name"), ""), (extra.get("data_name"), "datamodule")):
        slug = _slug(text or "")
        if strip and slug.endswith(strip):
            slug = slug[: -len(strip)].strip("-")
        if slug:
            return slug if slug.startswith("spmamba") else f"spmamba-{slug}"
    return f"spmamba-{sr // 1000}k" if sr % 1000 == 0 else f"spmamba-{sr}hz"
