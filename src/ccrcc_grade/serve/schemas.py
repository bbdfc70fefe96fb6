"""Request bodies of the workstation's API (pydantic): lengths bounded, numbers finite."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

BOX_SOURCE = r"^(person|interpolation|propagation|proposal model)$"


class BoxIn(BaseModel):
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    x_min: float = Field(allow_inf_nan=False)
    y_min: float = Field(allow_inf_nan=False)
    x_max: float = Field(allow_inf_nan=False)
    y_max: float = Field(allow_inf_nan=False)
    # who made the box: "person" (drawn or moved on the page), "interpolation" (between key boxes),
    # "propagation" (from another phase), "proposal model"
    source: str = Field(default="person", pattern=BOX_SOURCE)
    # a proposal stays unconfirmed (not graded, not exported) until the clinician confirms it
    confirmed: bool = True
    # who or what made the box before, oldest first: ["proposal model", "person"] = proposed, then edited
    history: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("history")
    @classmethod
    def _history(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(BOX_SOURCE, item):
                raise ValueError(
                    f"history entry {item[:40]!r} is not one of person, interpolation, propagation, proposal model"
                )
        return v


class PredictIn(BaseModel):
    model: str | None = None
    cam: bool = False
    # plausible box sets for the box-robustness range; 0 skips it (the page's fast first grade)
    box_k: int | None = Field(default=None, ge=0, le=200)
    # grade unconfirmed proposals too (the result says so); by default only confirmed boxes count
    include_proposed: bool = False


class ProposeIn(BaseModel):
    # the phase whose confirmed boxes are the keys (default: the first assigned phase with boxes)
    phase: str | None = Field(default=None, max_length=32)
    # auto: the proposal model when the server has one, else interpolation between key boxes
    method: str = Field(default="auto", pattern=r"^(auto|interpolate|model)$")
    # also propose on the other assigned phases (patient coordinates + rigid registration)
    propagate: bool = False


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


class SendIn(BaseModel):
    model: str | None = None
