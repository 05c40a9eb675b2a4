"""Loading the reference's Lightning checkpoints safely, and fitting their weights to a kelpseg model.

A reference checkpoint (Lightning 2.1, ``KelpForestSegmentationTask``) holds ``state_dict`` with
the smp model under ``model.`` and ``hyper_parameters`` (plain values). It is read with
``torch.load(weights_only=True)``: only tensors, containers and a few allowlisted plain classes
(paths) are rebuilt, so nothing of the reference's package is imported or executed, and a file
naming any other class is refused with a one-line error.

Its model has two output logits (background, kelp); the reference's probability was
``sigmoid(kelp logit)`` (reference-system.md §4.4, [Q]). The segmentation head is a linear
convolution, so a one-logit kelpseg head with the kelp row's weights gives exactly that logit
(``score="sigmoid"``, the default, reproducing its files), and one with the difference of the
rows gives ``z_kelp - z_background``, whose sigmoid is the softmax probability of kelp
(``score="softmax"``, the fix).

timm renamed no parameter of the encoders used here between 0.9 and 1.x, so keys are matched by
name first; if names differ but the tensors line up one to one in order with equal shapes (a
renamed module), they are matched by position, and anything else is an error naming the file.
"""

from __future__ import annotations

import logging
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelpseg.errors import KelpsegError
from kelpseg.infer.choices import REFERENCE_SCORES

log = logging.getLogger(__name__)

SCORES = REFERENCE_SCORES
MODEL_PREFIX = "model."
_SAFE = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


class ReferenceCheckpointError(KelpsegError):
    """A reference checkpoint is unreadable or its weights do not fit the configured model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (plus path classes allowlisted)."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_SAFE):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ReferenceCheckpointError(
            f"{path}: checkpoint holds objects that cannot be loaded safely ({first[:200]})"
        ) from None
    except Exception as exc:
        raise ReferenceCheckpointError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ReferenceCheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return obj


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The smp model's tensors (``model.`` prefix removed)."""
    state = checkpoint["state_dict"]
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def _head_key(state: dict[str, torch.Tensor], suffix: str) -> str | None:
    keys = [k for k in state if k.startswith("segmentation_head.") and k.endswith(suffix)]
    return keys[-1] if keys else None


def to_one_logit(state: dict[str, torch.Tensor], score: str, path: Path) -> dict[str, torch.Tensor]:
    """Replace the two-logit head by the one-logit head of ``score`` (see the module doc)."""
    if score not in SCORES:
        raise ReferenceCheckpointError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    out = dict(state)
    for suffix in ("weight", "bias"):
        key = _head_key(state, suffix)
        if key is None:
            raise ReferenceCheckpointError(f"{path}: no segmentation head ({suffix}) in the checkpoint")
        value = state[key]
        if value.shape[0] != 2:
            raise ReferenceCheckpointError(
                f"{path}: the segmentation head has {value.shape[0]} outputs; expected 2 (background, kelp)"
            )
        kept = value[1:2] if score == "sigmoid" else value[1:2] - value[0:1]
        out[key] = kept.clone()
    return out


def _describe(key: str, value: torch.Tensor | None) -> str:
    return f"{key} {tuple(value.shape) if value is not None else 'absent'}"


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> str:
    """Load ``state`` into ``model`` exactly (every tensor, same shapes); returns how keys matched."""
    own = model.state_dict()
    if set(own) == set(state):
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            k = bad[0]
            raise ReferenceCheckpointError(
                f"{path}: weights do not fit {what}: {k} is {tuple(state[k].shape)} in the checkpoint, "
                f"{tuple(own[k].shape)} in the model ({len(bad)} tensor(s) differ)"
            )
        model.load_state_dict(state, strict=True)
        return "by name"
    own_items, file_items = list(own.items()), list(state.items())
    if len(own_items) == len(file_items) and all(
        a.shape == b.shape for (_, a), (_, b) in zip(own_items, file_items, strict=True)
    ):
        renamed = {k: v for (k, _), (_, v) in zip(own_items, file_items, strict=True)}
        model.load_state_dict(renamed, strict=True)
        log.info("%s: %d tensor names differ from the model's; matched by position", path, len(own))
        return "by position"
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    example = missing[0] if missing else extra[0]
    raise ReferenceCheckpointError(
        f"{path}: weights do not fit {what}: {len(missing)} model tensor(s) missing from the checkpoint, "
        f"{len(extra)} unexpected (e.g. {_describe(example, state.get(example, own.get(example)))})"
    )
