"""The suite's failure report shows what a failed ``check=True`` subprocess printed."""

from __future__ import annotations

from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_failed_checked_subprocess_reports_its_captured_output(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_fails():
            subprocess.run([sys.executable, "-c",
                            "import sys; print('OUT-MARK'); sys.stderr.write('ERR-MARK'); sys.exit(3)"],
                           check=True, capture_output=True)

        def test_fails_in_text_mode():
            subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('TXT-MARK'); sys.exit(1)"],
                           check=True, capture_output=True, text=True)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*Captured stdout of the failed subprocess*", "OUT-MARK",
        "*Captured stderr of the failed subprocess*", "ERR-MARK",
    ])
    result.stdout.fnmatch_lines(["*Captured stderr of the failed subprocess*", "TXT-MARK"])
