"""Spectral indices computed on whole batches, one code path for numpy arrays and torch tensors.

Every index is written once against a tiny array-namespace shim (``_where``, ``_sqrt``, ``_log``, ...)
that dispatches on the input type, so a numpy ``(C, H, W)`` tile and a torch ``(N, C, H, W)`` batch on
the GPU go through the same formula. Channels are on axis -3; ``positions`` maps band name -> channel
(``kelpseg.bands.band_positions``), so the input may hold the bands in any order or only a subset.

Registry
    ``INDEX_REGISTRY`` holds the 59 indices of the reference solution under their reference names and in
    its lookup order, with the formulas **as the reference implemented them**: on raw DN values (no
    reflectance scaling, so additive constants such as 0.03, 0.1 or 1 are nearly meaningless), its
    non-textbook IPVI, NDWI as (NIR − G)/(NIR + G), CHLA/CYA on DN/65535, EVI clamped to ±20,000.
    After them come extras: textbook versions where the reference deviates (``IPVI_textbook``,
    ``NDWI_McFeeters``) and common water / vegetation indices (MNDWI, NDMI, FAI), plus two 0/1 channels
    (``WATERMASK``, ``VALIDMASK``) that make the masking explicit to a model. ``SpectralIndex.doc`` holds
    each formula; the ones the reference marked "do not use (nan/inf)" say so.

Unknown values, never inf
    All divisions go through ``_div(a, b)``: where ``|b| < EPS`` the quotient is NaN ("unknown"), never
    ±inf or a 1e13-sized number; elsewhere it is the reference's ``a / (b + EPS)``, computed the same
    way, so the only difference from the reference is at zero (or below-EPS) denominators. mCRIG, which
    had no EPS at all in the reference, is guarded the same way (its values differ from the reference's
    plain ``1/B`` by a relative EPS/B at most). Square roots and logarithms of negative numbers are NaN.
    At the end every non-finite value (NaN input pixels, guarded divisions, overflow) becomes ``fill``:
    the output is finite everywhere except where it equals ``fill``, and with the default ``fill=nan``
    NaN means "unknown".

Masking
    * QA mask: keep the index where ``QA == 0``, ``fill`` elsewhere (a NaN QA counts as not ok).
    * Water mask: keep the index where the pixel is water, ``fill`` on land. Water is ``DEM <= 0`` **or
      DEM missing (NaN)**: the DEM has nodata only beyond its coverage, a few hundred metres offshore.
      The reference tested ``DEMWM == 0`` and, because ``max(NaN, 0)`` is NaN, silently masked every
      index at DEM-nodata pixels, i.e. over open sea; that is fixed here.
    * Indices with ``maskable=False`` (the ``*WM`` indices and the 0/1 mask channels) are never masked.

DEMWM
    ``max(DEM, 0)``: clipped elevation in metres, 0 over water, not a 0/1 mask (its stats are forced to
    [0, 1], ``binary=True``, so normalisation turns it into a land/water mask). Where the DEM is missing
    it is 0 (water), consistent with the water mask; the reference produced NaN there, which its NaN
    filling then replaced by the channel minimum 0, so the value seen by its models was the same.

Reference numerics (``compute_indices(..., reference_numerics=True)``)
    Reproduces the reference's arithmetic bit for bit where kelpseg changed it, for predicting with
    its trained models: plain ``a / (b + EPS)`` (a zero denominator gives ``a/EPS``, 0 for ``0/0``),
    mCRIG without EPS, MSAVI in its literal form, DEMWM NaN where the DEM is missing, the water mask
    ``DEMWM == 0`` (so DEM-nodata pixels are masked), masked pixels NaN whatever ``fill`` is, and
    ±inf left in place (its ``RemoveNaNs`` later maps them with the channel stats).

Numerics
    float32 and float64 inputs keep their dtype; other dtypes (ints, halves) are computed in float32.
    MSAVI is evaluated in the cancellation-free form ``b / (2(a + sqrt(a² − b)))`` of the same formula
    (``a = 2N + 1``, ``b = 8(N − R)``); the literal form loses about three digits in float32 at DN scale.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kelpseg.bands import BANDS
from kelpseg.errors import KelpsegError

Array = Any  # numpy.ndarray or torch.Tensor

EPS = 1e-10
NAN = float("nan")
#: True while :func:`compute_indices` runs with ``reference_numerics`` (see the module docstring).
_REFERENCE_NUMERICS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "reference_numerics", default=False
)


class UnknownIndexError(KelpsegError, ValueError):
    """A spectral-index name is not in the registry."""


class MissingBandError(KelpsegError, ValueError):
    """An index (or a mask) needs a band that the input stack does not hold."""


# ---------------------------------------------------------------------------------------------------------
# Array-namespace shim: every function works on numpy arrays and torch tensors alike.
# ---------------------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # no tensor can exist unless torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


def _torch() -> Any:
    import torch

    return torch


def _where(cond: Array, a: Array | float, b: Array | float) -> Array:
    if _is_torch(cond) or _is_torch(a) or _is_torch(b):
        return _torch().where(cond, a, b)
    return np.where(cond, a, b)


def _sqrt(x: Array) -> Array:
    return _torch().sqrt(x) if _is_torch(x) else np.sqrt(x)


def _log(x: Array) -> Array:
    return _torch().log(x) if _is_torch(x) else np.log(x)


def _exp(x: Array) -> Array:
    return _torch().exp(x) if _is_torch(x) else np.exp(x)


def _arctan(x: Array) -> Array:
    return _torch().arctan(x) if _is_torch(x) else np.arctan(x)


def _abs(x: Array) -> Array:
    return _torch().abs(x) if _is_torch(x) else np.abs(x)


def _pow(x: Array, p: float) -> Array:
    return _torch().pow(x, p) if _is_torch(x) else np.power(x, p)


def _maximum(x: Array, y: float) -> Array:
    """Element-wise max with a scalar; NaN propagates (as torch.maximum / np.maximum do)."""
    return _torch().clamp(x, min=y) if _is_torch(x) else np.maximum(x, y)


def _clip(x: Array, lo: float, hi: float) -> Array:
    return _torch().clamp(x, min=lo, max=hi) if _is_torch(x) else np.clip(x, lo, hi)


def _isnan(x: Array) -> Array:
    return _torch().isnan(x) if _is_torch(x) else np.isnan(x)


def _isfinite(x: Array) -> Array:
    return _torch().isfinite(x) if _is_torch(x) else np.isfinite(x)


def _as_float(mask: Array, like: Array) -> Array:
    """A boolean mask as 0.0/1.0 in ``like``'s float dtype."""
    return mask.to(like.dtype) if _is_torch(mask) else mask.astype(like.dtype)


