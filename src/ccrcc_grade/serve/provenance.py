"""IHE AI Results provenance on every object the workstation writes into a PACS (SR, key image,
SEG): the algorithm as Contributing Equipment (PS3.3 C.12.1, purpose "Processing Equipment")
with its name, version and a Device UID that identifies this model version - derived from the
weights' SHA-256, so the same weights always give the same UID and a retrained model a new one -
and a SeriesDescription that says research use."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pydicom

from ccrcc_grade import __version__

RESEARCH_USE = "research use only, not for diagnosis"
MANUFACTURER = "ccrcc-grade"


def device_uid(weights_sha256: str) -> str:
    """A UID (2.25 form) made from the model's weight checksum: one per model version."""
    if not weights_sha256:
        raise ValueError("a model without a weight checksum has no device UID")
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'ccrcc-grade model ' + weights_sha256).int}"


def contributing_equipment(model_name: str, weights_sha256: str) -> pydicom.Dataset:
    """One Contributing Equipment item for the algorithm (highdicom builds the item; the Device
    UID, which highdicom's class does not take, is set on it)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"ccrcc-grade {model_name}"[:64],
        software_versions=__version__,
        contribution_datetime=datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
        contribution_description=f"WHO/ISUP grade prediction ({RESEARCH_USE})"[:64],
    )
    item.DeviceUID = device_uid(weights_sha256)
    return item


def add_provenance(ds: pydicom.Dataset, model_name: str, weights_sha256: str, what: str) -> pydicom.Dataset:
    """Contributing Equipment, the model version as the instance's software version and a
    SeriesDescription saying research use (``what``: "WHO/ISUP grade", "key image", ...)."""
    ds.ContributingEquipmentSequence = [contributing_equipment(model_name, weights_sha256)]
    ds.SoftwareVersions = __version__
    ds.ManufacturerModelName = f"ccrcc-grade {model_name}"[:64]
    tail = f": {RESEARCH_USE}"  # never cut off: what is shortened to fit LO's 64 characters
    ds.SeriesDescription = f"ccrcc-grade {what}"[: 64 - len(tail)] + tail
    return ds
