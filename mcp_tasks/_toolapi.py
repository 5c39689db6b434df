"""What a tool module sees: the `tool` decorator, `TaskContext` and results.

A tool is a plain function decorated with `tool`. Its parameters (except an
optional first ``ctx`` parameter) become the tool's JSON input schema, through
pydantic. ``async def`` bodies run on the event loop; plain ``def`` bodies run
in a worker thread, so they may block. The same tool runs unchanged on both
MCP task wires: nothing here imports ``mcp``.

Example::

    @tool(task_support="optional")
    async def wait(ctx: TaskContext, seconds: float) -> str:
        await ctx.report_progress(0, seconds)
        ...
        return f"waited {seconds} s"
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, cast, overload

import anyio.from_thread
import jsonschema
import pydantic

from mcp_tasks._exceptions import ConfigurationError, InvalidArgumentsError
from mcp_tasks._questions import Answer, Question

_T = TypeVar("_T")

TaskSupport = Literal["forbidden", "optional", "required"]
"""Whether a tool runs as a task: never, when the client asks, or always."""

Recovery = Literal["resume", "restart", "fail"]
"""What happens to a task that was running when the server died.

``resume``: run it again from the top, replaying recorded steps (their
bodies do not run twice). ``restart``: drop recorded steps and run it again
(for idempotent tools). ``fail``: end it ``failed``, saying the server
restarted mid-run.
"""

_TOOL_ATTRIBUTE = "__mcp_tasks_tool__"


class ToolError(Exception):
    """Raise from a tool to end it with a tool execution error (``isError``).

    The message is shown to the model; the task still finishes normally (on the
    2025-11-25 wire as ``failed``, on the 2026-07-28 wire as ``completed`` with
    ``isError: true``, as each spec says).
    """


class ProtocolError(Exception):
    """Raise from a tool to end it with a JSON-RPC error instead of a result.

    The task becomes ``failed`` and ``tasks/result`` (or ``tasks/get``) carries
    this error. Use it for errors of the request itself, not of the work.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"{code}: {message}")

    def to_json(self) -> dict[str, Any]:
        """The JSON-RPC error object."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class RetryLater(Exception):
    """Raise from a tool to be run again later, releasing the worker meanwhile.

    Use it when an upstream service says "not now" (HTTP 429 or 503). The task
    stays ``working`` and is re-dispatched after ``after_seconds`` (for
    example a Retry-After header) or the tool's exponential backoff with
    jitter. After the tool's ``max_attempts`` it ends ``failed`` with
    ``reason``. Recorded steps replay, so completed work is not redone.
    """

    def __init__(self, reason: str, *, after_seconds: float | None = None) -> None:
        self.reason = reason
        self.after_seconds = after_seconds
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool result with full control over content, structure and error flag."""

    content: list[dict[str, Any]] = field(
        default_factory=lambda: list[dict[str, Any]]()
    )
    structured: dict[str, Any] | None = None
    is_error: bool = False

    @classmethod
    def text(cls, text: str, *, is_error: bool = False) -> ToolResult:
        """A result with one text block."""
        return cls([{"type": "text", "text": text}], is_error=is_error)

    def to_json(self) -> dict[str, Any]:
        """The result as the JSON object MCP calls a ``CallToolResult``."""
        data: dict[str, Any] = {"content": self.content, "isError": self.is_error}
        if self.structured is not None:
            data["structuredContent"] = self.structured
        return data


def result_from_return(value: object) -> dict[str, Any]:
    """Turn what a tool body returned into a ``CallToolResult`` JSON object.

    ``str`` becomes one text block; ``ToolResult`` is taken as is; ``None`` is
    an empty result; dicts, lists, numbers and pydantic models become
    structured content plus its JSON text.
    """
    if isinstance(value, ToolResult):
        return value.to_json()
    if value is None:
        return ToolResult().to_json()
    if isinstance(value, str):
        return ToolResult.text(value).to_json()
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    text = json.dumps(value, separators=(",", ":"), default=str)
    structured = (
        cast("dict[str, Any]", value) if isinstance(value, dict) else {"result": value}
    )
    return ToolResult([{"type": "text", "text": text}], structured).to_json()