def _stack(arrays: list[Array], like: Array) -> Array:
    if _is_torch(like):
        return _torch().stack(arrays, dim=-3)
    return np.stack(arrays, axis=-3)


def _concat(arrays: list[Array]) -> Array:
    if _is_torch(arrays[0]):
        return _torch().cat(arrays, dim=-3)
    return np.concatenate(arrays, axis=-3)


def _div(a: Array | float, b: Array) -> Array:
    """``a / (b + EPS)`` as the reference, but NaN where ``|b| < EPS`` (never ±inf or a huge number)."""
    if _REFERENCE_NUMERICS.get():
        return a / (b + EPS)
    if _is_torch(a) or _is_torch(b):
        return _where(_abs(b) < EPS, NAN, a / (b + EPS))
    # numpy: in place, and no masked copy when (as almost everywhere) no denominator is that small
    quotient = np.divide(a, b + EPS)
    small = np.abs(b) < EPS
    if small.any():
        quotient[small] = NAN
    return quotient


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectralIndex:
    """One named index.

    ``func`` takes the bands it needs as keyword arguments named like the bands (``NIR=..., R=...``,
    each ``(..., H, W)``) and returns the raw formula result, NaN where unknown (no masking, no fill);
    use ``compute_index`` for the masked, filled result.
    """

    name: str
    func: Callable[..., Array]
    needs: tuple[str, ...]
    maskable: bool = True
    binary: bool = False
    doc: str = ""
    #: True for the 59 indices of the reference solution, False for the extras defined here.
    in_reference: bool = True


INDEX_REGISTRY: dict[str, SpectralIndex] = {}

_DO_NOT_USE = " [the reference marked it 'do not use - produces nan and/or inf']"


def _index(
    name: str,
    doc: str,
    *,
    maskable: bool = True,
    binary: bool = False,
    in_reference: bool = True,
    do_not_use: bool = False,
) -> Callable[[Callable[..., Array]], Callable[..., Array]]:
    """Register the decorated formula; the bands it needs are its parameter names."""

    def register(func: Callable[..., Array]) -> Callable[..., Array]:
        needs = tuple(inspect.signature(func).parameters)
        unknown = [b for b in needs if b not in BANDS]
        if unknown:  # pragma: no cover - a programming error in this module
            raise TypeError(f"index {name!r} takes unknown band(s) {unknown}")
        full_doc = doc + (_DO_NOT_USE if do_not_use else "")
        func.__doc__ = f"{name}: {full_doc}"
        INDEX_REGISTRY[name] = SpectralIndex(name, func, needs, maskable, binary, full_doc, in_reference)
        return func

    return register


