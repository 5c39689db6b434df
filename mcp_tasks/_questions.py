"""Questions a tool puts to the requestor, and validation of the answers.

A question is stored and delivered as the server-to-client request MCP defines
for it (``elicitation/create``, ``sampling/createMessage``, ``roots/list``):
both task wires carry those requests unchanged, so the engine keeps them in
that shape and the bindings only choose the channel. Answers are validated here,
once, whichever wire they arrive on.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import jsonschema
import pydantic

from mcp_tasks._exceptions import McpTasksError, clip, excerpt

ELICIT: Final = "elicitation/create"
SAMPLE: Final = "sampling/createMessage"
LIST_ROOTS: Final = "roots/list"

#: The client capability each kind of question needs.
CAPABILITY_OF: Final = {ELICIT: "elicitation", SAMPLE: "sampling", LIST_ROOTS: "roots"}

Action = Literal["accept", "decline", "cancel", "timeout"]


class InputNotSupportedError(McpTasksError):
    """Raised inside a tool when the client cannot answer the kind of question asked.

    Uncaught, it ends the call with a JSON-RPC error naming the missing client
    capability (-32021 with ``requiredCapabilities`` on 2026-07-28), rather
    than leaving the task waiting forever.
    """

    def __init__(
        self, capability: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        self.capability = capability
        self.required: dict[str, Any] = {capability: dict(detail or {})}
        super().__init__(
            f"The client did not declare the {capability!r} capability, "
            "so this tool cannot ask it for input"
        )


class InvalidAnswerError(McpTasksError):
    """Raised when an answer does not fit its question; the question stays open."""

    def __init__(self, task_id: str, key: str, problem: str) -> None:
        self.task_id = task_id
        self.key = key
        # A validator's message may quote the client's whole answer.
        self.problem = clip(problem)
        super().__init__(
            f"Invalid answer for input request {excerpt(key)}: {self.problem}"
        )


@dataclass(frozen=True, slots=True)
class Question:
    """One question: the MCP request that asks it, plus an optional deadline."""

    method: str
    params: dict[str, Any]
    timeout_seconds: float | None = None
    model: type[pydantic.BaseModel] | None = field(default=None, compare=False)

    @classmethod
    def form(
        cls,
        message: str,
        schema: type[pydantic.BaseModel] | Mapping[str, Any],
        *,
        timeout_seconds: float | None = None,
    ) -> Question:
        """Ask the user to fill in a form (``schema``: pydantic model or JSON schema)."""
        model = None
        if isinstance(schema, type):
            model = schema
            requested = model.model_json_schema()
            requested.pop("title", None)
        else:
            requested = dict(schema)
        params = {"mode": "form", "message": message, "requestedSchema": requested}
        return cls(ELICIT, params, timeout_seconds, model)

    @classmethod
    def url(
        cls, message: str, url: str, *, timeout_seconds: float | None = None
    ) -> Question:
        """Send the user to ``url`` (for credentials or payments out of band)."""
        params = {
            "mode": "url",
            "message": message,
            "url": url,
            "elicitationId": secrets.token_urlsafe(16),
        }
        return cls(ELICIT, params, timeout_seconds)

    @classmethod
    def sampling(
        cls,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        system_prompt: str | None = None,
        temperature: float | None = None,
        stop_sequences: Sequence[str] | None = None,
        model_preferences: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
    ) -> Question:
        """Ask the client's model for a completion (``sampling/createMessage``)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": {"type": "text", "text": messages}}]
        params: dict[str, Any] = {"messages": list(messages), "maxTokens": max_tokens}
        optional = {
            "systemPrompt": system_prompt,
            "temperature": temperature,
            "stopSequences": list(stop_sequences) if stop_sequences else None,
            "modelPreferences": dict(model_preferences) if model_preferences else None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return cls(SAMPLE, params, timeout_seconds)

    @classmethod
    def roots(cls, *, timeout_seconds: float | None = None) -> Question:
        """Ask the client for its roots (``roots/list``)."""
        return cls(LIST_ROOTS, {}, timeout_seconds)

    @property
    def capability(self) -> str:
        """The client capability needed to answer."""
        return CAPABILITY_OF[self.method]

    @property
    def summary(self) -> str:
        """A short description for the task's ``statusMessage``."""
        if self.method == ELICIT:
            return str(self.params.get("message", "Input requested"))
        if self.method == SAMPLE:
            return "Waiting for the client's model to answer"
        return "Waiting for the client's roots"


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a question, as the tool sees it.

    ``action`` is the user's choice (``accept``, ``decline``, ``cancel``) or
    ``timeout`` when the question expired. ``content`` is the form content
    (a pydantic model instance when the question was asked with one); for
    sampling and roots, ``raw`` holds the whole client result.
    """

    action: Action
    content: Any = None
    raw: Mapping[str, Any] = field(default_factory=lambda: dict[str, Any]())

    @property
    def accepted(self) -> bool:
        """Whether the user accepted (or the model/client answered)."""
        return self.action == "accept"

    @property
    def text(self) -> str | None:
        """The text of a sampling answer, if it is text."""
        content = self.raw.get("content")
        if isinstance(content, Mapping):
            block = cast(Mapping[str, Any], content)
            if block.get("type") == "text":
                return str(block.get("text"))
        return None


TIMEOUT_RESPONSE: Final[dict[str, Any]] = {"action": "timeout"}


def check_response(
    method: str, params: Mapping[str, Any], response: object
) -> str | None:
    """Why ``response`` does not answer the question, or None if it does."""
    if not isinstance(response, Mapping):
        return "must be an object"
    answer = cast(Mapping[str, Any], response)
    if answer == TIMEOUT_RESPONSE:
        return None
    if method == ELICIT:
        return _check_elicit(params, answer)
    if method == SAMPLE:
        return _check_sample(answer)
    return _check_roots(answer)


def _check_elicit(params: Mapping[str, Any], answer: Mapping[str, Any]) -> str | None:
    action = answer.get("action")
    if action not in ("accept", "decline", "cancel"):
        return "action: must be 'accept', 'decline' or 'cancel'"
    if action != "accept" or params.get("mode") == "url":
        return None
    content = answer.get("content")
    if not isinstance(content, Mapping):
        return "content: must be an object when action is 'accept'"
    try:
        jsonschema.validate(
            dict(cast(Mapping[str, Any], content)), params.get("requestedSchema") or {}
        )
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        return f"content{'.' + where if where else ''}: {exc.message}"
    except jsonschema.SchemaError:
        return None  # our own schema is not checkable; accept what was sent
    return None


def _check_sample(answer: Mapping[str, Any]) -> str | None:
    if answer.get("role") != "assistant":
        return "role: must be 'assistant'"
    content = answer.get("content")
    if not isinstance(content, Mapping | list):
        return "content: must be a content block"
    if not isinstance(answer.get("model"), str):
        return "model: must be a string"
    return None


def _check_roots(answer: Mapping[str, Any]) -> str | None:
    roots = answer.get("roots")
    if not isinstance(roots, list):
        return "roots: must be a list"
    for index, root in enumerate(cast(list[object], roots)):
        if not isinstance(root, Mapping) or not isinstance(
            cast(Mapping[str, Any], root).get("uri"), str
        ):
            return f"roots.{index}.uri: must be a string"
    return None


def to_answer(question: Question, response: Mapping[str, Any]) -> Answer:
    """The `Answer` a tool receives for a (validated) response."""
    if response == TIMEOUT_RESPONSE:
        return Answer("timeout", raw=response)
    if question.method != ELICIT:
        return Answer("accept", content=response.get("content"), raw=response)
    action = cast(Action, response.get("action"))
    content = response.get("content")
    if action == "accept" and question.model is not None and content is not None:
        content = question.model.model_validate(content)
    return Answer(action, content=content, raw=response)
