"""The public surface: `__all__` and the package's import-direction rules."""

from __future__ import annotations

import ast
import types
from functools import cache
from pathlib import Path

import pytest

import mcp_tasks

PACKAGE_DIR = Path(mcp_tasks.__file__).parent
SDK = {"mcp", "mcp_types"}
#: Modules everything may build on; they import none of the packages above them.
BASE = (
    "mcp_tasks._exceptions",
    "mcp_tasks._model",
    "mcp_tasks._budgets",
    "mcp_tasks._config",
    "mcp_tasks._questions",
    "mcp_tasks._toolapi",
    "mcp_tasks._tokens",
    "mcp_tasks._toolloader",
    "mcp_tasks._telemetry",
    "mcp_tasks._logs",
)
#: The engine's modules in layers, lowest first: each imports only earlier layers.
ENGINE_LAYERS = (
    (
        "mcp_tasks.engine._holder",
        "mcp_tasks.engine._runs",
        "mcp_tasks.engine._events",
        "mcp_tasks.engine._tracing",
        "mcp_tasks.engine._observer",
    ),
    ("mcp_tasks.engine._reports",),
    ("mcp_tasks.engine._engine",),
    (
        "mcp_tasks.engine._context",
        "mcp_tasks.engine._execution",
        "mcp_tasks.engine._preflight",
        "mcp_tasks.engine._request_limits",
    ),
    (
        "mcp_tasks.engine._runner",
        "mcp_tasks.engine._dispatch",
        "mcp_tasks.engine._timers",
        "mcp_tasks.engine._leases",
        "mcp_tasks.engine._feed",
    ),
    ("mcp_tasks.engine._lifecycle",),
    ("mcp_tasks.engine._runtime",),
)


def test_all_lists_exactly_the_public_names_sorted() -> None:
    public = [
        name
        for name, value in vars(mcp_tasks).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    ]
    assert mcp_tasks.__all__ == sorted(public)


def test_every_name_in_all_is_importable() -> None:
    for name in mcp_tasks.__all__:
        assert getattr(mcp_tasks, name) is not None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def imports_by_module() -> dict[str, frozenset[str]]:
    """Every module of the package and the absolute names it imports.

    Imports anywhere in the file count, including inside functions and
    ``if TYPE_CHECKING:`` blocks; ``from a import b`` records both ``a`` and
    ``a.b`` since ``b`` may be a submodule.
    """
    found: dict[str, frozenset[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join([*base, node.module] if node.module else base)
                else:
                    origin = node.module or ""
                names.add(origin)
                names.update(f"{origin}.{alias.name}" for alias in node.names)
        found[module] = frozenset(names)
    return found


def _imports_from(module: str, *targets: str) -> set[str]:
    """The names ``module`` imports that are one of ``targets`` or inside one."""
    return {
        name
        for name in imports_by_module()[module]
        for target in targets
        if name == target or name.startswith(f"{target}.")
    }


def _modules_under(prefix: str) -> list[str]:
    return [m for m in imports_by_module() if m == prefix or m.startswith(f"{prefix}.")]


def test_the_import_scan_sees_the_whole_package() -> None:
    # Guards the rules below against passing vacuously.
    modules = imports_by_module()
    for expected in (
        "mcp_tasks",
        *BASE,
        *(m for layer in ENGINE_LAYERS for m in layer),
        "mcp_tasks.client",
        "mcp_tasks.journal",
        "mcp_tasks.journal.sqlite._journal",
        "mcp_tasks.binding",
    ):
        assert expected in modules, expected
    assert _imports_from("mcp_tasks.engine._runtime", "mcp_tasks.journal")
    assert _imports_from("mcp_tasks.engine._runner", "mcp_tasks.engine._engine")
    assert _imports_from("mcp_tasks._model", "mcp_tasks._exceptions")
    assert any(_imports_from(m, *SDK) for m in _modules_under("mcp_tasks.binding"))


def test_only_the_bindings_and_the_client_import_the_mcp_sdk() -> None:
    allowed = {*_modules_under("mcp_tasks.binding"), "mcp_tasks.client"}
    offenders = {
        module: sorted(_imports_from(module, *SDK))
        for module in imports_by_module()
        if module not in allowed and _imports_from(module, *SDK)
    }
    assert offenders == {}


def test_every_engine_module_is_in_a_layer() -> None:
    layered = {m for layer in ENGINE_LAYERS for m in layer}
    modules = set(_modules_under("mcp_tasks.engine")) - {"mcp_tasks.engine"}
    assert modules - layered == set()


def test_the_model_imports_nothing_from_the_package_but_the_exceptions() -> None:
    assert all(
        name.startswith("mcp_tasks._exceptions")
        for name in _imports_from("mcp_tasks._model", "mcp_tasks")
    )


def _engine_rules() -> list[tuple[str, tuple[str, ...]]]:
    rules: list[tuple[str, tuple[str, ...]]] = []
    for index, layer in enumerate(ENGINE_LAYERS):
        higher = tuple(m for later in ENGINE_LAYERS[index + 1 :] for m in later)
        rules.extend((module, ("mcp_tasks.binding", *higher)) for module in layer)
    return rules


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        *(
            (module, ("mcp_tasks.journal", "mcp_tasks.engine", "mcp_tasks.binding"))
            for module in BASE
        ),
        (
            "mcp_tasks.journal",
            ("mcp_tasks.engine", "mcp_tasks.binding", "mcp_tasks.ops"),
        ),
        # The engine never sees SQL: it opens journals through open_journal only.
        (
            "mcp_tasks.engine",
            ("mcp_tasks.binding", "mcp_tasks.journal.sqlite", "mcp_tasks.ops"),
        ),
        # Operator tools act through the engine, never through SQL or the wire.
        ("mcp_tasks.ops", ("mcp_tasks.binding", "mcp_tasks.journal.sqlite")),
        *_engine_rules(),
    ],
)
def test_lower_layers_do_not_import_higher_ones(
    importer: str, forbidden: tuple[str, ...]
) -> None:
    offenders = {
        module: sorted(_imports_from(module, *forbidden))
        for module in _modules_under(importer)
        if _imports_from(module, *forbidden)
    }
    assert offenders == {}