# The reference's 59 indices, in its lookup order (SPECTRAL_INDEX_LOOKUP). N = NIR, S = SWIR.
# Every division by band values goes through _div; ε terms outside denominators are kept as in the reference.


@_index(
    "ATSAVI",
    "Adjusted transformed soil-adjusted VI: "
    "1.22·(N − 1.22·R − 0.03) / (1.22·N + R − 1.22·0.03 + 0.08·(1 + 1.22²))",
)
def _atsavi(NIR: Array, R: Array) -> Array:
    return 1.22 * _div(NIR - 1.22 * R - 0.03, 1.22 * NIR + R - 1.22 * 0.03 + 0.08 * (1 + 1.22**2))


@_index("AFRI1600", "Aerosol free vegetation index 1600, as implemented: N − 0.66·(S / (N + 0.66·S))")
def _afri1600(SWIR: Array, NIR: Array) -> Array:
    return NIR - 0.66 * _div(SWIR, NIR + 0.66 * SWIR)


@_index("AVI", "Ashburn vegetation index: 2·N − R")
def _avi(NIR: Array, R: Array) -> Array:
    return 2 * NIR - R


@_index("ARVI", "Atmospherically resistant VI, as implemented: −0.18 + 1.17·(N − R)/(N + R)")
def _arvi(NIR: Array, R: Array) -> Array:
    return -0.18 + 1.17 * _div(NIR - R, NIR + R)


@_index("BWDRVI", "Blue-wide dynamic range VI: (0.1·N − B)/(0.1·N + B)")
def _bwdrvi(NIR: Array, B: Array) -> Array:
    return _div(0.1 * NIR - B, 0.1 * NIR + B)


@_index("ClGreen", "Chlorophyll index green: N/G − 1")
def _clgreen(NIR: Array, G: Array) -> Array:
    return _div(NIR, G) - 1


@_index("CVI", "Chlorophyll vegetation index: N·R/G²")
def _cvi(NIR: Array, R: Array, G: Array) -> Array:
    return NIR * _div(R, G * G)


@_index("CI", "Coloration index: (R − B)/R")
def _ci(R: Array, B: Array) -> Array:
    return _div(R - B, R)


@_index("GDVI", "Green difference vegetation index: N − G")
def _gdvi(NIR: Array, G: Array) -> Array:
    return NIR - G


@_index("DVIMSS", "Differenced vegetation index MSS: 2.4·N − R")
def _dvimss(NIR: Array, R: Array) -> Array:
    return 2.4 * NIR - R


@_index("EVI", "Enhanced vegetation index: 2.5·(N − R)/(N + 6·R − 7.5·B + 1), clamped to [−20000, 20000]")
def _evi(NIR: Array, R: Array, B: Array) -> Array:
    return _clip(2.5 * _div(NIR - R, NIR + 6 * R - 7.5 * B + 1), -20_000.0, 20_000.0)


@_index("EVI2", "Enhanced vegetation index 2: 2.4·(N − R)/(N + R + 1)")
def _evi2(NIR: Array, R: Array) -> Array:
    return 2.4 * _div(NIR - R, NIR + R + 1)


@_index("EVI22", "Enhanced vegetation index 2-2: 2.5·(N − R)/(N + 2.4·R + 1)")
def _evi22(NIR: Array, R: Array) -> Array:
    return 2.5 * _div(NIR - R, NIR + 2.4 * R + 1)


@_index("GARI", "Green atmospherically resistant VI, as implemented: (N − (G − (B − R)))/(N − (G + (B − R)))")
def _gari(NIR: Array, R: Array, G: Array, B: Array) -> Array:
    return _div(NIR - (G - (B - R)), NIR - (G + (B - R)))


@_index("GNDVI", "Green NDVI: (N − G)/(N + G)")
def _gndvi(NIR: Array, G: Array) -> Array:
    return _div(NIR - G, NIR + G)


@_index("GRNDVI", "Green-red NDVI: (N − (R + G))/(N + R + G)")
def _grndvi(NIR: Array, R: Array, G: Array) -> Array:
    return _div(NIR - (R + G), NIR + R + G)


@_index("GBNDVI", "Green-blue NDVI: (N − (G + B))/(N + G + B)")
def _gbndvi(NIR: Array, G: Array, B: Array) -> Array:
    return _div(NIR - (G + B), NIR + G + B)


