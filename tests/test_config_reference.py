"""docs/configuration.md is generated from the config models and must match them."""

from pathlib import Path

from serving.config.reference import REGENERATE, missing_descriptions, render

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_reference_matches_the_models() -> None:
    assert DOC.read_text() == render(), (
        f"docs/configuration.md differs from the config models; regenerate it: {REGENERATE}")


def test_every_key_has_a_description() -> None:
    assert missing_descriptions() == [], (
        "config keys without description= (write what the key does and when to change it, "
        f"then run: {REGENERATE})")


def test_reference_has_one_row_per_key() -> None:
    text = render()
    assert "## router.timeouts" in text
    assert "| `max_in_flight` | int | `256` |" in text
