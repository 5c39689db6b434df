"""``scripts/conformance`` finds a Node >= 22 on any POSIX machine, or says what it needs.

The script runs from a copy in a temporary checkout layout, with fake
``node`` programs that report a chosen major version, so which binary it picks
does not depend on what this machine has installed. ``--node`` prints the
choice and exits before anything is started.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "conformance"
HARNESS = "node_modules/@modelcontextprotocol/conformance/dist/index.js"


def this_platform() -> str:
    """The ``node-<os>-<arch>`` suffix npm uses for this machine."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), "other")
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{arch}"


def fake_node(path: Path, major: int) -> Path:
    """A ``node`` that passes the script's version check only if ``major`` >= 22."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo v{major}.1.0; exit 0; fi\n'
        f"exit {0 if major >= 22 else 1}\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout layout with the script and an installed harness, but no Node."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "conformance")
    harness = tmp_path / "conformance" / HARNESS
    harness.parent.mkdir(parents=True)
    harness.write_text("")
    return tmp_path


def which_node(
    checkout: Path, path_dirs: list[Path], node: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONFORMANCE_NODE"}
    # Fakes first; the system folders only for the script's own tools.
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    if node is not None:
        env["CONFORMANCE_NODE"] = str(node)
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "conformance"), "--node"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_the_pinned_binary_of_this_platform_is_preferred(
    checkout: Path, tmp_path: Path
) -> None:
    modules = checkout / "conformance" / "node_modules"
    pinned = fake_node(modules / f"node-{this_platform()}" / "bin" / "node", 22)
    fake_node(modules / "node-other-os" / "bin" / "node", 22)
    system = tmp_path / "bin"
    fake_node(system / "node", 23)
    result = which_node(checkout, [system])
    assert (result.returncode, result.stdout.strip()) == (0, str(pinned)), result.stderr


def test_a_system_node_22_is_used_where_nothing_is_pinned(
    checkout: Path, tmp_path: Path
) -> None:
    # E.g. macOS arm64, where npm has no Node 22 package.
    system = tmp_path / "bin"
    node = fake_node(system / "node", 22)
    (checkout / "conformance" / "node_modules" / f"node-{this_platform()}").mkdir()
    result = which_node(checkout, [system])
    assert (result.returncode, result.stdout.strip()) == (0, str(node)), result.stderr


def test_conformance_node_wins_when_it_is_new_enough(
    checkout: Path, tmp_path: Path
) -> None:
    chosen = fake_node(tmp_path / "chosen" / "node", 24)
    result = which_node(checkout, [], node=chosen)
    assert (result.returncode, result.stdout.strip()) == (0, str(chosen))


def test_without_node_22_it_says_what_it_needs_in_one_line(
    checkout: Path, tmp_path: Path
) -> None:
    system = tmp_path / "bin"
    old = fake_node(system / "node", 20)
    # An npm that installs nothing, as on a platform npm has no Node 22 for.
    npm = system / "npm"
    npm.write_text("#!/bin/sh\nexit 0\n")
    npm.chmod(0o755)
    result = which_node(checkout, [system])
    assert result.returncode == 2
    *notes, line = result.stderr.splitlines()
    assert all(note.startswith("conformance: installing") for note in notes)
    assert line.startswith("conformance: needs Node >= 22 and found none")
    assert f"{old} is v20.1.0" in line
    assert "set CONFORMANCE_NODE" in line


def test_a_too_old_conformance_node_is_named(checkout: Path, tmp_path: Path) -> None:
    old = fake_node(tmp_path / "old" / "node", 20)
    result = which_node(checkout, [], node=old)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"conformance: needs Node >= 22; CONFORMANCE_NODE={old} is not one"
    ]
