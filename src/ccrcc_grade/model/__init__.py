"""Networks and what runs them: the architecture registry (``registry``), crops -> tensors and
augmentation (``data``), training (``train``), device/precision choice and checkpoints
(``inference``), loading a model for prediction (``predict``), evaluation of a run on held-out
patients (``evaluate``), ONNX export and ONNX Runtime (``export``, ``onnx_runtime``), Grad-CAM
(``explain``) and the model card (``card``).
"""
