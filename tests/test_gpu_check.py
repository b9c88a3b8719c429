"""tools/gpu_check.sh: the dry run passes on a Python that looks like the GPU machine's.

The dry run runs every step of the GPU check on the CPU at tiny sizes (the gpu tests with the
CPU as their device, Triton in its interpreter). ``tools/bench/bare_machine`` hides every
installed module that the GPU machine lacks (it has torch, torchaudio, triton, numpy,
sentencepiece, safetensors, tensorboard, plus the wheels of tools/gpu_check_wheels.txt), so a
passing dry run also shows that the check imports nothing else (no lhotse, scipy, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
STEPS = ["env", "deps", "tests", "rnnt_loss", "train_throughput", "decode"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASR_GPU", "TRITON_"))}
    env.pop("OUT", None)
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT / "tools" / "bench" / "bare_machine"))
    env.update(extra)
    return env


def test_dry_run_on_a_bare_machine_writes_every_table(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=400)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == STEPS, report
    assert all(s[1] == "ok" for s in steps), steps

    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check (dry-run)")
    for heading in ("## 1. Tests", "## 2. Pruned RNN-T", "## 3. Training throughput",
                    "## 4. Decoding RTFx"):
        assert heading in summary, heading
    assert "failed" not in summary.split("## 1.")[1].split("## 2.")[0], summary
    assert " passed" in summary and "test_compiled_kernels_equal_torch_reference" in summary
    records = (out / "gpu_tests.jsonl").read_text().splitlines()
    assert len(records) >= 15  # every gpu test recorded what it measured
    rnnt = (out / "rnnt_loss.md").read_text()
    assert "| 500 | full |" in rnnt and "| 500 | pruned |" in rnnt and "Goal at V=500" in rnnt
    for row in ("| 500 | tdt |", "| 500 | tdt_triton (interpreter) |", "| 500 | pruned_tdt |"):
        assert row in rnnt, row
    # the TDT rows: the torch backend and the Triton kernel (interpreted on this CPU, and said
    # so in the table and the printed rows) compute the same loss on the same inputs
    losses = {cells[2].strip(): float(cells[-2]) for cells in
              (line.split("|") for line in rnnt.splitlines() if line.startswith("| 500 |"))}
    tdt, triton = losses["tdt"], losses["tdt_triton (interpreter)"]
    assert abs(tdt - triton) <= 1e-4 * abs(tdt), losses
    assert "not a speed" in rnnt
    printed = (out / "logs" / "rnnt_loss.log").read_text().splitlines()
    assert [line.rstrip().endswith("(interpreter)") for line in printed
            if line.split()[:2] == ["500", "tdt_triton"]] == [True], printed
    _assert_rnnt_bench_rows(printed)
    train = (out / "train_throughput.md").read_text()
    assert "| float16" in train and "| bfloat16 |" in train
    assert "Largest max_duration whose worst-case batch trains (bfloat16): 9 s" in train
    decode = (out / "decode.md").read_text()
    for row in ("| RNN-T greedy |", "| TDT greedy |", "| CTC greedy |"):
        assert row in decode
    assert proc.stdout.rstrip().endswith("summary.md"), "the summary is printed at the end"


def _assert_rnnt_bench_rows(printed: list[str]) -> None:
    """tools/bench/rnnt_loss.py's printed table of the dry run (every method, a band of R=5 <
    U+1=9 symbols): a row per method with its time and allocator peak, the ratios against the
    full loss, pruned losses that allocate less than their full ones, and the bench's check that
    each pruned term, whose band leaves paths out, is at least its full loss."""
    table = [row for row in (line.split() for line in printed) if row[:1] == ["500"]]
    # one row per method, in order (a dict of the rows would hide a method printed twice)
    assert [row[1] for row in table] == ["full", "pruned", "tdt", "tdt_triton", "pruned_tdt"], (
        printed)
    rows = {row[1]: row for row in table}
    for row in rows.values():
        seconds, peak_mb = float(row[2]), float(row[3])
        assert seconds > 0 and peak_mb > 0, printed
    assert float(rows["full"][5]) == 1.0 and float(rows["full"][6]) == 1.0
    peak = {method: float(row[3]) for method, row in rows.items()}
    assert peak["pruned"] < peak["full"], "pruned must allocate less than full"
    assert peak["pruned_tdt"] < peak["tdt"], "pruned TDT must allocate less than TDT"
    checks = [line for line in printed if line.startswith("check at V=500: ")]
    assert len(checks) == 2, printed
    assert all("(R=5 < U+1=9: the band leaves paths out): holds" in line for line in checks)


def test_a_failing_step_is_recorded_and_the_next_steps_run(tmp_path):
    """--deps-only with a wheel folder that is empty and modules forced to be installed: the
    deps step fails, the summary of what ran is still written, the exit code says so."""
    out = tmp_path / "out"
    env = _env(ASR_GPU_CHECK_FORCE_WHEELS="1", ASR_GPU_WHEELS=str(tmp_path / "no_wheels"))
    proc = subprocess.run(["bash", str(SCRIPT), "--deps-only", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines())
    assert steps == {"env": "ok", "deps": "failed"}
    log = (out / "logs" / "deps.log").read_text()
    assert "run 'bash tools/gpu_check.sh --prepare' where PyPI is reachable and carry" in log, log
    assert "No such file" not in log and "not found" not in log, log


def test_a_rerun_into_the_same_folder_leaves_no_earlier_output(tmp_path):
    """A step that is skipped, times out or fails before writing its table must not leave the
    previous run's table, log or environment in the folder: the summary would show them as
    this run's."""
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    stale = ["env.json", "nvidia-smi.txt", "rnnt_loss.md", "train_throughput.md",
             "train_throughput.json", "decode.md", "logs/tests.log", "logs/decode.log"]
    for name in stale:
        (out / name).write_text("from an earlier run\n")
    env = _env(ASR_GPU_CHECK_FORCE_WHEELS="1", ASR_GPU_WHEELS=str(tmp_path / "no_wheels"))
    proc = subprocess.run(["bash", str(SCRIPT), "--deps-only", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    left = [name for name in stale if (out / name).is_file()
            and (out / name).read_text() == "from an earlier run\n"]
    assert left == [], left
    assert "from an earlier run" not in (out / "env.json").read_text()


def _python312() -> str | None:
    """A CPython 3.12 that runs (a pyenv shim may exist without its version)."""
    for candidate in (str(Path.home() / ".pyenv/versions/3.12.1/bin/python"), "python3.12"):
        found = shutil.which(candidate)
        if found and subprocess.run(
            [found, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
            capture_output=True, check=False,
        ).returncode == 0:
            return found
    return None


PYTHON312 = _python312()


@pytest.mark.skipif(not list((ROOT / "tools" / "gpu_wheels").glob("*.whl")) or not PYTHON312,
                    reason="needs prepared wheels (tools/gpu_check.sh --prepare) and a python3.12")
def test_prepared_wheels_install_without_an_index_on_python312(tmp_path):
    """What the GPU machine does with the carried wheels, on a Python 3.12 without them."""
    wheels = tmp_path / "wheels"
    shutil.copytree(ROOT / "tools" / "gpu_wheels", wheels, ignore=shutil.ignore_patterns("site"))
    env = _env(PYTHON=PYTHON312, ASR_GPU_WHEELS=str(wheels), PYTHONPATH="")
    proc = subprocess.run(["bash", str(SCRIPT), "--deps-only", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed into" in proc.stdout
    check = subprocess.run(
        [PYTHON312, "-c", "import yaml, tqdm, pytest, pytest_timeout; print(yaml.__file__)"],
        env=dict(env, PYTHONPATH=str(wheels / "site")), capture_output=True, text=True,
    )
    assert check.returncode == 0 and str(wheels / "site") in check.stdout, check.stderr


@pytest.mark.slow
def test_prepare_downloads_small_py312_wheels(tmp_path):
    """Needs PyPI: the wheel list resolves for CPython 3.12 manylinux and stays small."""
    wheels = tmp_path / "wheels"
    proc = subprocess.run(["bash", str(SCRIPT), "--prepare"], cwd=ROOT, timeout=600,
                          env=_env(ASR_GPU_WHEELS=str(wheels), PYTHONPATH=""),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith("pyyaml-") and "cp312" in n for n in names), names
    assert sum(p.stat().st_size for p in wheels.glob("*.whl")) < 8 * 2**20
    assert "total" in (wheels / "MANIFEST.txt").read_text()


def test_summary_help_exits_zero_and_bad_use_exits_two(tmp_path):
    script = str(ROOT / "tools" / "bench" / "gpu_summary.py")
    for flag in ("-h", "--help"):
        proc = subprocess.run([sys.executable, script, flag], capture_output=True, text=True)
        assert proc.returncode == 0 and "summary OUT_DIR" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, script, "bogus", str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "summary OUT_DIR" in proc.stderr


def test_the_bare_machine_lists_no_pytest_plugin_the_gpu_machine_lacks():
    """pytest loads every installed plugin's entry point: under the bare machine, a plugin that is
    installed here but not there (pytest-xdist, a dev dependency) is not listed, so the dry run's
    pytest does not fail importing it; the check's own plugin (pytest-timeout) still is."""
    import importlib.metadata

    listed = {ep.name for dist in importlib.metadata.distributions()
              for ep in dist.entry_points if ep.group == "pytest11"}
    assert {"xdist", "timeout"} <= listed, "this environment should hold both plugins"
    code = ("import importlib.metadata as m; print(sorted({ep.name for d in m.distributions() "
            "for ep in d.entry_points if ep.group == 'pytest11'}))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "['timeout']"
