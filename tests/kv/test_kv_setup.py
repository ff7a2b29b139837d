"""
What a newcomer meets before a cluster serves: a missing extra, an unreachable etcd.

Each answer is one line on stderr that says what to do, never a traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import examples.kv
from tests._run import python
from tests.kv._kv import TOKEN

# Runs examples.kv as `python -m` does, with aiohttp made unimportable (as in an
# interpreter without the kv extra): None in sys.modules makes `import aiohttp` fail.
WITHOUT_AIOHTTP = (
    "import runpy, sys\n"
    "sys.modules['aiohttp'] = None\n"
    "sys.argv = ['examples.kv', *sys.argv[1:]]\n"
    "runpy.run_module('examples.kv', run_name='__main__', alter_sys=True)\n"
)


def test_the_cli_without_the_kv_extra_says_which_extra_to_install() -> None:
    """`python -m examples.kv` where aiohttp is missing: one line naming the extra."""
    done = python("-c", WITHOUT_AIOHTTP, "get", "k", "--node", "127.0.0.1:1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs the kv extra ('aiohttp' is not installed)" in lines[0]
    assert "pip install -e '.[kv]'" in lines[0]


def test_importing_the_client_without_the_kv_extra_names_the_extra() -> None:
    """`from examples.kv import KVClient` fails with an ImportError naming the extra."""
    code = (
        "import sys\nsys.modules['aiohttp'] = None\n"
        "try:\n    from examples.kv import KVClient\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = python("-c", code)
    assert done.returncode == 0, done.stderr
    assert "examples.kv needs the kv extra ('aiohttp' is not installed)" in done.stdout


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    """The lazy loading covers the client's names only."""
    with pytest.raises(AttributeError, match="nothing"):
        _ = examples.kv.nothing


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_node_that_cannot_reach_etcd_says_where_it_looked(
    tmp_path: Path, closed_port: int
) -> None:
    """--discovery pointing where no etcd runs: exit 1, one line naming the address."""
    with socket.socket() as own:
        own.bind(("127.0.0.1", 0))
        port = own.getsockname()[1]
    done = python(
        "-m", "examples.kv", "node", "--id", "n1", "--port", str(port),
        "--data-dir", str(tmp_path), "--discovery", f"etcd://127.0.0.1:{closed_port}",
        env={"KV_CLUSTER_TOKEN": TOKEN},
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot join the cluster through etcd at http://127.0.0.1:{closed_port}" in lines[0]
    assert "is etcd running there?" in lines[0]
    assert "ConnectionKey(" not in lines[0]  # text, not nested reprs
