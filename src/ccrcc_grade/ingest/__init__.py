"""From a cohort folder to the crop cache: a validated :class:`Cohort` (``cohort``), one reader
per folder layout and ``detect_layout`` (``layouts``), phase detection of unsorted DICOM
(``phase_detect``), box -> crop (``preprocess``), the cache on disk (``cache``), ``ingest`` that
validates, crops and writes for every layout (``pipeline``), and patient splits (``splits``).
"""
