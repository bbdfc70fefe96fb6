"""Request bodies of the workstation's API (pydantic): lengths bounded, numbers finite."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BoxIn(BaseModel):
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    x_min: float = Field(allow_inf_nan=False)
    y_min: float = Field(allow_inf_nan=False)
    x_max: float = Field(allow_inf_nan=False)
    y_max: float = Field(allow_inf_nan=False)


class PredictIn(BaseModel):
    model: str | None = None
    cam: bool = False


class PacsLoadIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)


class PacsSearchIn(BaseModel):
    patient_id: str = Field(default="", max_length=64)
    name: str = Field(default="", max_length=64)
    date: str = Field(default="", max_length=17)


class StoreSrIn(BaseModel):
    model: str | None = None
