"""An ``asr`` command whose imports are done once, for the recipe scripts' tests.

The scripts' checks before their first stage run the real ``asr`` (``asr train --check-only``,
``asr bpe --check-only``), and every such start imported torch again: 4-5 s of CPU on the shared
2-core machine, over 60 starts in tests/egs. Here one server process imports ``asr`` and the
subcommands' modules once; each ``asr`` call of a script is a small client that hands the server
its argument list, working directory, environment and standard streams (the file descriptors
themselves), and the server forks a child that runs :func:`asr.cli.main.main` with them, exactly
as the console script would, and exits with its status, which the client exits with. Every call
runs in a fresh fork of the same imported state, so no call sees what an earlier one changed.

``python preloaded_asr.py serve SOCKET`` runs the server (it creates SOCKET once its imports are
done); ``python preloaded_asr.py call SOCKET ARG...`` is the client (:func:`write_venv` writes a
venv whose ``bin/asr`` runs it and whose other programs are the real venv's).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

#: the subcommands the scripts run, whose modules (torch, lhotse) the server imports at start
PRELOADED = ("train", "bpe", "decode", "average")
#: the programs of the stand-in venv that are the real venv's own
PROGRAMS = ("python", "lhotse", "torchrun")
_HEADER = struct.Struct("!Q")


def _read_message(conn: socket.socket) -> tuple[dict, list[int]]:
    """One length-prefixed JSON message from ``conn`` and the descriptors sent with it."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < _HEADER.size or len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("asr client closed the connection mid-message")
        data += more
    size = _HEADER.unpack_from(data)[0]
    return json.loads(data[_HEADER.size:_HEADER.size + size]), fds


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's ``asr`` process and run the command."""
    from asr.cli.main import main

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["program"], *request["argv"]]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        status = main(request["argv"])
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _serve_one(conn: socket.socket) -> None:
    """Forks a child for the request on ``conn`` and sends back its exit status."""
    with conn:
        request, fds = _read_message(conn)
        pid = os.fork()
        if pid == 0:
            try:
                _run_child(request, fds)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        conn.sendall(_HEADER.pack(os.waitstatus_to_exitcode(status) & 0xFFFFFFFF))


def serve(path: str) -> None:
    """Imports the subcommands, then serves calls on the Unix socket ``path`` until killed."""
    from asr.cli.main import build_parser

    for command in PRELOADED:
        build_parser(command)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(16)
    os.rename(path + ".tmp", path)  # the socket appears once it is served
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def call(path: str, argv: list[str]) -> int:
    """The client: runs ``asr ARGV`` in the server at ``path``; returns its exit status."""
    request = {"program": sys.argv[0], "argv": argv, "cwd": os.getcwd(),
               "env": dict(os.environ)}
    payload = json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        socket.send_fds(conn, [_HEADER.pack(len(payload)) + payload], [0, 1, 2])
        reply = b""
        while len(reply) < _HEADER.size:
            more = conn.recv(_HEADER.size - len(reply))
            if not more:
                print(f"{__file__}: the asr server at {path} ended before answering",
                      file=sys.stderr)
                return 70
            reply += more
    status = _HEADER.unpack(reply)[0]
    if status >= 1 << 31:  # killed by a signal: -signal, as the shell reports it
        return 128 + ((1 << 32) - status)
    return status


def write_venv(venv: Path, socket_path: Path, real_venv: Path) -> None:
    """Writes the stand-in venv ``venv``: ``bin/asr`` calls the server at ``socket_path``;
    :data:`PROGRAMS` run the real venv's (``real_venv``)."""
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {"asr": f"exec {shlex.quote(sys.executable)} {shlex.quote(__file__)} call "
                      f"{shlex.quote(str(socket_path))} \"$@\""}
    for program in PROGRAMS:
        scripts[program] = f"exec {shlex.quote(str(real_venv / 'bin' / program))} \"$@\""
    for name, line in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{line}\n")
        (bin_dir / name).chmod(0o755)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(call(sys.argv[2], sys.argv[3:]))
