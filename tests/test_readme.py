"""The README stays true: every setting the service reads is listed in its settings table."""

from __future__ import annotations

import re
from pathlib import Path

from channels.settings import ChannelSettings
from core.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    listed = set(re.findall(r"`(NURTURE_[A-Z0-9_]+)`", README.read_text()))
    settings = {
        f"NURTURE_{name.upper()}"
        for model in (Settings, ChannelSettings)
        for name in model.model_fields
    }
    assert settings - listed == set(), "settings missing from the README's table"