@_index("GVMI", "Global vegetation moisture index: ((N + 0.1) − (S + 0.02))/((N + 0.1) + (S + 0.02))")
def _gvmi(SWIR: Array, NIR: Array) -> Array:
    return _div((NIR + 0.1) - (SWIR + 0.02), (NIR + 0.1) + (SWIR + 0.02))


@_index(
    "IPVI",
    "Infrared percentage VI, as implemented (not the textbook N/(N+R), see IPVI_textbook): "
    "(N/(N + R)/2)·((R − G)/R + G + 1 + ε)",
)
def _ipvi(NIR: Array, R: Array, G: Array) -> Array:
    return (_div(NIR, NIR + R) / 2) * ((_div(R - G, R) + G) + 1 + EPS)


@_index("I", "Intensity: (R + G + B + ε)/30.5")
def _intensity(R: Array, G: Array, B: Array) -> Array:
    return (1 / 30.5) * (R + G + B + EPS)


@_index("H", "Hue: arctan(((2·R − G − B)/30.5)·(G − B))")
def _hue(R: Array, G: Array, B: Array) -> Array:
    return _arctan(((2 * R - G - B) / 30.5) * (G - B))


@_index("LogR", "Log ratio: ln(N/R + ε)")
def _logr(NIR: Array, R: Array) -> Array:
    return _log(_div(NIR, R) + EPS)


@_index(
    "mCRIG",
    "Modified carotenoid reflectance index green: (1/B − 1/G)·N (the reference had no ε at all)",
    do_not_use=True,
)
def _mcrig(NIR: Array, G: Array, B: Array) -> Array:
    if _REFERENCE_NUMERICS.get():
        return (1.0 / B - 1.0 / G) * NIR
    return (_div(1.0, B) - _div(1.0, G)) * NIR


@_index("MVI", "Mid-infrared vegetation index: N/S")
def _mvi(SWIR: Array, NIR: Array) -> Array:
    return _div(NIR, SWIR)


@_index(
    "MCARI",
    "Modified chlorophyll absorption in reflectance index: ((N − R) − 0.2·(N − G))·(N/R)",
    do_not_use=True,
)
def _mcari(NIR: Array, R: Array, G: Array) -> Array:
    return ((NIR - R) - 0.2 * (NIR - G)) * _div(NIR, R)


@_index("MSRNirRed", "Modified simple ratio NIR/red: (N/R + ε − 1)/sqrt(N/R + 1)", do_not_use=True)
def _msrnirred(NIR: Array, R: Array) -> Array:
    ratio = _div(NIR, R)
    return _div(ratio + EPS - 1, _sqrt(ratio + 1))


@_index("MSAVI", "Modified soil adjusted VI: (2·N + 1 − sqrt((2·N + 1)² − 8·(N − R)))/2")
def _msavi(NIR: Array, R: Array) -> Array:
    a = 2 * NIR + 1
    b = 8 * (NIR - R)
    root = _sqrt(a * a - b)
    if _REFERENCE_NUMERICS.get():
        return (a - root) / 2
    # (a − root)/2 == b/(2(a + root)); the second form has no cancellation when a > 0.
    return _where(a > 0, _div(b, 2 * (a + root)), (a - root) / 2)


@_index("NLI", "Nonlinear vegetation index: (N² − R)/(N² + R)")
def _nli(NIR: Array, R: Array) -> Array:
    n2 = NIR * NIR
    return _div(n2 - R, n2 + R)


@_index("NDVI", "Normalized difference vegetation index: (N − R)/(N + R)")
def _ndvi(NIR: Array, R: Array) -> Array:
    return _div(NIR - R, NIR + R)


@_index("NDVIWM", "NDVI water mask: max((N − R)/(N + R), 0); never masked", maskable=False, binary=True)
def _ndviwm(NIR: Array, R: Array) -> Array:
    return _maximum(_ndvi(NIR, R), 0.0)


@_index(
    "NDWI",
    "Normalized difference water index, as implemented: (N − G)/(N + G) "
    "(the sign is reversed with respect to McFeeters; see NDWI_McFeeters)",
)
def _ndwi(NIR: Array, G: Array) -> Array:
    return _div(NIR - G, NIR + G)


@_index("NDWIWM", "NDWI water mask: max((N − G)/(N + G), 0); never masked", maskable=False, binary=True)
def _ndwiwm(NIR: Array, G: Array) -> Array:
    return _maximum(_ndwi(NIR, G), 0.0)


