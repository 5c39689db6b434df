"""The one boundary between our request handlers and the JSON-RPC errors clients see.

`guard` is the outermost of this server's middleware, around every request on
both wires. It makes three promises:

- **No non-JSON numbers get in.** NaN, Infinity and numbers too large for a
  double (``1e400`` arrives as Infinity) are accepted by the SDK's JSON
  readers but are not JSON (RFC 8259 §6; I-JSON, RFC 7493 §2.2). A request
  carrying one anywhere in its params is refused with -32602 naming where,
  before any handler runs, so nothing of it is ever stored.
- **No unnamed Python exception gets out.** mcp 2.3 answers an exception it
  does not know with code 0 and ``str(exc)`` on the 2025-11-25 wire. Here an
  unexpected exception becomes -32603 "Internal error", logged with its
  traceback on the server and never echoed. A pydantic `ValidationError` of a
  request's params becomes -32602 naming the field(s).
- **No error echoes a huge value.** Every error leaving is bounded: its
  message is clipped and long strings in its data are cut short.

Errors a task recorded and answers again (`ReplayedError`) pass untouched:
``tasks/result`` must return them exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from mcp_tasks._exceptions import ECHO_LIMIT, MAX_REPORTED_ERRORS, MESSAGE_LIMIT, clip
from mcp_tasks.binding._common import INTERNAL_ERROR, INVALID_PARAMS, ReplayedError

logger = logging.getLogger("mcp_tasks.binding.guard")

#: Error data deeper than this is cut (it is ours or the SDK's, never deep).
_DATA_DEPTH: Final = 8
#: The longest message an error may carry (ours list up to ten problems).
_MESSAGE_LIMIT: Final = 4 * MESSAGE_LIMIT


async def guard(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Server middleware: refuse non-JSON numbers, map every failure to a proper error."""
    if ctx.request_id is None:
        return await call_next(ctx)  # a notification: nobody to answer
    try:
        reject_non_finite(ctx.params)
        return await call_next(ctx)
    except Exception as exc:
        raise error_of(exc, ctx.method, ctx.params) from None


def error_of(exc: Exception, method: str, params: Mapping[str, Any] | None) -> MCPError:
    """The error a client sees for ``exc``, raised while serving ``method``.

    An `MCPError` bounded; a params model's `ValidationError` as -32602
    naming the fields; anything else -32603, logged with its traceback.
    """
    if isinstance(exc, MCPError):
        return bounded(exc)
    if isinstance(exc, ValidationError):
        if _is_params_model(exc):
            return validation_error(exc, params)
        return _internal(method, exc)
    single = _single_mcp_error(exc)
    if single is not None:
        return bounded(single)
    return _internal(method, exc)


def reject_non_finite(params: Mapping[str, Any] | None) -> None:
    """Raise -32602 naming the first number in ``params`` that is not a finite double."""
    if params and not _all_finite(params):
        path = _path_of_non_finite(params)
        raise _invalid(
            path,
            "must be a finite number (NaN, Infinity and numbers beyond the range "
            "of a double are not JSON)",
        )


def _all_finite(params: Mapping[str, Any]) -> bool:
    # The hot path, run on every request: values only, no paths, exact type
    # tests (what a JSON reader builds) before the slower ABC checks. Walks
    # iteratively: the SDK's readers cap nesting, params built in process need not.
    stack: list[object] = list(params.values())
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict:
            stack.extend(cast("dict[object, object]", value).values())
        elif kind is list:
            stack.extend(cast("list[object]", value))
        elif isinstance(value, float | int):
            if not _finite(value):
                return False
        elif isinstance(value, Mapping):
            stack.extend(cast("Mapping[object, object]", value).values())
        elif isinstance(value, list | tuple):
            stack.extend(cast("Sequence[object]", value))
    return True


def _path_of_non_finite(params: Mapping[str, Any]) -> str:
    """Where the first non-finite number is (only run once one was found)."""
    stack: list[tuple[str, object]] = [(str(k), v) for k, v in params.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, bool | str) or value is None:
            continue
        if isinstance(value, float | int):
            if not _finite(value):
                return path
        elif isinstance(value, Mapping):
            items = cast("Mapping[object, object]", value).items()
            stack.extend((_key(str(k), path), v) for k, v in items)
        elif isinstance(value, list | tuple):
            entries = cast("Sequence[object]", value)
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(entries))
    return "params"  # unreachable: _all_finite found one


