"""ccrcc_grade.core.config: one source of defaults, the typed study protocol."""

from __future__ import annotations

import pytest

from ccrcc_grade.core.config import N_BOOT, PRESETS, PreprocessConfig, TrainConfig
from ccrcc_grade.core.errors import CcrccError


def test_the_paper_preset_is_the_configuration_defaults():
    """The study's protocol is written once: the paper preset reads the config defaults."""
    p, t = PRESETS["paper"], TrainConfig()
    assert (p.size, p.image_size, p.epochs, p.lr, p.repeats, p.weights, p.n_boot) == (
        PreprocessConfig().size,
        t.image_size,
        t.epochs,
        t.lr,
        t.repeats,
        t.weights,
        N_BOOT,
    )
    assert (t.batch_size, t.momentum, t.lr, t.epochs, t.image_size) == (32, 0.9, 1e-3, 50, 224)  # Cui et al.


def test_overrides_and_the_combined_epochs():
    q = PRESETS["quick"]
    assert q.epochs_for("combined") == q.combined_epochs and q.epochs_for("plain") == q.epochs
    same = q.with_overrides(size=None, weights=None)
    assert same == q
    mine = q.with_overrides(epochs=3, size=32)
    assert (mine.epochs, mine.size, mine.epochs_for("combined"), mine.combined_epochs) == (3, 32, 3, None)
    assert "combined_epochs" not in mine.to_dict() and q.to_dict()["combined_epochs"] == q.combined_epochs
    with pytest.raises(TypeError):
        q.with_overrides(no_such_field=1)


def test_a_protocol_is_immutable():
    with pytest.raises(AttributeError):
        PRESETS["paper"].epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("epochs", 0, "epochs (--epochs) must be >= 1"),
        ("batch_size", 0, "batch_size (--batch-size)"),
        ("lr", float("nan"), "learning rate (--lr) must be a finite number"),
        ("amp", "maybe", "amp (--amp)"),
        ("device", "tpu", "device (--device)"),
        ("compile", "yes", "compile (--compile)"),
        ("select_metric", "f1", "select_metric (--select-metric)"),
        ("threshold", "sens150", "sens150"),
    ],
)
def test_library_errors_name_the_field(field, value, needle):
    with pytest.raises(CcrccError, match=None) as e:
        TrainConfig(**{field: value}).validate()
    assert needle in str(e.value)
