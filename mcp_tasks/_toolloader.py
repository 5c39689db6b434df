"""Discovers the tool modules a server exposes and collects their tools.

Tool modules are plain Python files, loaded by path (``tools/`` is not an
importable package, so it cannot collide with anything in site-packages).
Every module-level object decorated with `mcp_tasks.tool` becomes a tool.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._toolapi import ToolSpec, spec_of


def default_tools_path() -> Path:
    """The default tools: ``tools/`` of a source checkout, else the bundled copy."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "tools"
    if checkout.is_dir():
        return checkout
    return package / "_bundled_tools"


def _module_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    if path.is_file() and path.suffix == ".py":
        return [path]
    raise ConfigurationError("--tools", f"{path} is neither a .py file nor a folder")


def _import(path: Path) -> object:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"mcp_tasks_tools_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError("--tools", f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigurationError(
            "--tools", f"{path} failed to import: {exc!r}"
        ) from exc
    return module


def tools_from(*functions: Callable[..., Any]) -> dict[str, ToolSpec]:
    """The tools declared with `mcp_tasks.tool` among ``functions``, by name.

    For servers that define their tools in code rather than in tool modules.

    Raises:
        TypeError: one of ``functions`` is not decorated with `mcp_tasks.tool`.
    """
    tools: dict[str, ToolSpec] = {}
    for function in functions:
        spec = spec_of(function)
        if spec is None:
            raise TypeError(f"{function!r} is not decorated with @mcp_tasks.tool")
        tools[spec.name] = spec
    return tools


def load_tools(
    paths: Iterable[Path], tool_config: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, ToolSpec]:
    """Every tool defined in the modules at ``paths`` (files or folders).

    Tools declared with ``requires_config`` are left out unless ``tool_config``
    has a table for them. Two tools with one name, and a table that
    `check_tool_config` refuses, are configuration errors.
    """
    config = tool_config or {}
    tools: dict[str, ToolSpec] = {}
    for path in paths:
        for file in _module_files(path):
            module = _import(file)
            for value in vars(module).values():
                spec = spec_of(value)
                if spec is None or (spec.requires_config and spec.name not in config):
                    continue
                if spec.name in tools and tools[spec.name].fn is not spec.fn:
                    raise ConfigurationError(
                        "--tools", f"tool {spec.name!r} is defined twice"
                    )
                tools[spec.name] = spec
    check_tool_config(tools, config)
    return tools


def check_tool_config(
    tools: Mapping[str, ToolSpec], tool_config: Mapping[str, Mapping[str, Any]]
) -> None:
    """Validate every ``[tools.<name>]`` table against the tools being served.

    A table for a tool that is not loaded is an error (a misspelt name would
    otherwise be ignored), and so is a table its tool refuses
    (`ToolSpec.check_config`), so mistakes stop the server at start-up rather
    than failing its first call.

    Raises:
        ConfigurationError: naming the first offending ``tools.<name>[.key]``.
    """
    for name in sorted(tool_config):
        if name not in tools:
            loaded = ", ".join(sorted(tools)) or "none"
            raise ConfigurationError(
                f"tools.{name}", f"no tool of that name is loaded (loaded: {loaded})"
            )
    for name, spec in sorted(tools.items()):
        spec.check_config(tool_config.get(name, {}))
