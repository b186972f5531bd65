from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from housegan.cli import main
from housegan.config import Settings


def test_config_show_prints_effective_values_and_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("HOUSEGAN_STACK__SECRET_KEY", "do-not-print-me")
    monkeypatch.setenv("HOUSEGAN_IMAGES__MIN_SIDE", "77")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["images"]["min_side"] == 77
    assert "do-not-print-me" not in out and shown["stack"]["secret_key"] == "**********"


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("gan", "image_size", 48, "use one of"),
        ("gan", "precision", "fp8", "fp32"),
        ("gan", "diffaugment", "translation,blur", "unknown ops"),
        ("embed", "layer", "fc6", "conv5"),
        ("embed", "weights", "imagenet21k", "state-dict file"),
        ("curate", "wanted_types", ("exterior", "garden"), "landscape"),
        ("curate", "drop_flags", ("dark", "noisy"), "overexposed"),
    ],
)
def test_closed_choices_refuse_values_outside_them(
    section: str, field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{section: {field: value}})


def test_image_size_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOUSEGAN_GAN__IMAGE_SIZE", "32")
    assert Settings().gan.image_size == 32
    monkeypatch.setenv("HOUSEGAN_GAN__IMAGE_SIZE", "40")
    with pytest.raises(ValidationError, match=r"gan\.image_size=40"):
        Settings()
