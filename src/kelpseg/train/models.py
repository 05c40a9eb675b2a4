"""Model factory over segmentation_models_pytorch: one kelp logit per pixel.

``create_model(architecture, encoder, in_channels, ...)`` looks the architecture up in a registry
built from smp's own table (every smp architecture, with a few aliases such as ``unet++`` and
``deeplabv3+``) and passes only the keyword arguments the architecture's constructor accepts:

* ``decoder_channels`` (and ``encoder_depth = len(decoder_channels)``) go to architectures whose
  decoder takes one width per stage (Unet, Unet++, MAnet); the others keep smp's defaults;
* ``decoder_attention_type`` goes to architectures that have it (Unet, Unet++).

The head has **one** output channel, the kelp logit (probability = sigmoid). The reference
trained two softmax logits and then thresholded a sigmoid of one of them, which is not a
probability; a single logit makes the threshold meaningful.

Encoder weights: ``"imagenet"`` (or any smp weight name) is passed to smp and downloads when
online; a path to a local ``.pth``/``.pt``/``.ckpt``/``.safetensors`` state dict (of the encoder,
of a whole smp model, of a timm backbone or a Lightning checkpoint) is loaded into the encoder
offline, reporting missing and unexpected keys; ``None`` is random initialisation.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelpseg.errors import UsageError

log = logging.getLogger(__name__)

#: Extra names accepted for smp architectures (all lower case).
ARCHITECTURE_ALIASES: dict[str, str] = {
    "unet++": "unetplusplus",
    "deeplabv3+": "deeplabv3plus",
    "deeplab": "deeplabv3",
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


class ModelConfigError(UsageError, ValueError):
    """Unknown architecture or encoder, or weights that cannot be loaded."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """An smp architecture and which of our options its constructor accepts."""

    name: str
    cls: type[nn.Module]
    takes_decoder_channel_list: bool
    takes_attention: bool
    default_encoder_depth: int

    def kwargs(self, decoder_channels: list[int], decoder_attention_type: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.takes_decoder_channel_list:
            out["decoder_channels"] = list(decoder_channels)
            out["encoder_depth"] = len(decoder_channels)
        if self.takes_attention and decoder_attention_type is not None:
            out["decoder_attention_type"] = decoder_attention_type
        return out

    def encoder_depth(self, decoder_channels: list[int]) -> int:
        return len(decoder_channels) if self.takes_decoder_channel_list else self.default_encoder_depth


def _spec_for(name: str, cls: type[nn.Module]) -> ArchitectureSpec:
    params = inspect.signature(cls.__init__).parameters
    dec = params.get("decoder_channels")
    # Only a per-stage list of widths maps onto our decoder_channels option; an int (DeepLab,
    # PAN, UPerNet) is a single width and keeps smp's default.
    takes_list = dec is not None and isinstance(dec.default, list | tuple)
    depth = params.get("encoder_depth")
    default_depth = depth.default if depth is not None and isinstance(depth.default, int) else 5
    return ArchitectureSpec(name, cls, takes_list, "decoder_attention_type" in params, default_depth)


@cache
def architecture_registry() -> dict[str, ArchitectureSpec]:
    """Every architecture smp provides, keyed by smp's lower-case name."""
    import segmentation_models_pytorch as smp

    return {name: _spec_for(name, cls) for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def architecture_names() -> list[str]:
    return [*architecture_registry(), *ARCHITECTURE_ALIASES]


def resolve_architecture(name: str) -> str:
    """Canonical (smp) architecture name for ``name`` (case-insensitive, aliases allowed)."""
    key = name.strip().lower()
    key = ARCHITECTURE_ALIASES.get(key, key)
    registry = architecture_registry()
    if key not in registry:
        raise ModelConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(architecture_names())}"
        )
    return key


def get_architecture(name: str) -> ArchitectureSpec:
    return architecture_registry()[resolve_architecture(name)]


@cache
def _smp_encoder_names() -> tuple[str, ...]:
    import segmentation_models_pytorch as smp

    return tuple(smp.encoders.get_encoder_names())


