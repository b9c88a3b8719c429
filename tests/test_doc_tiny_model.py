"""The README's tiny-model command: the ``python -c "..."`` line it gives prints the package of
:func:`asr.testing.packages.trained_tiny_package`, and the folder it says the wavs are left in is
that package's experiment folder's ``wavs`` (the folder ``train_tiny_experiment`` writes them
to), so a changed default (``head``, ``steps``) or folder name cannot leave the README behind.
Training and export are replaced by fakes that record where they were asked to write."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import asr.testing.packages as packages

REPO = Path(__file__).resolve().parents[1]


def _readme_tiny_command(text: str) -> tuple[str, str]:
    """(the Python code of the README's tiny-model ``python -c``, the wavs folder it names)."""
    [code] = re.findall(r'`python -c "([^"`]*trained_tiny_package[^"`]*)"`', text)
    [wavs] = re.findall(r"`(exp/tiny/[^`]*/wavs)`", text)
    return code, wavs


def _mismatches(text: str, tmp_path: Path, monkeypatch, capsys) -> list[str]:
    """What ``text``'s tiny-model command and wavs folder get wrong (none: nothing)."""
    code, wavs = _readme_tiny_command(text)
    asked: list[Path] = []

    def fake_train(work_dir, sentences, head, steps):
        asked.append(Path(work_dir))
        return SimpleNamespace(exp_dir=Path(work_dir) / "exp", wavs=(), texts=())

    monkeypatch.setattr(packages, "train_tiny_experiment", fake_train)
    monkeypatch.setattr(packages, "export_package", lambda *args, **kwargs: None)
    monkeypatch.setattr(packages, "_CACHE", {})
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own command
    printed = capsys.readouterr().out.strip()
    [work_dir] = asked
    wrong = []
    if Path(printed) != work_dir / "package":
        wrong.append(f"prints {printed}, not {work_dir / 'package'}")
    if Path(wavs) != work_dir / "wavs":
        wrong.append(f"wavs {wavs}, not {work_dir / 'wavs'}")
    return wrong


def test_the_readme_names_the_tiny_models_package_and_wavs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert _mismatches(text, tmp_path, monkeypatch, capsys) == []


def test_a_stale_wavs_folder_is_caught(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    stale = text.replace("exp/tiny/tiny_ctc_300/wavs", "exp/tiny/tiny_ctc_100/wavs")
    assert stale != text
    assert _mismatches(stale, tmp_path, monkeypatch, capsys) == [
        f"wavs exp/tiny/tiny_ctc_100/wavs, not {Path('exp/tiny/tiny_ctc_300/wavs')}"]
