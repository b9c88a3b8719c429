"""Environment record and markdown summary of ``tools/gpu_check.sh`` (see docs/gpu.md).

    python tools/bench/gpu_summary.py env OUT_DIR MODE     # writes OUT_DIR/env.json
    python tools/bench/gpu_summary.py summary OUT_DIR      # writes and prints OUT_DIR/summary.md

``summary`` reads what the steps left in OUT_DIR: ``steps.tsv`` (one line per step: name,
status, seconds, exit code), ``pytest.xml`` (JUnit), ``gpu_tests.jsonl`` (the values the GPU tests
recorded), the step tables ``rnnt_loss.md``, ``train_throughput.md``, ``decode.md``, and the
logs of failed steps; a missing piece is reported as missing. Only the standard library is used
here, and torch only inside ``env`` (whose failure is recorded, not raised), so the summary is
written whatever else broke.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: step name in steps.tsv -> (section title, table file).
STEPS = {
    "tests": ("1. Tests on the GPU (`pytest -m gpu`)", None),
    "rnnt_loss": ("2. Pruned RNN-T loss (Triton) vs torchaudio's full loss", "rnnt_loss.md"),
    "train_throughput": ("3. Training throughput, LibriSpeech M pruned-transducer recipe",
                         "train_throughput.md"),
    "decode": ("4. Decoding RTFx, batched greedy search", "decode.md"),
}


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environment(out_dir: Path, mode: str) -> dict:
    """What ran where: date, GPU and driver (nvidia-smi), Python, torch, torchaudio, triton."""
    env: dict[str, str] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    env["checkout"] = commit or "not a git checkout"
    smi = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader"])
    env["nvidia-smi"] = smi.replace("\n", "; ") if smi else "not available"
    full_smi = _run(["nvidia-smi"])
    if full_smi:
        (out_dir / "nvidia-smi.txt").write_text(full_smi + "\n", encoding="utf-8")
    for module in ("torch", "torchaudio", "triton"):
        try:
            env[module] = __import__(module).__version__
        except Exception as err:  # noqa: BLE001 - recorded, the check goes on
            env[module] = f"import failed: {type(err).__name__}: {err}"[:200]
    try:
        import torch

        env["torch CUDA"] = str(torch.version.cuda)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["device"] = (f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                             f"compute capability {props.major}.{props.minor}, "
                             f"{torch.cuda.device_count()} visible")
        else:
            env["device"] = "no CUDA device visible to torch"
    except Exception as err:  # noqa: BLE001
        env["device"] = f"unknown ({type(err).__name__})"
    (out_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    return env


def _steps(out_dir: Path) -> list[dict]:
    path = out_dir / "steps.tsv"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, status, seconds, rc = (line.split("\t") + ["", "", ""])[:4]
            rows.append({"name": name, "status": status, "seconds": seconds, "rc": rc})
    return rows


def _pytest(out_dir: Path) -> list[str]:
    """Counts, failures and the slowest tests from the JUnit file."""
    path = out_dir / "pytest.xml"
    if not path.is_file():
        return ["No JUnit report (pytest.xml): the test step did not run to its end."]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return [f"pytest.xml unreadable: {err}"]
    cases = root.iter("testcase")
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures, rows = [], []
    for case in cases:
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "").strip().splitlines()
                if outcome != "skipped":
                    failures.append(f"- `{test}`: {message[0][:300] if message else outcome}")
                elif not any("needs CUDA" in m for m in message[:1]):
                    rows.append((test, "skipped: " + (message[0][:120] if message else "")))
        counts[outcome] += 1
        if outcome != "skipped":
            rows.append((test, f"{outcome}, {float(case.get('time', 0)):.1f} s"))
    lines = [", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests ran", ""]
    if failures:
        lines += ["Failures:", ""] + failures + [""]
    lines += ["| test | outcome |", "|---|---|"]
    lines += [f"| `{t}` | {o} |" for t, o in rows]
    return lines


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _records(out_dir: Path) -> list[str]:
    path = out_dir / "gpu_tests.jsonl"
    if not path.is_file():
        return []
    lines = ["", "Measured by the tests (differences are max |a - b| scaled by max(1, |reference|) "
             "unless named otherwise):", "", "| test | values |", "|---|---|"]
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        test = row.pop("test", "?").split("::")[-1]
        lines.append(f"| `{test}` | " + "; ".join(f"{k} {_format(v)}" for k, v in row.items())
                     + " |")
    return lines


def _log_tail(out_dir: Path, name: str, count: int = 15) -> list[str]:
    path = out_dir / "logs" / f"{name}.log"
    if not path.is_file():
        return []
    tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:]
    return ["", f"Last lines of logs/{name}.log:", "", "```"] + tail + ["```"]


def summary(out_dir: Path) -> str:
    env_path = out_dir / "env.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else {}
    steps = _steps(out_dir)
    title = env.get("device", "unknown device")
    mode = env.get("mode", "?")
    lines = [f"# GPU check ({mode}): {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in steps]
    status = {s["name"]: s for s in steps}
    for name, (heading, table) in STEPS.items():
        lines += ["", f"## {heading}", ""]
        step = status.get(name)
        if step is None:
            lines.append("Not run.")
            continue
        if step["status"] != "ok":
            lines.append(f"Step {step['status']} (exit code {step['rc']}, {step['seconds']} s); "
                         "what it wrote before that follows.")
            lines.append("")
        if name == "tests":
            lines += _pytest(out_dir) + _records(out_dir)
        elif table and (out_dir / table).is_file():
            lines += (out_dir / table).read_text(encoding="utf-8").rstrip().splitlines()
        else:
            lines.append(f"No table ({table} missing).")
        if step["status"] != "ok":
            lines += _log_tail(out_dir, name)
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) < 2 or argv[0] not in ("env", "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    if argv[0] == "env":
        env = environment(out_dir, argv[2] if len(argv) > 2 else "?")
        for key, value in env.items():
            print(f"{key}: {value}")
        return 0
    print(summary(out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