@_index("NormG", "Normalised green: G/(N + R + G)")
def _normg(NIR: Array, R: Array, G: Array) -> Array:
    return _div(G, NIR + R + G)


@_index("NormNIR", "Normalised NIR: N/(N + R + G)")
def _normnir(NIR: Array, R: Array, G: Array) -> Array:
    return _div(NIR, NIR + R + G)


@_index("NormR", "Normalised red: R/(N + R + G)")
def _normr(NIR: Array, R: Array, G: Array) -> Array:
    return _div(R, NIR + R + G)


@_index("PNDVI", "Pan NDVI: (N − (R + G + B))/(N + R + G + B)")
def _pndvi(NIR: Array, R: Array, G: Array, B: Array) -> Array:
    return _div(NIR - (R + G + B), NIR + R + G + B)


@_index("SRGR", "Simple ratio green/red: G/R")
def _srgr(R: Array, G: Array) -> Array:
    return _div(G, R)


@_index("SRNIRG", "Simple ratio NIR/green: N/G")
def _srnirg(NIR: Array, G: Array) -> Array:
    return _div(NIR, G)


@_index("SRNIRR", "Simple ratio NIR/red: N/R")
def _srnirr(NIR: Array, R: Array) -> Array:
    return _div(NIR, R)


@_index("SRNIRSWIR", "Simple ratio NIR/SWIR: N/S")
def _srnirswir(SWIR: Array, NIR: Array) -> Array:
    return _div(NIR, SWIR)


@_index("SRSWIRNIR", "Simple ratio SWIR/NIR: S/N")
def _srswirnir(SWIR: Array, NIR: Array) -> Array:
    return _div(SWIR, NIR)


@_index("RBNDVI", "Red-blue NDVI: (N − (R + B))/(N + R + B)")
def _rbndvi(NIR: Array, R: Array, B: Array) -> Array:
    return _div(NIR - (R + B), NIR + R + B)


@_index("SQRTNIRR", "Square root of NIR/red: sqrt(N/R)")
def _sqrtnirr(NIR: Array, R: Array) -> Array:
    return _sqrt(_div(NIR, R))


@_index("TNDVI", "Transformed NDVI: sqrt((N − R)/(N + R) + 0.5)")
def _tndvi(NIR: Array, R: Array) -> Array:
    return _sqrt(_div(NIR - R, NIR + R) + 0.5)


@_index("TVI", "Transformed vegetation index, as implemented: sqrt((R − G)/(R + G) + 0.5)")
def _tvi(R: Array, G: Array) -> Array:
    return _sqrt(_div(R - G, R + G) + 0.5)


@_index("VARIGreen", "Visible atmospherically resistant index green: (G − R)/(G + R − B)")
def _varigreen(R: Array, G: Array, B: Array) -> Array:
    return _div(G - R, G + R - B)


@_index("WDRVI", "Wide dynamic range VI: (0.1·N − R)/(0.1·N + R)")
def _wdrvi(NIR: Array, R: Array) -> Array:
    return _div(0.1 * NIR - R, 0.1 * NIR + R)


@_index(
    "DEMWM",
    "DEM water mask: max(DEM, 0), clipped elevation in metres (0 over water and where the DEM is missing); "
    "never masked, stats forced to [0, 1]",
    maskable=False,
    binary=True,
)
def _demwm(DEM: Array) -> Array:
    if _REFERENCE_NUMERICS.get():
        return _maximum(DEM, 0.0)
    return _where(_isnan(DEM), 0.0, _maximum(DEM, 0.0))


@_index("CHLA", "Chlorophyll-a: 4.23·((G/65535)/(B/65535))^3.94", do_not_use=True)
def _chla(G: Array, B: Array) -> Array:
    return 4.23 * _pow(_div(G / 65_535, B / 65_535), 3.94)


@_index("CYA", "Cyanobacteria density: ((G/65535)·(R/65535) + ε)/(B/65535))^2.38", do_not_use=True)
def _cya(R: Array, G: Array, B: Array) -> Array:
    return _pow(_div((G / 65_535) * (R / 65_535) + EPS, B / 65_535), 2.38)


@_index("TURB", "Water turbidity: 8.93·(G/B) − 6.39")
def _turb(G: Array, B: Array) -> Array:
    return 8.93 * _div(G, B) - 6.39


@_index("CDOM", "Coloured dissolved organic matter: 537·exp(−2.93·G/R)")
def _cdom(R: Array, G: Array) -> Array:
    return 537 * _exp(-2.93 * _div(G, R))


