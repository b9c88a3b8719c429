"""Options generated from config dataclasses; the entry point imports only what it runs."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from asr.cli.main import main
from asr.cli.options import add_dataclass_arguments, attribute_docs, dataclass_from_args
from asr.serve.config import ServerConfig


def test_every_server_setting_is_a_flag_with_its_default_and_doc():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, ServerConfig)
    defaults = parser.parse_args([])
    assert dataclass_from_args(ServerConfig, defaults) == ServerConfig()
    docs = attribute_docs(ServerConfig)
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    for f in dataclasses.fields(ServerConfig):
        assert docs[f.name] and helps[f.name].startswith(docs[f.name])
    args = parser.parse_args(["--port", "0", "--max-connections", "3", "--idle-timeout", "1.5"])
    config = dataclass_from_args(ServerConfig, args)
    assert (config.port, config.max_connections, config.idle_timeout) == (0, 3, 1.5)
    with pytest.raises(ValueError, match="port"):
        dataclass_from_args(ServerConfig, parser.parse_args(["--port", "70000"]))


def test_help_and_version_import_no_subcommand():
    code = ("import sys; from asr.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('asr.cli.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "['asr.cli.main']"
    assert "decode" in out and "export-package" in out
    version = subprocess.run([sys.executable, "-m", "asr.cli.main", "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("asr 0.")


def test_log_level_is_accepted_after_the_subcommand(tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("u1 A B\n")
    hyp.write_text("u1 A C\n")
    assert main(["wer", str(ref), str(hyp), "--log-level", "DEBUG"]) == 0
