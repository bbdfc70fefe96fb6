"""The DICOM SEG of the proposal model's tumour masks (highdicom ``Segmentation``): one binary
segment "tumour" over every slice of the graded series - the empty frames kept, so the SEG
covers the series slice for slice - made when the workstation has a proposal model
(``serve --roi-model``), with the same IHE AI Results provenance as the SR and key image."""

from __future__ import annotations

import numpy as np
import pydicom

from ccrcc_grade import __version__
from ccrcc_grade.serve.provenance import add_provenance


def build_seg(
    sources: list[pydicom.Dataset],
    masks: np.ndarray,
    roi_model_name: str,
    weights_sha256: str,
    series_uid: str,
    instance_number: int = 1,
) -> pydicom.Dataset:
    """``sources``: the series' slices (headers with their pixel module, in slice order);
    ``masks``: (slices, rows, columns) booleans, one frame per source slice; the provenance is
    the proposal model's (its name and weight checksum)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if masks.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"{masks.shape[0]} masks of {masks.shape[1:]} for {len(sources)} slices")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"ccrcc-grade tumour proposal {roi_model_name}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour (proposal model)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Kidney],
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=902,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="ccrcc-grade",
        manufacturer_model_name=f"ccrcc-grade {roi_model_name}"[:64],
        software_versions=__version__,
        device_serial_number=weights_sha256[:16],
        omit_empty_frames=False,  # one frame per slice of the series, empty ones too
    )
    return add_provenance(seg, f"tumour proposal {roi_model_name}", weights_sha256, "proposal SEG")
