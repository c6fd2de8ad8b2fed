"""Resumable training state in safetensors + JSON (no pickle): modules, EMA copies, optimizer.

Example:
    >>> save_checkpoint("runs/unet", {"unet": unet}, opt, {"step": 100})     # doctest: +SKIP
    >>> state = load_checkpoint("runs/unet", {"unet": unet}, opt)             # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        floats, targets = [], []
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(self.shadow[k])
                targets.append(v.float())
            else:
                self.shadow[k].copy_(v)
        if floats:  # one fused kernel for all tensors: on a GPU, a small model's step is launch-bound
            torch._foreach_lerp_(floats, targets, 1 - decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = opt.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            tensors[f"opt/{index}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(folder, modules: dict, opt: torch.optim.Optimizer | None, meta: dict, emas: dict | None = None) -> None:
    """Write ``folder/checkpoint.safetensors`` and ``folder/checkpoint.json`` (atomically, by rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in modules.items():
        tensors.update({f"{name}/{k}": v.detach().contiguous() for k, v in module.state_dict().items()})
    for name, ema in (emas or {}).items():
        tensors.update({f"ema_{name}/{k}": v.contiguous() for k, v in ema.shadow.items()})
    record = dict(meta)
    if opt is not None:
        opt_tensors, opt_meta = _flatten_optimizer(opt)
        tensors.update(opt_tensors)
        record["optimizer"] = opt_meta
    save_file(tensors, str(folder / "checkpoint.safetensors.tmp"))
    (folder / "checkpoint.json.tmp").write_text(json.dumps(record, indent=1))
    os.replace(folder / "checkpoint.safetensors.tmp", folder / "checkpoint.safetensors")
    os.replace(folder / "checkpoint.json.tmp", folder / "checkpoint.json")


def load_checkpoint(folder, modules: dict, opt: torch.optim.Optimizer | None = None, emas: dict | None = None,
                    use_ema: bool = False) -> dict | None:
    """Restore what :func:`save_checkpoint` wrote; returns its metadata, or None if there is none.

    ``use_ema`` loads the modules' EMA copies (where a module has one) instead of their own weights.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "checkpoint.json").is_file():
        return None
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    record = json.loads((folder / "checkpoint.json").read_text())
    stored = {k.split("/", 1)[0] for k in tensors}
    for name, module in modules.items():
        prefix = (f"ema_{name}" if use_ema and f"ema_{name}" in stored else name) + "/"
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, ema in (emas or {}).items():
        prefix = f"ema_{name}/"
        device = next(iter(ema.shadow.values())).device
        ema.shadow = {k[len(prefix):]: v.to(device, torch.float32, copy=True) for k, v in tensors.items() if k.startswith(prefix)}
    if opt is not None and "optimizer" in record:
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": record["optimizer"]["param_groups"]})
    return record