class TaskContext(Protocol):
    """The handle an ``async`` tool body gets as its ``ctx`` parameter."""

    @property
    def task_id(self) -> str:
        """The id of the task running this call."""
        ...

    @property
    def config(self) -> Mapping[str, Any]:
        """This tool's table from the server config file (``[tools.<name>]``)."""
        ...

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress; delivered through the request's progress token."""
        ...

    async def set_status(self, message: str) -> None:
        """Set the task's ``statusMessage`` (what ``tasks/get`` shows)."""
        ...

    @property
    def attempt(self) -> int:
        """How many times this task has been started (1 on the first run)."""
        ...

    @property
    def client_capabilities(self) -> Mapping[str, Any]:
        """The capabilities the requesting client declared (MCP JSON shape)."""
        ...

    @property
    def preflight(self) -> Mapping[str, Any]:
        """What the tool's preflight gathered before the task was created."""
        ...

    async def step(
        self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``fn`` once and record its JSON result durably.

        When the task runs again (after a restart, a retry or an answer), the
        recorded result is returned without calling ``fn``. Steps are keyed by
        ``name`` and call order, so the tool's path to each step must be
        deterministic. A sync ``fn`` runs in a worker thread.
        """
        ...

    async def ask(self, questions: Mapping[str, Question]) -> dict[str, Answer]:
        """Ask several questions at once; wait (holding no worker) for all answers.

        Keys must be unique for the task's lifetime.
        """
        ...

    async def elicit(
        self,
        message: str,
        schema: type[pydantic.BaseModel] | Mapping[str, Any],
        *,
        key: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        """Ask the user to fill in a form; the task is ``input_required`` until answered."""
        ...

    async def elicit_url(
        self,
        message: str,
        url: str,
        *,
        key: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        """Send the user to ``url``; returns when they accept, decline or cancel."""
        ...

    async def sample(
        self,
        messages: str | list[dict[str, Any]],
        *,
        max_tokens: int,
        key: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        """Ask the client's model (``sampling/createMessage``); ``Answer.text`` has the reply."""
        ...

    async def list_roots(self, *, key: str | None = None) -> Answer:
        """Ask the client for its roots; ``Answer.raw["roots"]`` lists them."""
        ...

    async def acquire(
        self, budget: str, *, requests: float = 1, tokens: float = 0
    ) -> None:
        """Take from a shared rate-limit budget, parking the task until it can."""
        ...

    async def log(self, level: str, message: str) -> None:
        """Send a log message to the client, where the wire allows it."""
        ...


class ThreadTaskContext:
    """The handle a synchronous (threaded) tool body gets as ``ctx``.

    Its methods block briefly while the event loop records the update. A
    threaded body cannot be interrupted: it should check `cancelled` between
    units of work and return early when it is set.
    """

    def __init__(self, inner: TaskContext) -> None:
        self._inner = inner
        self._cancelled = threading.Event()

    @property
    def task_id(self) -> str:
        """The id of the task running this call."""
        return self._inner.task_id

    @property
    def config(self) -> Mapping[str, Any]:
        """This tool's table from the server config file."""
        return self._inner.config

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled; the result will be discarded."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Mark cancelled (called by the runtime, from the event loop)."""
        self._cancelled.set()

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress (see `TaskContext.report_progress`)."""
        anyio.from_thread.run(self._inner.report_progress, progress, total, message)

    def set_status(self, message: str) -> None:
        """Set the task's ``statusMessage``."""
        anyio.from_thread.run(self._inner.set_status, message)

    @property
    def attempt(self) -> int:
        """How many times this task has been started."""
        return self._inner.attempt

    @property
    def client_capabilities(self) -> Mapping[str, Any]:
        """The capabilities the requesting client declared."""
        return self._inner.client_capabilities

    @property
    def preflight(self) -> Mapping[str, Any]:
        """What the tool's preflight gathered."""
        return self._inner.preflight

    def step(self, name: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` once, recording its result (see `TaskContext.step`).

        ``fn`` runs here, in the tool's thread.
        """
        return anyio.from_thread.run(_thread_step, self._inner, name, fn, args, kwargs)

    def ask(self, questions: Mapping[str, Question]) -> dict[str, Answer]:
        """Ask several questions (see `TaskContext.ask`)."""
        return anyio.from_thread.run(self._inner.ask, questions)

    def elicit(
        self,
        message: str,
        schema: type[pydantic.BaseModel] | Mapping[str, Any],
        *,
        key: str | None = None,
    ) -> Answer:
        """Ask the user to fill in a form (see `TaskContext.elicit`)."""
        return anyio.from_thread.run(
            lambda: self._inner.elicit(message, schema, key=key)
        )

    def acquire(self, budget: str, *, requests: float = 1, tokens: float = 0) -> None:
        """Take from a shared budget (see `TaskContext.acquire`)."""
        anyio.from_thread.run(
            lambda: self._inner.acquire(budget, requests=requests, tokens=tokens)
        )


async def _thread_step(
    ctx: TaskContext,
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    # A threaded body's step runs fn in a worker thread of its own: the tool's
    # thread is blocked in from_thread.run meanwhile, so nothing runs twice.
    import anyio.to_thread

    async def run_in_thread() -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    return await ctx.step(name, run_in_thread)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the runtime sees it: metadata plus a validated entry point."""

    name: str
    description: str
    fn: Callable[..., Any]
    task_support: TaskSupport
    arguments_model: type[pydantic.BaseModel] | None
    takes_context: bool
    is_async: bool
    title: str | None = None
    requires_config: bool = False
    recovery: Recovery = "resume"
    max_attempts: int = 1
    retry_on: tuple[type[Exception], ...] = (Exception,)
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    budgets: Mapping[str, float] = field(default_factory=lambda: dict[str, float]())
    explicit_schema: Mapping[str, Any] | None = None
    preflight: Callable[..., Any] | None = None
    on_recover: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None
    config_model: type[pydantic.BaseModel] | None = None
    #: The derived schema, made on first use: pydantic builds it in ~100 µs,
    #: and every 2026-07-28 `tools/call` checks its ``Mcp-Param-*`` headers
    #: against it. Only `shared_input_schema` hands it out, read-only by contract.
    _derived_schema: list[dict[str, Any]] = field(
        default_factory=lambda: list[dict[str, Any]](),
        init=False,
        repr=False,
        compare=False,
    )

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments (a copy the caller may change)."""
        return copy.deepcopy(dict(self.shared_input_schema))

    @property
    def shared_input_schema(self) -> Mapping[str, Any]:
        """The JSON schema of the tool's arguments, shared: never change it."""
        if self.explicit_schema is not None:
            return self.explicit_schema
        if not self._derived_schema:
            assert self.arguments_model is not None
            schema = self.arguments_model.model_json_schema()
            schema.pop("title", None)
            self._derived_schema.append(schema)
        return self._derived_schema[0]

    def validate(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate and coerce ``arguments``; raise `InvalidArgumentsError`."""
        if self.arguments_model is None:
            return self._validate_explicit(dict(arguments or {}))
        try:
            model = self.arguments_model.model_validate(dict(arguments or {}))
        except pydantic.ValidationError as exc:
            errors = [
                {
                    "field": ".".join(str(p) for p in err["loc"]) or "arguments",
                    "message": err["msg"],
                }
                for err in exc.errors(include_url=False)
            ]
            raise InvalidArgumentsError(self.name, errors) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def _validate_explicit(self, arguments: dict[str, Any]) -> dict[str, Any]:
        validator = jsonschema.Draft202012Validator(dict(self.explicit_schema or {}))
        errors = [
            {
                "field": ".".join(str(p) for p in err.absolute_path) or "arguments",
                "message": err.message,
            }
            for err in cast(
                "list[jsonschema.ValidationError]",
                list(validator.iter_errors(arguments)),  # pyright: ignore[reportUnknownMemberType]
            )
        ]
        if errors:
            raise InvalidArgumentsError(self.name, errors)
        return arguments

    def check_config(self, table: Mapping[str, Any]) -> None:
        """Validate this tool's ``[tools.<name>]`` table; raise `ConfigurationError`.

        A tool without a ``config`` model takes no settings, so any key is
        unknown. The error names the first offending key as a dotted path.
        """
        key = f"tools.{self.name}"
        fields = self.config_model.model_fields if self.config_model else {}
        known = {field.alias or name for name, field in fields.items()}
        unknown = sorted(set(table) - known)
        if unknown:
            problem = "unknown setting"
            if self.config_model is None:
                problem += f" (tool {self.name!r} takes no configuration)"
            raise ConfigurationError(f"{key}.{unknown[0]}", problem)
        if self.config_model is None:
            return
        try:
            self.config_model.model_validate(dict(table))
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            got = f", got {error['input']!r}" if error["type"] != "missing" else ""
            raise ConfigurationError(
                f"{key}.{where}" if where else key, f"{error['msg']}{got}"
            ) from None

    def bind(self, ctx: object, arguments: Mapping[str, Any]) -> Callable[[], Any]:
        """A zero-argument callable that runs the body with validated arguments."""
        kwargs = self.validate(arguments)
        if self.takes_context:
            return lambda: self.fn(ctx, **kwargs)
        return lambda: self.fn(**kwargs)


def _takes_context(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and params[0].name == "ctx"


def _arguments_model(
    fn: Callable[..., Any], name: str
) -> tuple[type[pydantic.BaseModel], bool]:
    signature = inspect.signature(fn)
    hints = inspect.get_annotations(fn, eval_str=True)
    params = list(signature.parameters.values())
    takes_context = bool(params) and params[0].name == "ctx"
    if takes_context:
        params = params[1:]
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(
                f"tool {name!r}: *args/**kwargs parameters are not supported"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = pydantic.create_model(
        f"{name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return model, takes_context


@overload
def tool(fn: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    title: str | None = None,
    task_support: TaskSupport = "optional",
    requires_config: bool = False,
    recovery: Recovery = "resume",
    max_attempts: int = 1,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    retry_base_seconds: float = 1.0,
    retry_max_seconds: float = 300.0,
    budgets: Mapping[str, float] | None = None,
    input_schema: Mapping[str, Any] | None = None,
    preflight: Callable[..., Any] | None = None,
    on_recover: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
    config: type[pydantic.BaseModel] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    title: str | None = None,
    task_support: TaskSupport = "optional",
    requires_config: bool = False,
    recovery: Recovery = "resume",
    max_attempts: int = 1,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    retry_base_seconds: float = 1.0,
    retry_max_seconds: float = 300.0,
    budgets: Mapping[str, float] | None = None,
    input_schema: Mapping[str, Any] | None = None,
    preflight: Callable[..., Any] | None = None,
    on_recover: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
    config: type[pydantic.BaseModel] | None = None,
) -> Any:
    """Declare a function as a tool the server exposes.

    Args:
        name: The tool name (default: the function name).
        description: Shown to the model (default: the docstring).
        title: A human-readable display name.
        task_support: ``"optional"`` (default): runs as a task when the client
            asks; ``"required"``: only as a task; ``"forbidden"``: never.
        requires_config: serve the tool only when the config file has a
            ``[tools.<name>]`` table (for tools that are unsafe by default).
        recovery: what a restart does to a task that was running (`Recovery`).
        max_attempts: how many times the body may run because of `RetryLater`
            or an exception in ``retry_on`` (1: no retries).
        retry_on: exception types that are retried (`ToolError` and
            `ProtocolError` never are).
        retry_base_seconds: the first backoff; doubled per retry, with jitter.
        retry_max_seconds: the longest backoff.
        budgets: shared budgets a call needs (name → requests per call); the
            dispatcher does not start the task until they have room.
        input_schema: a JSON schema to use verbatim instead of the one derived
            from the signature; arguments are validated against it and passed
            as keyword arguments.
        preflight: ``async def (ctx, **arguments) -> dict`` run before a task is
            created; it may ask questions (multi-round-trip requests on
            2026-07-28) and its result is `TaskContext.preflight`.
        on_recover: ``async def (task_id, steps) -> None``, for cleaning up
            what a lost run left behind (processes it started, say). The
            engine calls it when it recovers a task whose worker is gone (the
            server died, or its lease ran out), before ``recovery`` applies,
            with the task's recorded step results by step key; the task is
            recovered even if the hook fails.
        config: a pydantic model of the tool's ``[tools.<name>]`` table. The
            table is validated against it when the tools are loaded, so a
            misspelt key or a wrong type stops the server at start-up; the body
            reads the table as ``ctx.config`` (``Model.model_validate(ctx.config)``
            gives it typed). Without one the tool takes no configuration.

    The function is returned unchanged, so it stays directly callable in tests.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or func.__name__
        if input_schema is not None:
            model, takes_context = None, _takes_context(func)
        else:
            model, takes_context = _arguments_model(func, tool_name)
        spec = ToolSpec(
            name=tool_name,
            description=description or inspect.cleandoc(func.__doc__ or "").strip(),
            fn=func,
            task_support=task_support,
            arguments_model=model,
            takes_context=takes_context,
            is_async=inspect.iscoroutinefunction(func),
            title=title,
            requires_config=requires_config,
            recovery=recovery,
            max_attempts=max_attempts,
            retry_on=retry_on,
            retry_base_seconds=retry_base_seconds,
            retry_max_seconds=retry_max_seconds,
            budgets=dict(budgets or {}),
            explicit_schema=dict(input_schema) if input_schema is not None else None,
            preflight=preflight,
            on_recover=on_recover,
            config_model=config,
        )
        setattr(func, _TOOL_ATTRIBUTE, spec)
        return func

    if fn is not None:
        return decorate(fn)
    return decorate


def spec_of(obj: object) -> ToolSpec | None:
    """The `ToolSpec` attached by `tool`, or None for anything else."""
    spec = getattr(obj, _TOOL_ATTRIBUTE, None)
    return spec if isinstance(spec, ToolSpec) else None


AsyncBody = Callable[[], Awaitable[Any]]
