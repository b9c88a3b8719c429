"""The README's mini_tts results quote ``recipes/mini_tts/README.md``, where each recorded run of
the main job widens its rows' ranges: every test-clean WER range of the main job's rows there
(greedy, beam + LM; one row per machine) is in the README too, so a run recorded in the recipe
README cannot leave the README's figures behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MAIN_JOB_ROW = "| `transformer_transducer` (main job)"


def main_job_ranges(recipe_readme: str) -> list[str]:
    """The greedy and beam + LM test-clean cells (``28.66-32.01``) of the main job's rows."""
    ranges = []
    for line in recipe_readme.splitlines():
        if line.startswith(_MAIN_JOB_ROW):
            cells = [cell.strip().strip("*") for cell in line.split("|")[2:4]]
            ranges += [cell for cell in cells if re.fullmatch(r"\d+\.\d+-\d+\.\d+", cell)]
    return ranges


def missing_ranges(readme: str, recipe_readme: str) -> list[str]:
    return [r for r in main_job_ranges(recipe_readme) if r not in readme]


def test_a_range_the_readme_lacks_is_caught():
    recipe = ("| `transformer_transducer` (main job), Intel | 28.66-32.01 | **20.10-24.94** | x |\n"
              "| `transformer_transducer` (main job), AMD | 30.89-35.73 | 19.98-23.95 | x |\n")
    readme = "| greedy | 28.66-32.01 |\n| beam | 20.10-24.94 |\n"
    assert missing_ranges(readme, recipe) == ["30.89-35.73", "19.98-23.95"]


def test_the_readme_quotes_the_main_jobs_ranges():
    recipe = (REPO / "recipes" / "mini_tts" / "README.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(main_job_ranges(recipe)) >= 2  # the rows are found, so a pass compares something
    assert missing_ranges(readme, recipe) == []
