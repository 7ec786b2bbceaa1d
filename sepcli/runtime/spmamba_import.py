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

The work is in modules named for it: spmamba_layout (what SOURCE is, where conf.yml and the checkpoint are in it),
spmamba_config (conf.yml), spmamba_weights (the tensors mapped onto and checked against our SPMamba),
spmamba_install (the model folder written and renamed into place), spmamba_errors. This module reads the
checkpoint (the one torch.load, with its caps) and runs the import; its names are the public ones.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import one_line
from .archive import ArchiveError, SafeZip
from .download import sha256_file
from .loader import torch_load_problem
from .spmamba_config import CONFIG_CAP, MODEL_NAMES, read_official_config
from .spmamba_errors import CheckpointError, ConfigError
from .spmamba_install import install, model_config, out_dir_problem
from .spmamba_layout import CHECKPOINT_SUFFIXES, CONFIG_SUFFIXES, base_name, choose, is_zip, source_kind, walk
from .spmamba_weights import check_sample_rate, match_state_dict, official_key, our_state_dict

__all__ = ["CheckpointError", "ConfigError", "ImportResult", "import_release", "import_spmamba", "suggest_name",
           "read_official_config", "read_checkpoint", "official_key", "check_sample_rate", "match_state_dict",
           "choose", "CHECKPOINT_CAP", "CONFIG_CAP"]

CHECKPOINT_CAP = 1 << 30  # bytes of a checkpoint copied out of an archive (the release's is about 25 MB)


def _load_pickle(checkpoint: Path) -> Any:
    """torch.load(weights_only=True) allowing TorchVersion (released checkpoints hold one in `infos`) beside
    tensors, in a context: nothing else is allowed, and the allowance ends with the call."""
    from torch.torch_version import TorchVersion

    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(str(checkpoint), map_location="cpu", weights_only=True)


def read_checkpoint(checkpoint: Path, label: str | None = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state_dict without prefix and in our key naming, format name, provenance details) from best_model.pth or a
    Lightning .ckpt; messages name `label` or the file."""
    where = label or str(checkpoint)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{where}: file not found")
    if is_zip(checkpoint):  # torch.load inflates deflated records: the limits of a release zip apply to them
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
    sd, fmt, renamed = our_state_dict(sd, where, "model_name" in details or "infos" in obj)
    if renamed:
        details["renamed_keys"] = ".layers./.backward_layers. -> .forward_blocks./.backward_blocks."
    return sd, fmt, details


def _convert(config_yml: Path, checkpoint: Path, out_dir: Path, name: str, *, conf_label: str, ck_label: str,
             provenance: dict, replace: bool) -> list[str]:
    """Check, convert and install; returns notes for the user. `*_label`: how messages and provenance name the
    files (the name inside an archive rather than a temporary copy)."""
    from ..nets.spmamba import SPMamba

    problem = out_dir_problem(out_dir, replace)  # before the work; checked again at the rename
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
    provenance = {
        "source": "official SPMamba (JusperLee/SPMamba), imported with sepcli models import-spmamba",
        "checkpoint": ck_label,
        "checkpoint_sha256": sha256_file(checkpoint),
        "checkpoint_format": fmt,
        "config": conf_label,
        **extra,
        **details,
        **provenance,
    }
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    install(tensors, model_config(name, args, sr, ck_label, provenance), out_dir, replace)
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
    kind = source_kind(source)
    if kind == "checkpoint" and source.suffix.lower() in CONFIG_SUFFIXES:
        raise ConfigError(f"{source}: a config, not a release: give the release zip, its folder or the checkpoint, "
                          "and this file with --config")
    if kind == "checkpoint":
        if config is None and source.suffix.lower() not in CHECKPOINT_SUFFIXES and not is_zip(source):
            raise ConfigError(f"{source}: not a release zip, a release folder or a checkpoint (.pth, .pt, .ckpt); "
                              "a checkpoint under another name needs --config conf.yml")
        if config is None:
            raise ConfigError(f"{source}: a checkpoint file needs its training config: give --config conf.yml")
        return _Sources(config, source, str(config), str(source), source.name, [],
                        {"config": config.name, "checkpoint": source.name})
    if kind == "folder":
        ck, conf, notes = choose(walk(source), str(source), want_config=config is None)
        conf_path = config if config is not None else source / conf
        return _Sources(conf_path, source / ck, str(conf_path), str(source / ck), ck, notes,
                        {"config": config.name if config is not None else conf, "checkpoint": ck})
    try:
        with SafeZip(source) as zf:
            by_name = {m.name: m for m in zf.members}
            ck, conf, notes = choose(list(by_name), str(source), want_config=config is None)
            ck_copy = work / f"checkpoint{PurePosixPath(base_name(ck)).suffix.lower()}"
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
    problem = out_dir_problem(out_dir, replace)
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
            kind = source_kind(source) if source.exists() else "missing"
            if kind == "missing":
                raise CheckpointError(f"{source}: file not found")
            if kind == "checkpoint":
                _gather(source, None, Path(work))  # raises the ConfigError import_release would
            if kind == "folder":
                _, conf, _ = choose(walk(source), str(source), want_config=True)
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