def _finite(value: float) -> bool:
    if isinstance(value, int):
        return value.bit_length() <= 1024  # float(value) would overflow
    return math.isfinite(value)


def _key(key: str, parent: str) -> str:
    return f"{parent}.{key}" if parent else key


def _invalid(field: str, problem: str) -> MCPError:
    field = clip(field, ECHO_LIMIT * 2)
    return MCPError(
        INVALID_PARAMS, f"Invalid params: {field}: {problem}", {"field": field}
    )


def _is_params_model(exc: ValidationError) -> bool:
    # The SDK validates params against the method's request model (spec
    # methods, e.g. "CallToolRequest") or the registered params model (e.g.
    # "GetTaskRequestParams"). Any other model failing is our own bug.
    return exc.title.endswith(("Request", "Params"))


def validation_error(
    exc: ValidationError, params: Mapping[str, Any] | None
) -> MCPError:
    """-32602 for params that failed their model, naming the field(s), never the values."""
    problems: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        field = _field(err["loc"], params, missing=err["type"] == "missing")
        problem = {
            "field": clip(field or "params", 2 * ECHO_LIMIT),
            "message": clip(err["msg"]),
        }
        if problem not in problems:  # union members fail alike under one field
            problems.append(problem)
    first = problems[0] if problems else {"field": "params", "message": "invalid"}
    message = f"Invalid params: {first['field']}: {first['message']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more)"
    return MCPError(
        INVALID_PARAMS,
        message,
        {"field": first["field"], "errors": problems[:MAX_REPORTED_ERRORS]},
    )


def _field(
    loc: Sequence[int | str], params: Mapping[str, Any] | None, *, missing: bool
) -> str:
    """The path in ``params`` a pydantic error location points at.

    Locations also hold the names of union members tried (``progressToken.str``,
    ``.int``); only segments that exist in the params are kept, plus the name
    of a missing field.
    """
    parts = list(loc)
    if parts and parts[0] == "params":
        parts = parts[1:]  # spec methods are validated as whole requests
    path, node = "", cast("object", params or {})
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, Mapping) and str(part) in node:
            node = cast("Mapping[str, object]", node)[str(part)]
        elif isinstance(node, list) and isinstance(part, int):
            items = cast("list[object]", node)
            if part >= len(items):
                break
            node = items[part]
        elif not (missing and last):
            break
        path = f"{path}[{part}]" if isinstance(part, int) else _key(str(part), path)
    return path


def _single_mcp_error(exc: Exception) -> MCPError | None:
    # A task group inside a handler wraps an MCPError in an ExceptionGroup; the
    # client should still see that error.
    found: BaseException = exc
    while isinstance(found, BaseExceptionGroup):
        inner = cast("BaseExceptionGroup[BaseException]", found).exceptions
        if len(inner) != 1:
            return None
        found = inner[0]
    return found if isinstance(found, MCPError) else None


def _internal(method: str, exc: Exception) -> MCPError:
    logger.error("%s failed", method, exc_info=exc)
    return MCPError(INTERNAL_ERROR, "Internal error")


def bounded(exc: MCPError) -> MCPError:
    """``exc`` with its message clipped and long strings in its data cut short.

    A task's replayed error (`ReplayedError`) is left whole: it is the tool's.
    """
    if isinstance(exc, ReplayedError):
        return exc
    error = exc.error
    message = clip(error.message, _MESSAGE_LIMIT)
    data = _bounded_data(error.data, 0)
    if message == error.message and data == error.data:
        return exc
    if data is None:
        return MCPError(error.code, message)
    return MCPError(error.code, message, data)


def _bounded_data(value: object, depth: int) -> object:
    if isinstance(value, str):
        return clip(value)
    if depth >= _DATA_DEPTH:
        return None
    if isinstance(value, Mapping):
        items = list(cast("Mapping[object, object]", value).items())
        return {
            clip(str(k), ECHO_LIMIT): _bounded_data(v, depth + 1)
            for k, v in items[: MAX_REPORTED_ERRORS * 4]
        }
    if isinstance(value, list | tuple):
        entries = list(cast("Sequence[object]", value))
        return [_bounded_data(v, depth + 1) for v in entries[:MAX_REPORTED_ERRORS]]
    return value
