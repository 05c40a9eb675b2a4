"""Features computed from the seven bands: the spectral-index registry (:mod:`.indices`).

``indices.py`` holds the 59 spectral indices of the reference solution plus a few extras, each a
formula registered in ``INDEX_REGISTRY`` by a decorator whose parameter names are the bands it
needs; the QA and water masks applied to them; and ``compute_indices``, which stacks the chosen
indices for a numpy tile or a torch batch through one code path. A model takes the indices as
extra input channels after its bands. The band order itself lives in :mod:`kelpseg.bands`,
normalisation in :mod:`kelpseg.train.transforms`.
"""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "INDEX_REGISTRY": "indices",
        "compute_indices": "indices",
        "compute_index": "indices",
        "get_index": "indices",
        "validate_index_names": "indices",
        "water_mask": "indices",
        "qa_ok_mask": "indices",
    },
)
