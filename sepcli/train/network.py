"""The network a run trains: a new one of a named configuration (--arch, with --arch-args overrides and another
--sample-rate), or the weights of a model to fine-tune (--init), rebuilt only where overrides keep their shapes."""

from __future__ import annotations

import torch

from ..errors import one_line
from ..nets import build_network, named_config
from .config import TrainConfig, TrainError


def network_for(cfg: TrainConfig) -> tuple[torch.nn.Module, str, dict, int]:
    """(network, arch, arch_args, sample rate) of the run. The arguments returned are the ones the network was
    built with: checkpoints and exports record them, and a resumed run must find the same."""
    if cfg.init:
        from ..runtime.loader import load_model

        loaded = load_model(cfg.init)
        if cfg.sample_rate is not None and cfg.sample_rate != loaded.sample_rate:
            raise TrainError(f"--init {cfg.init} is a {loaded.sample_rate} Hz model; --sample-rate {cfg.sample_rate} "
                             "would need a new network (--arch)")
        args = dict(loaded.config["arch_args"])
        if not cfg.arch_args or {**args, **cfg.arch_args} == args:
            return loaded.network, loaded.arch, args, loaded.sample_rate
        # overrides that keep the weights' shapes (e.g. S4M's num_blocks, passes of its shared block): the same
        # weights in the network built with them
        if cfg.arch_args.get("sample_rate", loaded.sample_rate) != loaded.sample_rate:
            raise TrainError(f"--init {cfg.init} is a {loaded.sample_rate} Hz model; another sample_rate would need "
                             "a new network (--arch)")
        args.update(cfg.arch_args)
        try:
            net = build_network(loaded.arch, args)
        except (TypeError, ValueError) as exc:
            raise TrainError(f"--init {cfg.init}: arch_args {cfg.arch_args} do not fit arch {loaded.arch!r} "
                             f"({one_line(str(exc), 200)})") from None
        try:
            net.load_state_dict(loaded.network.state_dict())
        except RuntimeError as exc:
            raise TrainError(f"--init {cfg.init}: arch_args {cfg.arch_args} change the network's weights, which "
                             f"then do not load ({one_line(str(exc), 200)})") from None
        return net, loaded.arch, args, loaded.sample_rate
    if not cfg.arch:
        raise TrainError("give --arch (a network configuration) or --init (a model to start from)")
    arch, args, sr = named_config(cfg.arch)
    args.update(cfg.arch_args)
    if cfg.sample_rate is not None and cfg.sample_rate != sr:
        sr = cfg.sample_rate
        if "sample_rate" in args:
            args["sample_rate"] = sr
    return build_network(arch, args), arch, args, sr


