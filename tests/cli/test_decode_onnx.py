"""``asr export-onnx`` + ``asr decode-onnx`` on the tiny trained experiment: sherpa-onnx test-set
results in ``asr decode``'s files, and the CTC hypotheses equal ``asr decode``'s."""

from __future__ import annotations

import gzip
from pathlib import Path

from asr.cli.main import main

PART = "test-clean"


def _hyps(path) -> list[str]:
    return [line.split("hyp=", 1)[1] for line in path.read_text().splitlines() if "\thyp=" in line]


def test_sherpa_onnx_test_set_wer(trained, tiny_corpus, tmp_path, capsys, caplog):
    package = tmp_path / "package"
    assert main(["export-package", "--exp-dir", str(trained), "--checkpoint",
                 str(trained / "epoch-2.pt"), "--output-dir", str(package)]) == 0
    # features from the audio, as sherpa-onnx computes them: the tiny model's best two CTC
    # log-probabilities can be within 1e-3 of each other, closer than the stored (lilcom) features
    # are to the audio's, so ours from stored features may differ by a repeated letter
    assert main(["decode", "--exp-dir", str(trained), "--checkpoint", str(trained / "epoch-2.pt"),
                 "--searcher", "ctc_greedy", "--parts", PART,
                 "--set", "data.on_the_fly_feats=true"]) == 0
    for name, options in {"ctc": ["--head", "ctc"], "streaming": ["--streaming", "--int8"]}.items():
        assert main(["export-onnx", "--model", str(package), "--output-dir", str(tmp_path / name),
                     *options]) == 0
    capsys.readouterr()
    manifests = str(tiny_corpus / "fbank")
    assert main(["decode-onnx", "--onnx-dir", str(tmp_path / "ctc"), "--manifest-dir", manifests,
                 "--parts", PART]) == 0
    assert main(["decode-onnx", "--onnx-dir", str(tmp_path / "streaming"), "--int8",
                 "--manifest-dir", manifests, "--parts", PART, "--output-dir", str(tmp_path)]) == 0
    summaries = capsys.readouterr().out.split()
    assert summaries == [
        str(tmp_path / "ctc" / f"wer-summary-{PART}-sherpa-onnx-ctc.txt"),
        str(tmp_path / f"wer-summary-{PART}-sherpa-onnx-streaming-transducer-int8.txt")]
    # the same export with the other search, into the same directory: files of its own, and
    # each summary names its method (before, the second run replaced the first's files)
    assert main(["decode-onnx", "--onnx-dir", str(tmp_path / "streaming"), "--int8",
                 "--manifest-dir", manifests, "--parts", PART, "--output-dir", str(tmp_path),
                 "--decoding-method", "modified_beam_search", "--max-active-paths", "3"]) == 0
    beam = tmp_path / (f"wer-summary-{PART}-sherpa-onnx-streaming-transducer-int8"
                       "-modified-beam-search.txt")
    assert capsys.readouterr().out.split() == [str(beam)]
    assert "method-modified_beam_search_max_active_paths-3" in beam.read_text()
    assert "_method-greedy_search\t" in Path(summaries[1]).read_text()  # still there
    ours = _hyps(trained / "ctc_greedy" / f"recogs-{PART}-ctc_greedy.txt")
    theirs = _hyps(tmp_path / "ctc" / f"recogs-{PART}-sherpa-onnx-ctc.txt")
    assert len(ours) == 4 and theirs == ours
    assert main(["decode-onnx", "--onnx-dir", str(tmp_path / "ctc"), "--int8",
                 "--manifest-dir", manifests]) == 2  # exported without --int8
    # a test set that repeats a cut id (decoded and scored twice): refused, nothing written
    lines = gzip.open(tiny_corpus / "fbank" / f"librispeech_cuts_{PART}.jsonl.gz").readlines()
    (tmp_path / "dup").mkdir()
    with gzip.open(tmp_path / "dup" / f"librispeech_cuts_{PART}.jsonl.gz", "wb") as f:
        f.writelines([*lines, lines[-1]])
    assert main(["decode-onnx", "--onnx-dir", str(tmp_path / "ctc"), "--manifest-dir",
                 str(tmp_path / "dup"), "--parts", PART, "--output-dir",
                 str(tmp_path / "dup-out")]) == 2
    assert f"occurs twice in an evaluation set: lines {len(lines)} and {len(lines) + 1}" \
        in caplog.text
    assert not (tmp_path / "dup-out").exists()
