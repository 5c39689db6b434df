"""The machine the developer tools run on: OS packages and free loopback ports.

Shared by the throwaway servers of the test suite and the benchmarks
(`benchmarks.pg_cluster`, ``tests/nginx_server.py``). Imports nothing from
``mcp_tasks``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys


def apt_install(package: str) -> bool:
    """Install one OS package with ``apt-get`` if we are root; True on success.

    Runs ``apt-get update`` once and tries again when the first attempt fails
    (a fresh machine has no package lists). False, and nothing tried, when we
    are not root or there is no ``apt-get``.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False

    print(f"{package} not found; running apt-get install {package}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if _quiet(install, env) == 0:
        return True
    _quiet(["apt-get", "update", "-q"], env)
    return _quiet(install, env) == 0


def _quiet(argv: list[str], env: dict[str, str]) -> int:
    out = subprocess.DEVNULL
    return subprocess.run(argv, env=env, stdout=out, stderr=out, check=False).returncode


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
