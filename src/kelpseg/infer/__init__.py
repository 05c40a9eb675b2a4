"""Inference: prediction from run directories, TTA, ensembles, submission archives."""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "InferenceOptions": "predict",
        "predict_folder": "predict",
        "evaluate_run": "predict",
        "ensemble_folders": "ensemble",
        "predict_with_tta": "tta",
        "write_submission": "submission",
        "check_submission": "submission",
        "predict_and_submit": "workflows",
        "cv_predict": "workflows",
        "write_prediction_previews": "previews",
    },
)
