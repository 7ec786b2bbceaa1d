"""An official SPMamba conf.yml read as data: the network's audionet_config checked value by value before any
tensor is made, the sample rate, and the names that go into the provenance."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import one_line
from .spmamba_errors import ConfigError

MODEL_NAMES = ("SPMamba", "TFGridNetMamba")  # the code's name, and the name the released checkpoint was saved with
CONFIG_CAP = 1 << 20  # bytes of conf.yml read (the official one is under 2 kB)

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
