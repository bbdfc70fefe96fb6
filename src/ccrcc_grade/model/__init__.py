"""Networks and what runs them: the architecture registry (``registry``), crops -> tensors and
augmentation (``data``), training (``train``), device/precision choice and checkpoints
(``inference``), loading a model for prediction (``predict``), evaluation of a run on held-out
patients (``evaluate``), ONNX export and ONNX Runtime (``export``, ``onnx_runtime``), Grad-CAM
(``explain``) and the model card (``card``).
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "create_model": "registry",
    "fit": "train",
    "resume": "train",
    "Predictor": "predict",
    "load_predictor": "predict",
    "predict_patient": "predict",
    "grade_rois": "predict",
    "evaluate_run": "evaluate",
    "export_onnx": "export",
    "gradcam": "explain",
    "model_card": "card",
    "resolve_device": "inference",
    "cpu_backend": "inference",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
