"""Readers for the input formats: labelme JSON, exported slices, DICOM series, NIfTI, KiTS.

These modules only read files into arrays, HU values and boxes; they know nothing of cohorts,
caches or models.
"""
