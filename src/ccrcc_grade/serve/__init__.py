"""The clinician workstation (`ccrcc-grade serve`): a FastAPI service and a plain-JavaScript page
to load a CT study (upload or DICOMweb PACS), check the phase of each series, box the tumour,
grade it with the same preprocessing and model code as `predict`, see Grad-CAM heat maps, print
a report and send a DICOM SR back to the PACS.

Modules: ``store`` (studies on disk), ``models`` (models loaded once, model cards), ``pacs``
(QIDO/WADO/STOW via dicomweb-client), ``sr`` (highdicom Comprehensive 3D SR, TID 1500),
``workstation`` (the services the routes share: grading, freshness of results, the SR),
``report`` (the printable report), ``security`` (the front door: Host, origin, upload bounds,
headers), ``errors`` (HTTP statuses, answers without server paths), ``schemas`` (request
bodies), ``routes/`` (one router per resource), ``app`` (the factory), ``static/`` (the page).
"""

from ccrcc_grade.serve.app import create_app

__all__ = ["create_app"]
