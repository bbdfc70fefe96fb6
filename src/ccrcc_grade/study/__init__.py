"""The study end to end (`ccrcc-grade study`): its typed protocol (``protocol``), ingest ->
splits -> one model per phase + combined + SE-ResNet34 -> evaluation -> evidence (``run``), and
the report for a paper (``report``: results.json -> report.md / report.html).
"""
