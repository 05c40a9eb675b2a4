"""The choices of the inference options, read by the inference code and the command line.

Free of torch and numpy so that ``kelpseg --help`` lists them without importing either.
"""

from __future__ import annotations

#: How test-time-augmentation probabilities are merged (:mod:`kelpseg.infer.tta`).
MERGE_MODES = ("mean", "max", "min", "gmean")
#: How an ensemble combines its members (:mod:`kelpseg.infer.ensemble`).
ENSEMBLE_MODES = ("soft", "vote")
#: How a reference run's two logits become a kelp probability (:mod:`kelpseg.reference.checkpoint`).
REFERENCE_SCORES = ("sigmoid", "softmax")
#: How the model runs during prediction (:mod:`kelpseg.infer.engine`).
PREDICTION_BACKENDS = ("auto", "eager", "channels_last", "compile", "onnx")
