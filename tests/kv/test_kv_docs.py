"""
examples/kv/README.md's hand-run cluster and its `KVClient` program run as written.

The blocks marked ``<!-- runs: tests/kv/test_kv_docs.py ... -->`` are what a newcomer types:
the shell ones run in one bash script (free ports for 7001-7003, a temporary ``./data``,
this interpreter as ``python``); the Python one against a running cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from examples._process import free_port
from tests.kv._kv import ROOT, running_cluster

README = ROOT / "examples" / "kv" / "README.md"
BLOCK = re.compile(
    r"<!-- runs: tests/kv/test_kv_docs\.py[^>]*-->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S
)
PORTS = ("7001", "7002", "7003")
ACTIVATE = ". .venv/bin/activate\n"


def blocks(lang: str) -> list[str]:
    """The README's marked blocks in `lang`, in page order."""
    text = README.read_text(encoding="utf-8")
    return [match["code"] for match in BLOCK.finditer(text) if match["lang"] == lang]


def test_the_readme_marks_its_runnable_blocks() -> None:
    """The pattern finds the two shell blocks and the program (a broken one tests nothing)."""
    assert len(blocks("sh")) == 2
    assert len(blocks("python")) == 1
    assert blocks("sh")[0].startswith(ACTIVATE)


def with_free_ports(code: str, ports: list[int]) -> str:
    for documented, port in zip(PORTS, ports, strict=True):
        code = code.replace(documented, str(port))
    return code


def test_the_hand_run_cluster_works_as_written(tmp_path: Path) -> None:
    """Three nodes started as the README says serve put/get/curl, survive one SIGKILL,
    refuse with a 503 after a second, and the last one stops cleanly."""
    bin_dir = tmp_path / "bin"  # `python` runs this interpreter, in place of .venv's
    bin_dir.mkdir()
    # A script, not a symlink: a venv's python linked from elsewhere loses its venv.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    script = with_free_ports("".join(blocks("sh")), [free_port() for _ in PORTS])
    script = script.replace(ACTIVATE, "").replace("./data/", f"{tmp_path}/data/")
    # Whatever fails midway, no node outlives the script.
    script = "trap 'kill -9 $(jobs -p) 2>/dev/null' EXIT\n" + script
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    shell = subprocess.Popen(
        ["/bin/bash", "-c", script], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = shell.communicate(timeout=120)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.communicate()
    assert shell.returncode == 0, err[-3000:]
    assert re.search(r"^\d+\.\d+\.n1$", out, re.M), out  # put prints the version
    assert out.count("hello\n") == 2, out  # from n3, then from n1 with n2 killed
    assert re.search(r"^\d+\.\d+\.n3$", out, re.M), out  # the write with n2 down
    assert '"members"' in out  # curl /cluster
    assert "kv get: 503: read quorum not met: 1 of this key's replicas" in err, err[-3000:]
    assert "kv node n1 stopped" in out  # SIGTERM: a clean stop


@pytest.mark.filterwarnings("error")
def test_the_client_program_runs_as_written(tmp_path: Path) -> None:
    """The KVClient program, against a real cluster, prints what its comments say."""
    with running_cluster(tmp_path, ["n1", "n2", "n3"]) as cluster:
        ports = [cluster.ports[node] for node in ("n1", "n2", "n3")]
        code = with_free_ports(blocks("python")[0], ports)
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "True",
        "None",
        "400 ?w='4': must be an integer from 1 to 3",
    ]
