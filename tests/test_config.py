from __future__ import annotations

import yaml

from housegan.cli import main


def test_config_show_prints_effective_values_and_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("HOUSEGAN_STACK__SECRET_KEY", "do-not-print-me")
    monkeypatch.setenv("HOUSEGAN_IMAGES__MIN_SIDE", "77")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["images"]["min_side"] == 77
    assert "do-not-print-me" not in out and shown["stack"]["secret_key"] == "**********"
