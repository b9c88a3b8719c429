"""The README's mini_tts results quote ``recipes/mini_tts/README.md``, where each recorded run of
the main job widens its rows' ranges: every test-clean WER range of the main job's rows there
(greedy, beam + LM; one row per machine) is in the README too, so a run recorded in the recipe
README cannot leave the README's figures behind; and the number of runs either README gives
with those ranges (``twelve runs: 20.10-24.94``, ``Twelve runs of the current recipe``) is a
row's count (``12 runs of the current recipe``), so it cannot fall behind either."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_MAIN_JOB_ROW = "| `transformer_transducer` (main job)"
_RANGE = r"\d+\.\d+-\d+\.\d+"
#: Run counts as the READMEs write them in words.
_NUMBERS = {word: n for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}


def main_job_ranges(recipe_readme: str) -> list[str]:
    """The greedy and beam + LM test-clean cells (``28.66-32.01``) of the main job's rows."""
    ranges = []
    for line in recipe_readme.splitlines():
        if line.startswith(_MAIN_JOB_ROW):
            cells = [cell.strip().strip("*") for cell in line.split("|")[2:4]]
            ranges += [cell for cell in cells if re.fullmatch(_RANGE, cell)]
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


def main_job_runs(recipe_readme: str) -> dict[str, int]:
    """Each test-clean range of the main job's rows -> the number of runs its row gives
    (``12 runs of the current recipe``)."""
    runs = {}
    for line in recipe_readme.splitlines():
        count = re.search(r"(\d+) runs of the current recipe", line)
        if line.startswith(_MAIN_JOB_ROW) and count:
            for cell in line.split("|")[2:4]:
                if re.fullmatch(_RANGE, cell.strip().strip("*")):
                    runs[cell.strip().strip("*")] = int(count.group(1))
    return runs


def _count(word: str) -> int | None:
    return int(word) if word.isdigit() else _NUMBERS.get(word.lower())


def run_counts(text: str, runs: dict[str, int]) -> list[tuple[str, bool]]:
    """(phrase, whether a main-job row gives it) for each run count of ``text`` outside the
    rows: ``N runs: RANGE`` must be RANGE's row's count (a RANGE that is no row's is stale:
    a run recorded since widened the row), ``N runs of the current recipe`` one row's count."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith(_MAIN_JOB_ROW))
    counts = [(m.group(0), runs.get(m.group(2)) == _count(m.group(1)))
              for m in re.finditer(rf"\b(\w+) runs: ({_RANGE})", text)]
    counts += [(m.group(0), _count(m.group(1)) in runs.values())
               for m in re.finditer(r"\b(\w+) runs of the current recipe", text)]
    return counts


def miscounted_runs(text: str, runs: dict[str, int]) -> list[str]:
    """The run counts of ``text`` that no main-job row gives (:func:`run_counts`)."""
    return [phrase for phrase, right in run_counts(text, runs) if not right]


def test_a_stale_run_count_is_caught():
    recipe = ("| `transformer_transducer` (main job), Intel | 28.29-32.01 | **20.10-24.94** | "
              "12 runs of the current recipe |\n"
              "| `transformer_transducer` (main job), AMD | 29.90-35.73 | 19.73-23.95 | "
              "7 runs of the current recipe |\n")
    text = ("Eleven runs of the current recipe on Intel; noise (eleven runs: 20.10-24.94), "
            "(7 runs: 19.73-23.95), seven runs of the current recipe, (twelve runs: "
            "20.10-24.50: a range the 12th run widened).")
    assert miscounted_runs(text, main_job_runs(recipe)) == [
        "eleven runs: 20.10-24.94", "twelve runs: 20.10-24.50",
        "Eleven runs of the current recipe"]
    assert miscounted_runs(recipe, main_job_runs(recipe)) == []  # the rows are no count


@pytest.mark.parametrize("doc", ["README.md", "recipes/mini_tts/README.md"])
def test_the_run_counts_are_the_rows(doc):
    runs = main_job_runs((REPO / "recipes" / "mini_tts" / "README.md").read_text(encoding="utf-8"))
    assert len(runs) >= 4  # the rows' counts are found, so a pass compares something
    counts = run_counts((REPO / doc).read_text(encoding="utf-8"), runs)
    assert counts  # the doc's counts are found, so a pass compares something
    assert [phrase for phrase, right in counts if not right] == []
