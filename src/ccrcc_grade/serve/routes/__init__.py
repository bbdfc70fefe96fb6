"""The workstation's API, one router per resource: ``meta`` (the page, /docs, configuration,
models, PACS search), ``studies`` (upload or PACS load, series and phases, slices, boxes, export)
and ``results`` (grading, Grad-CAM images, report, DICOM SR)."""
