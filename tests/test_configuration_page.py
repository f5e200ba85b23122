"""docs/configuration.md is generated from the settings tree; this fails when it is stale."""

from pathlib import Path

from nightshift.settings import settings_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_is_current():
    assert PAGE.read_text() == settings_reference(), "run `nightshift config-docs` and commit docs/configuration.md"
