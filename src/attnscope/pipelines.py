"""Pipelines in one place: the shipped tiny models, hub ids and local folders, and their settings.

The CLI, the benchmark and users all load models through :func:`load_pipeline`. A *model* is a
shipped model's name (``"shapes-unet"``, ``"shapes-mmdit"``), a local diffusers folder or a hub id;
``None`` means the default shipped model. A folder may carry ``attnscope_defaults.json`` with its
recommended sampling settings (:func:`model_defaults`).

Example:
    >>> from attnscope import pipelines
    >>> pipelines.shipped_models()
    ['shapes-mmdit', 'shapes-unet']
    >>> pipelines.model_defaults("shapes-unet")["num_inference_steps"]
    20
    >>> pipe = pipelines.load_pipeline("shapes-unet", device="cpu")    # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Folder of the tiny models shipped inside the package.
WEIGHTS = Path(__file__).parent / "weights"
#: The shipped model used when no model is named (Stable Diffusion layout).
DEFAULT_MODEL = "shapes-unet"
#: Name of the file in a model folder that holds its recommended sampling settings.
DEFAULTS_FILE = "attnscope_defaults.json"
DTYPES = ("float32", "float16", "bfloat16")


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what to pass instead."""


def shipped_models() -> list[str]:
    """Names of the models shipped inside this build."""
    if not WEIGHTS.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS.iterdir() if (p / "model_index.json").is_file())


def shipped_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a shipped model; raises :class:`ModelLoadError` naming the shipped ones."""
    path = WEIGHTS / name
    if not (path / "model_index.json").is_file():
        have = ", ".join(shipped_models()) or "none"
        raise ModelLoadError(f"{name!r} is not a shipped model; this build ships: {have}.")
    return path


def resolve_model(model: str | None = None) -> str:
    """A shipped model's folder for its name or for ``None``; any other string unchanged."""
    if model is None:
        return str(shipped_model_dir(DEFAULT_MODEL))
    if model in shipped_models():
        return str(shipped_model_dir(model))
    return model


def model_defaults(model: str | None = None) -> dict:
    """Sampling settings a model folder recommends (``num_inference_steps``, ``guidance_scale``,
    ``height``, ``width``), or ``{}`` for a model without them (a hub id, a plain folder)."""
    path = Path(resolve_model(model)).expanduser() / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path} is corrupt ({err}); fix or delete it.") from None
    return settings if isinstance(settings, dict) else {}


def absent_components(folder: str | Path) -> dict:
    """Components a local folder saved as absent (``[null, null]`` in ``model_index.json``).

    diffusers refuses to load such a folder unless each absent component is passed as ``None``
    (e.g. SD3 without its T5 encoder: ``text_encoder_3=None, tokenizer_3=None``).
    """
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {name: None for name, spec in index.items() if not name.startswith("_") and spec == [None, None]}


def resolve_device(device: str | None = None) -> str:
    """``device`` checked against what this torch build has; ``None`` picks CUDA when available."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if not available.get(kind, False):
        have = ", ".join(k for k, ok in available.items() if ok)
        raise ModelLoadError(f"Device {device!r} is not available in this torch build; available: {have}.")
    return device


def load_pipeline(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | Any = None,
    require_adapter: bool = True,
    quiet: bool = True,
):
    """Load a diffusers pipeline (shipped name, local folder or hub id) onto ``device``.

    Args:
        model: shipped model name, local diffusers folder or hub id (None: the default shipped model).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` (None: CUDA when available).
        dtype: a torch dtype or its name (None: float16 on CUDA, float32 elsewhere).
        require_adapter: refuse pipelines attnscope cannot trace (False: load for generation only).
        quiet: keep diffusers' and transformers' loading chatter off the terminal.

    Raises:
        ModelLoadError: the model is missing, incomplete or could not be fetched.
        attnscope.adapters.UnsupportedPipelineError: the pipeline has no adapter (``require_adapter``).
    """
    import torch
    from diffusers import DiffusionPipeline

    device = resolve_device(device)
    if dtype is None:
        dtype = "float16" if device.startswith("cuda") else "float32"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        dtype = getattr(torch, dtype)
    name = resolve_model(model)
    local = Path(name).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise ModelLoadError(f"{local} is not a diffusers pipeline folder (no model_index.json); "
                             "pass a hub id, a saved pipeline folder or a shipped model name.")
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not local.exists():
        raise ModelLoadError(f"Model folder {local} does not exist.")
    if quiet:
        quiet_libraries()
    extra = absent_components(local) if local.exists() else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else name, dtype=dtype, **extra)
    except Exception as err:  # hub, network and format errors all end here
        where = "the folder is incomplete or corrupt" if local.exists() else "it is not cached and the hub could not provide it"
        raise ModelLoadError(f"Could not load model {model!r} ({where}: {type(err).__name__}); "
                             "pass a hub id, a local diffusers folder or a shipped model name.") from None
    if require_adapter:
        from .adapters import adapter_for

        adapter_for(pipe)
    return pipe.to(device)


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' chatter (deprecations, loading bars) off the terminal."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
