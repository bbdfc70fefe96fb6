"""Statistics of predictions, independent of how they were made: metrics with patient-bootstrap
CIs, DeLong's test and patient aggregation (``metrics``), prediction files (``predictions``),
paired comparisons of two runs (``compare``), the clinical characteristics table (``clinical``)
and the figures of all of them (``figures``).
"""
