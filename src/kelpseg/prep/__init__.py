"""Data preparation stages: sample plots, AOI grouping, EDA, band statistics, CV split."""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "plot_samples": "plotting",
        "group_aois": "aoi",
        "run_eda": "eda",
        "compute_band_stats": "band_stats",
        "load_band_stats": "band_stats",
        "make_cv_split": "split",
        "make_random_split": "split",
    },
)
