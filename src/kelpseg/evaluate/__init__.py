"""Metrics (the competition's kelp Dice), threshold search, evaluation of prediction folders."""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ConfusionCounts": "metrics",
        "kelp_dice": "metrics",
        "evaluate_folders": "evaluate",
        "write_report": "evaluate",
        "EvalReport": "evaluate",
        "ThresholdAccumulator": "threshold",
        "best_threshold": "threshold",
        "fit_ndvi_baseline": "baseline",
    },
)