@_index("DOC", "Dissolved organic carbon: 432·exp(−2.24·G/R)")
def _doc(R: Array, G: Array) -> Array:
    return 432 * _exp(-2.24 * _div(G, R))


@_index("WATERCOLOR", "Water colour: 25366·exp(−4.53·G/R)")
def _watercolor(R: Array, G: Array) -> Array:
    return 25366 * _exp(-4.53 * _div(G, R))


@_index("SABI", "Surface algal bloom index: (N − R)/(G + B)")
def _sabi(NIR: Array, R: Array, G: Array, B: Array) -> Array:
    return _div(NIR - R, G + B)


@_index("KIVU", "KIVU: (B − R)/G")
def _kivu(R: Array, G: Array, B: Array) -> Array:
    return _div(B - R, G)


@_index("Kab1", "Kabbara index 1: 1.67 − 3.94·ln(B + ε) + 3.78·ln(G + ε)")
def _kab1(G: Array, B: Array) -> Array:
    return 1.67 - 3.94 * _log(B + EPS) + 3.78 * _log(G + EPS)


@_index("NDAVI", "Normalized difference aquatic vegetation index: (N − B)/(N + B)")
def _ndavi(NIR: Array, B: Array) -> Array:
    return _div(NIR - B, NIR + B)


@_index("WAVI", "Water adjusted vegetation index: 1.5·(N − B)/(N + B + 0.5)")
def _wavi(NIR: Array, B: Array) -> Array:
    return 1.5 * _div(NIR - B, NIR + B + 0.5)


#: The 59 names of the reference's lookup table, in its order.
REFERENCE_INDEX_NAMES: tuple[str, ...] = tuple(INDEX_REGISTRY)

# Extras: textbook versions of the indices the reference got wrong, common water indices, mask channels.

#: Floating Algae Index baseline weight (λN − λR)/(λS − λR) with Landsat TM/ETM+ band centres 660/835/1650 nm.
FAI_BASELINE_WEIGHT = (835.0 - 660.0) / (1650.0 - 660.0)


@_index(
    "IPVI_textbook", "Infrared percentage VI (Crippen 1990): N/(N + R) = (NDVI + 1)/2", in_reference=False
)
def _ipvi_textbook(NIR: Array, R: Array) -> Array:
    return _div(NIR, NIR + R)


@_index(
    "NDWI_McFeeters",
    "Normalized difference water index (McFeeters 1996): (G − N)/(G + N)",
    in_reference=False,
)
def _ndwi_mcfeeters(NIR: Array, G: Array) -> Array:
    return _div(G - NIR, G + NIR)


@_index("MNDWI", "Modified NDWI (Xu 2006): (G − S)/(G + S)", in_reference=False)
def _mndwi(SWIR: Array, G: Array) -> Array:
    return _div(G - SWIR, G + SWIR)


@_index("NDMI", "Normalized difference moisture index: (N − S)/(N + S)", in_reference=False)
def _ndmi(SWIR: Array, NIR: Array) -> Array:
    return _div(NIR - SWIR, NIR + SWIR)


@_index(
    "FAI",
    "Floating algae index (Hu 2009): N − (R + (S − R)·(835 − 660)/(1650 − 660)), "
    "NIR above the red-SWIR baseline (TM/ETM+ band centres), in DN",
    in_reference=False,
)
def _fai(SWIR: Array, NIR: Array, R: Array) -> Array:
    return NIR - (R + (SWIR - R) * FAI_BASELINE_WEIGHT)


@_index(
    "WATERMASK",
    "1 where water (DEM <= 0 or DEM missing), 0 on land; never masked",
    maskable=False,
    binary=True,
    in_reference=False,
)
def _watermask(DEM: Array) -> Array:
    return _as_float((DEM <= 0) | _isnan(DEM), DEM)


@_index(
    "VALIDMASK",
    "1 where QA == 0 and all five spectral bands are present, else 0; never masked",
    maskable=False,
    binary=True,
    in_reference=False,
)
def _validmask(SWIR: Array, NIR: Array, R: Array, G: Array, B: Array, QA: Array) -> Array:
    ok = QA == 0
    for band in (SWIR, NIR, R, G, B):
        ok = ok & ~_isnan(band)
    return _as_float(ok, QA)


#: The 17 channels of the reference's best model, in its order.
BEST_INDICES: tuple[str, ...] = (
    "DEMWM",
    "NDVI",
    "ATSAVI",
    "AVI",
    "CI",
    "ClGreen",
    "GBNDVI",
    "GVMI",
    "IPVI",
    "KIVU",
    "MCARI",
    "MVI",
    "NormNIR",
    "PNDVI",
    "SABI",
    "WDRVI",
    "mCRIG",
)


