"""Request bodies of the workstation's API (pydantic): lengths bounded, numbers finite."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BoxIn(BaseModel):
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    x_min: float = Field(allow_inf_nan=False)
    y_min: float = Field(allow_inf_nan=False)
    x_max: float = Field(allow_inf_nan=False)
    y_max: float = Field(allow_inf_nan=False)
    # who made the box: "person" (drawn or moved on the page), "interpolation", "proposal model"
    source: str = Field(default="person", pattern=r"^(person|interpolation|proposal model)$")


class PredictIn(BaseModel):
    model: str | None = None
    cam: bool = False
    # plausible box sets for the box-robustness range; 0 skips it (the page's fast first grade)
    box_k: int | None = Field(default=None, ge=0, le=200)


class SignOffIn(BaseModel):
    model: str | None = None
    observer: str = Field(min_length=2, max_length=64, pattern=r"^[^\\\x00-\x1f^=]+$")


class PacsLoadIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)


class PacsSearchIn(BaseModel):
    patient_id: str = Field(default="", max_length=64)
    name: str = Field(default="", max_length=64)
    date: str = Field(default="", max_length=17)


class StoreSrIn(BaseModel):
    model: str | None = None