def check_encoder_name(name: str) -> None:
    """Raise ModelConfigError unless ``name`` is an smp encoder or ``tu-<timm model>`` (no network)."""
    if name.startswith("tu-"):
        import timm

        base = name[3:].split(".", 1)[0]
        if base and timm.list_models(base):
            return
        close = difflib.get_close_matches(base, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join('tu-' + c for c in close)}" if close else ""
        raise ModelConfigError(f"unknown timm encoder {name!r} (see timm.list_models()){hint}")
    names = _smp_encoder_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ModelConfigError(
        f"unknown encoder {name!r}: use an smp encoder ({', '.join(names[:12])}, ...) "
        f"or 'tu-<timm model name>'{hint}"
    )


def is_weights_file(weights: str | None) -> bool:
    return weights is not None and (Path(weights).suffix.lower() in WEIGHT_SUFFIXES or Path(weights).exists())


def _timm_has_pretrained(encoder: str) -> bool:
    import timm

    name = encoder[3:]
    return any(p == name or p.startswith(name + ".") for p in timm.list_pretrained(name.split(".")[0] + "*"))


def _smp_weights_argument(encoder: str, weights: str | None) -> str | None:
    """The ``encoder_weights`` value handed to smp (None for random init and for local files)."""
    if weights is None or is_weights_file(weights):
        return None
    if encoder.startswith("tu-") and not _timm_has_pretrained(encoder):
        log.warning("timm has no pretrained weights for %s: using random initialisation", encoder)
        return None
    return weights


DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def create_model(
    architecture: str,
    encoder: str,
    in_channels: int,
    *,
    encoder_weights: str | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    decoder_attention_type: str | None = None,
    input_size: int | None = None,
    output_bias_prior: float | None = None,
) -> nn.Module:
    """The segmentation network: input (N, in_channels, H, W) -> kelp logits (N, 1, H, W).

    ``input_size`` is the one input size an encoder built for a fixed size needs (None: any size
    divisible by 2**depth). ``output_bias_prior``: the kelp probability every pixel starts at
    (None: smp's initialisation, about 0.5).
    """
    spec = get_architecture(architecture)
    kwargs = spec.kwargs(list(decoder_channels), decoder_attention_type)
    weights = _smp_weights_argument(encoder, encoder_weights)
    try:
        model = spec.cls(
            encoder_name=encoder,
            encoder_weights=weights,
            in_channels=in_channels,
            classes=1,
            **kwargs,
        )
    except (ValueError, KeyError, RuntimeError, TypeError, AssertionError) as exc:
        raise ModelConfigError(
            f"cannot build {spec.name} with encoder {encoder} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    depth = spec.encoder_depth(list(decoder_channels))
    if depth < 5:  # stages below the decoder stay unused (fixed-size encoders need their own size)
        drop_unused_modules(model, in_channels, input_size or 2**depth * 8)
    if is_weights_file(encoder_weights):  # after: a file's weights of the dropped stages are unused
        load_encoder_weights(model, Path(str(encoder_weights)))
    if output_bias_prior is not None:
        set_output_bias(model, output_bias_prior)
    return model


def set_output_bias(model: nn.Module, prior: float) -> None:
    """Start the kelp logit at ``logit(prior)`` (the head's bias; its weights keep their init).

    Without it a fresh head outputs logits around 0, i.e. kelp probability ~0.5 on every pixel,
    and the first few hundred optimizer steps of a short recipe go into pushing that bias down
    to the ~1 % kelp share (Adam moves a bias by about ``lr`` per step), while validation sees
    a third of the tiles predicted as kelp. Starting at the prior ("prior-probability
    initialisation", Lin et al. 2017, Focal Loss) lets training spend its steps on telling
    kelp from water.
    """
    import math

    if not 0 < prior < 1:
        raise ModelConfigError(f"output_bias_prior must lie in (0, 1), got {prior}")
    head = getattr(model, "segmentation_head", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if head is not None else []
    if not convs or convs[-1].bias is None:
        raise ModelConfigError(f"{type(model).__name__}: no output convolution with a bias to initialise")
    with torch.no_grad():
        convs[-1].bias.fill_(math.log(prior / (1.0 - prior)))


def _unused_parameter_names(model: nn.Module, in_channels: int, size: int) -> list[str]:
    """Trainable parameters that get no gradient from one forward/backward pass on zeros (eval mode,
    so no batch-norm statistics change)."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_channels, size, size)).sum().backward()
        return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def drop_unused_modules(model: nn.Module, in_channels: int, size: int) -> list[str]:
    """Remove the submodules that never reach the output; returns their names.

    A shallow decoder (``len(decoder_channels) < 5``) leaves the deepest encoder stages unused,
    but smp keeps them in the model (10.5 M parameters of resnet18's 11.2 M for a 3-stage decoder).
    Every largest submodule whose parameters all get no gradient is replaced by ``nn.Identity``, so
    the model summary, the optimizer and the checkpoints hold only what the model uses; the output
    is checked to be bit-identical afterwards (else nothing is removed). Unused parameters left
    inside used modules are frozen: DDP refuses trainable parameters that never reach the loss.
    """
    unused = set(_unused_parameter_names(model, in_channels, size))
    if not unused:
        return []
    dropped: list[str] = []
    for name, module in model.named_modules():  # parents before children: the largest first
        if not name or any(name.startswith(f"{d}.") for d in dropped):
            continue
        names = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in unused for n in names):
            dropped.append(name)
    was_training = model.training
    model.eval()
    x = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    originals: dict[str, nn.Module] = {}
    with torch.no_grad():
        before = model(x)
        for name in dropped:
            parent, _, child = name.rpartition(".")
            originals[name] = model.get_submodule(name)
            setattr(model.get_submodule(parent), child, nn.Identity())
        try:
            same = torch.equal(before, model(x))
        except Exception:  # a removed module was needed after all
            same = False
    if not same:
        for name, module in originals.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
        dropped = []
    model.train(was_training)
    params = dict(model.named_parameters())
    left = sorted(n for n in unused if n in params)
    for name in left:
        params[name].requires_grad_(False)
    if dropped or left:
        log.debug("dropped unused modules %s; froze %d unused parameters", dropped, len(left))
    return dropped


# ---- local weights ---------------------------------------------------------------------------
_STRIP_PREFIXES = ("", "model.encoder.", "encoder.", "module.encoder.", "module.", "model.", "net.encoder.")
_ADD_PREFIXES = ("", "model.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelConfigError(f"{path}: encoder weights file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelConfigError(f"{path}: cannot read encoder weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ModelConfigError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _map_keys(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Rename the file's keys onto the encoder's, choosing the prefix pair that matches most keys."""
    best: dict[str, torch.Tensor] = {}
    for strip in _STRIP_PREFIXES:
        for add in _ADD_PREFIXES:
            mapped = {add + k[len(strip) :]: v for k, v in state.items() if k.startswith(strip)}
            mapped = {k: v for k, v in mapped.items() if k in target}
            if len(mapped) > len(best):
                best = mapped
    return best


def _adapt_first_conv(src: torch.Tensor, dst_shape: torch.Size) -> torch.Tensor | None:
    """Repeat an RGB first-conv kernel over more input channels and rescale it, as smp does."""
    if src.ndim != 4 or src.shape[0] != dst_shape[0] or src.shape[2:] != dst_shape[2:]:
        return None
    n_src, n_dst = src.shape[1], dst_shape[1]
    idx = torch.arange(n_dst) % n_src
    return src[:, idx] * (n_src / n_dst)


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Load a local state dict into ``model.encoder``; log what matched, what is missing or extra."""
    encoder = model.encoder
    own = encoder.state_dict()
    state = _read_state_dict(path)
    matched = _map_keys(state, set(own))
    if not matched:
        example = ", ".join(list(state)[:3])
        raise ModelConfigError(
            f"{path}: no tensor matches the encoder's parameters (file keys look like {example}; "
            f"encoder keys look like {', '.join(list(own)[:3])})"
        )
    adapted = []
    for key, value in list(matched.items()):
        if value.shape != own[key].shape:
            new = _adapt_first_conv(value, own[key].shape)
            if new is None:
                raise ModelConfigError(
                    f"{path}: tensor {key} has shape {tuple(value.shape)}, "
                    f"the encoder expects {tuple(own[key].shape)}"
                )
            matched[key] = new
            adapted.append(key)
    encoder.load_state_dict(matched, strict=False)  # some smp encoders return None here
    missing = [k for k in own if k not in matched]
    unused = len(state) - len(matched)
    log.info(
        "loaded %d/%d encoder tensors from %s (%d missing; %d file tensors unused%s)",
        len(matched),
        len(own),
        path,
        len(missing),
        unused,
        f"; first conv adapted to {adapted}" if adapted else "",
    )
    if missing:
        log.warning(
            "%d encoder tensors were not in %s and keep their random init: %s",
            len(missing),
            path,
            ", ".join(missing[:5]),
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