# ---------------------------------------------------------------------------------------------------------
# Look-up and validation
# ---------------------------------------------------------------------------------------------------------


def _close_names(name: str) -> list[str]:
    by_lower = {n.lower(): n for n in INDEX_REGISTRY}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)
    return [by_lower[c] for c in close]


def get_index(name: str) -> SpectralIndex:
    """The registered index called ``name`` (case-sensitive); unknown names raise UnknownIndexError."""
    try:
        return INDEX_REGISTRY[name]
    except KeyError:
        close = _close_names(str(name))
        hint = f"did you mean {', '.join(close)}?" if close else f"known indices: {', '.join(INDEX_REGISTRY)}"
        raise UnknownIndexError(f"unknown spectral index {name!r}; {hint}") from None


def validate_index_names(names: str | Iterable[str]) -> list[str]:
    """Check index names (a list, or one comma-separated string) and return them as a list.

    Whitespace around names is ignored; unknown names and duplicates raise UnknownIndexError.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    cleaned = [str(n).strip() for n in items if str(n).strip()]
    for n in cleaned:
        get_index(n)
    duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if duplicates:
        raise UnknownIndexError(f"spectral indices listed more than once: {', '.join(duplicates)}")
    return cleaned


# ---------------------------------------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------------------------------------


def _as_float_input(x: Array) -> Array:
    """Keep float32/float64; compute anything else (ints, halves) in float32."""
    if _is_torch(x):
        torch = _torch()
        return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _band(x: Array, positions: Mapping[str, int], band: str, what: str) -> Array:
    if band not in positions:
        raise MissingBandError(
            f"{what} needs band {band!r}, which is not in the input (bands present: {', '.join(positions)})"
        )
    pos = positions[band]
    n_channels = x.shape[-3]
    if not 0 <= pos < n_channels:
        raise MissingBandError(
            f"{what} needs band {band!r} at channel {pos}, but the input has {n_channels} channels on axis -3"
        )
    return x[..., pos, :, :]


def _check_shape(x: Array) -> None:
    if x.ndim < 3:
        raise ValueError(f"expected an array shaped (..., C, H, W), got shape {tuple(x.shape)}")


def water_mask(x: Array, positions: Mapping[str, int]) -> Array:
    """Boolean ``(..., H, W)``: True where water, i.e. ``DEM <= 0`` or the DEM is missing (NaN)."""
    _check_shape(x)
    dem = _band(x, positions, "DEM", "the water mask")
    if _REFERENCE_NUMERICS.get():
        return dem <= 0  # its DEMWM == 0: false where the DEM is missing
    return (dem <= 0) | _isnan(dem)


def qa_ok_mask(x: Array, positions: Mapping[str, int]) -> Array:
    """Boolean ``(..., H, W)``: True where ``QA == 0`` (a NaN QA is not ok)."""
    _check_shape(x)
    return _band(x, positions, "QA", "the QA mask") == 0


def keep_mask(
    x: Array, positions: Mapping[str, int], mask_using_qa: bool, mask_using_water_mask: bool
) -> Array | None:
    """Pixels where maskable indices are computed (QA clear and/or water); None when nothing is masked."""
    keep = None
    if mask_using_qa:
        keep = qa_ok_mask(x, positions)
    if mask_using_water_mask:
        water = water_mask(x, positions)
        keep = water if keep is None else keep & water
    return keep


#: On the CPU the work is split into blocks of about this many pixels (whole images of a batch, or rows
#: of a large image), so that the intermediates of each formula stay in cache: several times faster on
#: a (32, 7, 352, 352) batch than whole-batch operations. GPU tensors are computed in one go.
CPU_BLOCK_PIXELS = 1 << 18


def cpu_blocks(n: int, height: int, width: int) -> Iterator[tuple[slice, slice]]:
    """(image slice, row slice) pairs covering an (n, C, height, width) stack in CPU-sized blocks."""
    if height * width >= CPU_BLOCK_PIXELS:
        rows = max(1, CPU_BLOCK_PIXELS // width)
        for i in range(n):
            for r in range(0, height, rows):
                yield slice(i, i + 1), slice(r, r + rows)
    else:
        per = max(1, CPU_BLOCK_PIXELS // (height * width))
        for i in range(0, n, per):
            yield slice(i, i + per), slice(None)


def _on_gpu(x: Array) -> bool:
    return _is_torch(x) and x.device.type != "cpu"


def _empty(shape: tuple[int, ...], like: Array) -> Array:
    if _is_torch(like):
        return _torch().empty(shape, dtype=like.dtype, device=like.device)
    return np.empty(shape, dtype=like.dtype)


def _finite_or(value: Array, fill: float) -> Array:
    """``value`` with every NaN and ±inf replaced by ``fill``."""
    if _is_torch(value):
        return _torch().nan_to_num(value, nan=fill, posinf=fill, neginf=fill)
    return np.where(_isfinite(value), value, fill)


def _compute_block(
    specs: list[SpectralIndex],
    x: Array,
    positions: Mapping[str, int],
    mask_using_qa: bool,
    mask_using_water_mask: bool,
    fill: float,
) -> Array:
    """The indices of one (n, C, h, w) block as (n, len(specs), h, w)."""
    with np.errstate(all="ignore"):
        keep = keep_mask(x, positions, mask_using_qa, mask_using_water_mask)
        out = []
        for spec in specs:
            value = spec.func(**{b: x[:, positions[b]] for b in spec.needs})
            if keep is not None and spec.maskable:
                value = _where(keep, value, NAN)
            out.append(value if _REFERENCE_NUMERICS.get() else _finite_or(value, fill))
        return _stack(out, like=x)


def compute_indices(
    x: Array,
    positions: Mapping[str, int],
    names: str | Iterable[str],
    *,
    mask_using_qa: bool = False,
    mask_using_water_mask: bool = False,
    fill: float = NAN,
    reference_numerics: bool = False,
) -> Array:
    """Indices ``names`` of the stack ``x`` (..., C, H, W) as an array (..., len(names), H, W).

    ``positions`` maps band name -> channel of ``x``. Masked pixels and every non-finite value become
    ``fill``; indices with ``maskable=False`` are never masked. Returns the input's type, device and
    float dtype (float32 for non-float inputs). ``reference_numerics``: the reference's arithmetic
    (module docstring).
    """
    token = _REFERENCE_NUMERICS.set(bool(reference_numerics))
    try:
        return _compute_indices(x, positions, names, mask_using_qa, mask_using_water_mask, fill)
    finally:
        _REFERENCE_NUMERICS.reset(token)


def _compute_indices(
    x: Array,
    positions: Mapping[str, int],
    names: str | Iterable[str],
    mask_using_qa: bool,
    mask_using_water_mask: bool,
    fill: float,
) -> Array:
    specs = [get_index(n) for n in validate_index_names(names)]
    _check_shape(x)
    x = _as_float_input(x)
    for spec in specs:  # fail before computing anything
        for b in spec.needs:
            _band(x, positions, b, f"spectral index {spec.name!r}")
    any_maskable = any(s.maskable for s in specs)
    mask_using_qa = mask_using_qa and any_maskable
    mask_using_water_mask = mask_using_water_mask and any_maskable
    if mask_using_qa:
        _band(x, positions, "QA", "the QA mask")
    if mask_using_water_mask:
        _band(x, positions, "DEM", "the water mask")

    *lead, n_channels, height, width = x.shape
    flat = x.reshape((-1, n_channels, height, width))
    n = flat.shape[0]
    args = (positions, mask_using_qa, mask_using_water_mask, fill)
    if _on_gpu(x) or not specs:
        out = _compute_block(specs, flat, *args) if specs else flat[:, :0]
    else:
        out = _empty((n, len(specs), height, width), like=flat)
        for images, rows in cpu_blocks(n, height, width):
            out[images, :, rows] = _compute_block(specs, flat[images, :, rows], *args)
    return out.reshape((*lead, len(specs), height, width))


def compute_index(
    name: str,
    x: Array,
    positions: Mapping[str, int],
    *,
    mask_using_qa: bool = False,
    mask_using_water_mask: bool = False,
    fill: float = NAN,
) -> Array:
    """One index of ``x`` (..., C, H, W) as (..., H, W); see ``compute_indices``."""
    out = compute_indices(
        x,
        positions,
        [name],
        mask_using_qa=mask_using_qa,
        mask_using_water_mask=mask_using_water_mask,
        fill=fill,
    )
    return out[..., 0, :, :]


def append_indices(x: Array, positions: Mapping[str, int], names: str | Iterable[str], **kw: Any) -> Array:
    """``x`` with ``compute_indices(x, positions, names, **kw)`` concatenated on axis -3.

    The new channels follow the existing ones in the order of ``names``.
    """
    indices = compute_indices(x, positions, names, **kw)
    return _concat([_as_float_input(x), indices])
