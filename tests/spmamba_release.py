"""Files in the format of the official SPMamba release (JusperLee/SPMamba, SPMamba-LibriMix.zip), built from a small
random SPMamba, for the import and pull tests.

What the released best_model.pth looks like (public record: the repository's issues #2, #13, #14, #17, #24): a dict
from look2hear's BaseModel.serialize() with `model_name` "TFGridNetMamba", the network's tensors under
`state_dict` with the Mamba blocks' layers named `.layers.` / `.backward_layers.` (our `.forward_blocks.` /
`.backward_blocks.`), and `infos.software_versions.torch_version` = torch.__version__, a TorchVersion object.
The zip's layout is not public: here conf.yml and best_model.pth sit in a sub-folder.
"""

from __future__ import annotations

import io
import textwrap
import zipfile
from pathlib import Path

import torch
from torch.torch_version import TorchVersion

from sepcli.nets.spmamba import SPMamba


def small_yml(emb_dim: int = 4, n_fft: int = 32, stride: int = 8, sample_rate: int = 8000,
              audionet_name: str = "TFGridNetMamba", exp_name: str = "SPMamba-Libri2Mix") -> str:
    """A conf.yml of the official form (as the release names the network) with a small network."""
    return textwrap.dedent(f"""\
        audionet:
          audionet_name: {audionet_name}
          audionet_config:
            input_dim: 64
            n_srcs: 2
            n_fft: {n_fft}
            stride: {stride}
            window: hann
            n_imics: 1
            n_layers: 2
            lstm_hidden_units: 16
            attn_n_head: 2
            attn_approx_qk_dim: 32
            emb_dim: {emb_dim}
            emb_ks: 4
            emb_hs: 1
            activation: prelu
            eps: 1.0e-5
            use_builtin_complex: False
        datamodule:
          data_name: Libri2MixDataModule
          data_config:
            n_src: 2
            sample_rate: {sample_rate}
            segment: 3.0
        exp:
          exp_name: {exp_name}
        """)


def random_spmamba(yml_text: str, seed: int = 0) -> SPMamba:
    """The SPMamba a conf.yml describes, with every parameter moved away from its init (a wrong mapping shows)."""
    import yaml

    doc = yaml.safe_load(yml_text)
    torch.manual_seed(seed)
    model = SPMamba(sample_rate=doc["datamodule"]["data_config"]["sample_rate"],
                    **doc["audionet"]["audionet_config"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def release_key(key: str) -> str:
    """The released checkpoint's name for one of our tensors."""
    return key.replace(".forward_blocks.", ".layers.").replace(".backward_blocks.", ".backward_layers.")


def release_checkpoint(model: SPMamba, model_name: str = "TFGridNetMamba", release_naming: bool = True,
                       **extra) -> bytes:
    """best_model.pth as released: serialize() dict, TorchVersion in infos; `extra` entries are added."""
    sd = {(release_key(k) if release_naming else k): v for k, v in model.state_dict().items()}
    obj = {"model_name": model_name, "state_dict": sd,
           "model_args": {"n_srcs": 2, "sample_rate": model.sample_rate},
           "infos": {"software_versions": {"torch_version": TorchVersion(torch.__version__),
                                           "pytorch-lightning_version": "2.1.0"}}, **extra}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def release_zip(path: Path, yml_text: str, checkpoint: bytes, folder: str = "SPMamba-LibriMix/",
                extra: dict[str, bytes] | None = None) -> Path:
    """A release zip: `folder`conf.yml and `folder`best_model.pth (deflated), plus `extra` members."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}conf.yml", yml_text)
        zf.writestr(f"{folder}best_model.pth", checkpoint)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def make_release(path: Path, seed: int = 0, **yml) -> tuple[Path, SPMamba]:
    """A release zip of a small random SPMamba at `path`, and that network."""
    text = small_yml(**yml)
    model = random_spmamba(text, seed=seed)
    return release_zip(path, text, release_checkpoint(model)), model
