"""The choices of the batch transform's options, read by the transform and the training config.

Kept free of torch so that the config (and the command line's ``--help``) can list them cheaply.
"""

from __future__ import annotations

NORMALIZATION_STRATEGIES = ("quantile", "min-max", "z-score", "per-sample-quantile", "per-sample-min-max")
RESIZE_STRATEGIES = ("pad", "resize")
#: ``torch.nn.functional.interpolate`` modes for images (masks always use nearest).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")
