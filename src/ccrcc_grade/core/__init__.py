"""What every layer shares: the one error type and number check (``errors``), atomic file
writes (``fileio``), progress bars (``progress``), the phase and grade vocabulary (``phases``),
the configuration dataclasses with every default (``config``), the threshold policy that turns
P(high) into a grade (``threshold``) and the folders the pipeline writes with their file names
(``paths``: WorkDir, RunDir, StudyDir). Nothing here imports from another sub-package.
"""

from ccrcc_grade.core.config import PreprocessConfig, TrainConfig
from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.paths import RunDir, StudyDir, WorkDir
from ccrcc_grade.core.phases import CLASSES, COMBINED, PHASES

__all__ = [
    "CcrccError",
    "check_number",
    "PreprocessConfig",
    "TrainConfig",
    "WorkDir",
    "RunDir",
    "StudyDir",
    "PHASES",
    "CLASSES",
    "COMBINED",
]
