"""Encryption at rest of what callers and tools put in the journal.

Task arguments, request metadata, step results, questions, answers, outcomes
and tool error texts are stored *sealed* when a key file is configured
(``[journal] encryption_key_file``): AES-256-GCM with a fresh 96-bit nonce
per value, bound by its associated data to its place (table, column, task and
key), so a sealed value copied into another row or column does not open.

A sealed value is text that names its key::

    mtk1:<key id>:<base64 of nonce + ciphertext + tag>

so keys rotate: new writes use the newest key of the file (its last line),
older values stay readable while their key is in the file, and
``mcp-tasks journal rekey`` re-seals them with the newest. Values written
before any key are plain JSON (never starting with ``mtk1:``) and stay
readable. Both backends seal in the same places, through `Sealing`, which
`open_journal` hands them.

The journal remembers each key id it has sealed with, by a *canary* (a known
text sealed with that key) in its ``sealing_keys`` table; `check_keys`
compares them with the key file at start-up, so a wrong or missing key is one
clear configuration error (exit 2), never envelopes served as arguments.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import anyio.to_thread

from mcp_tasks._exceptions import ConfigurationError, JournalError

logger = logging.getLogger("mcp_tasks.journal")

#: The configuration key every key-file problem names.
KEY_FILE_SETTING: Final = "journal.encryption_key_file"
#: The first characters of every sealed value (format version 1).
PREFIX: Final = "mtk1:"
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
#: Values at least this long are sealed off the event loop (`seal_off_loop`).
LARGE_VALUE_CHARS: Final = 1 << 20
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: What a canary seals: opening it proves the key is the one that sealed.
_CANARY_TEXT: Final = "mcp-tasks sealing canary"


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...


def _cipher(key: bytes) -> _Aead:
    """AES-GCM over ``key``, or one clear error if ``cryptography`` is missing."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigurationError(
            KEY_FILE_SETTING,
            "encryption at rest needs the cryptography package, which is not "
            f"installed ({exc}): pip install 'mcp-tasks[encryption]'",
        ) from exc
    return AESGCM(key)


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys of a key file, oldest first; the last one seals new values."""

    path: Path
    keys: tuple[tuple[str, bytes], ...]

    @property
    def newest(self) -> str:
        """The id of the key new values are sealed with."""
        return self.keys[-1][0]

    @property
    def ids(self) -> list[str]:
        """Every key id, oldest first."""
        return [key_id for key_id, _ in self.keys]

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read a key file: lines ``<key id> <base64 of 32 bytes>``, ``#`` comments.

        Raises:
            ConfigurationError: the file is missing, unreadable, malformed or
                empty (the message names the line).
        """
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"{path}: no key file there (make one with: mcp-tasks journal "
                f"keygen --key-file {path})",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                KEY_FILE_SETTING, f"{path}: cannot read the key file: {exc}"
            ) from None
        keys = parse_keys(text, path)
        if not keys:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"{path}: the key file holds no key (add one with: mcp-tasks "
                f"journal keygen --key-file {path})",
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # A warning, not a refusal: secrets mounted by an orchestrator are
            # often 0644 inside a container that runs nothing else.
            logger.warning(
                "%s: the key file is open to other users (mode %o); chmod 600 it",
                path,
                stat.S_IMODE(mode),
            )
        return cls(path, tuple(keys))


def parse_keys(text: str, path: Path) -> list[tuple[str, bytes]]:
    """The ``(id, key)`` pairs of a key file's text, in file order.

    Raises:
        ConfigurationError: a line is not ``<id> <base64 key>``, a key is not
            32 bytes, or an id repeats.
    """
    keys: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        parts = line.split()
        if len(parts) != 2 or not _KEY_ID.match(parts[0]):
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"{where}: expected '<key id> <base64 key>' (ids: letters, "
                "digits, '_', '.', '-')",
            )
        key_id, encoded = parts
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ConfigurationError(
                KEY_FILE_SETTING, f"{where}: key {key_id!r} is not base64"
            ) from None
        if len(key) != KEY_BYTES:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"{where}: key {key_id!r} is {len(key)} bytes, not {KEY_BYTES}",
            )
        if any(key_id == known for known, _ in keys):
            raise ConfigurationError(
                KEY_FILE_SETTING, f"{where}: key id {key_id!r} appears twice"
            )
        keys.append((key_id, key))
    return keys


def add_key(path: Path) -> str:
    """Append a new random key to the key file at ``path`` (created 0600); its id.

    The id is ``k<n>``, one past the largest such id in the file, so the new
    key is the newest (the last line) and seals every value from the next
    start on.

    Raises:
        ConfigurationError: the file exists but is not a valid key file, or
            cannot be written.
    """
    try:
        existing = parse_keys(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        existing = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            KEY_FILE_SETTING, f"{path}: cannot read the key file: {exc}"
        ) from None
    numbers = [
        int(key_id[1:])
        for key_id, _ in existing
        if key_id.startswith("k") and key_id[1:].isdigit()
    ]
    key_id = f"k{max(numbers, default=0) + 1}"
    line = f"{key_id} {base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            if existing and not path.read_text(encoding="utf-8").endswith("\n"):
                out.write("\n")
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise ConfigurationError(
            KEY_FILE_SETTING, f"{path}: cannot write the key file: {exc}"
        ) from None
    return key_id


def _place(parts: Sequence[str]) -> bytes:
    # JSON of the parts: unambiguous whatever characters a task id or key holds.
    return json.dumps(list(parts), separators=(",", ":")).encode()


class Sealing:
    """Seals and opens journal values; without a keyring it seals nothing.

    ``place`` arguments name where a value is stored (for example
    ``("tasks.arguments", task_id)``); a value opens only at the place it
    was sealed for.
    """

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring
        self._ciphers: dict[str, _Aead] = {}
        if keyring is not None:
            self._ciphers = {key_id: _cipher(key) for key_id, key in keyring.keys}

    @property
    def enabled(self) -> bool:
        """Whether new values are sealed."""
        return self.keyring is not None

    @property
    def newest_prefix(self) -> str | None:
        """What values sealed with the newest key start with (None: no key)."""
        if self.keyring is None:
            return None
        return f"{PREFIX}{self.keyring.newest}:"

    def seal(self, text: str, *place: str) -> str:
        """``text`` sealed for ``place`` with the newest key (as is without a key)."""
        if self.keyring is None:
            return text
        return self.seal_with(self.keyring.newest, text, *place)

    def seal_with(self, key_id: str, text: str, *place: str) -> str:
        """``text`` sealed for ``place`` with key ``key_id`` of the keyring."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, text.encode(), _place(place))
        return f"{PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def seal_optional(self, text: str | None, *place: str) -> str | None:
        """`seal`, passing None through."""
        return None if text is None else self.seal(text, *place)

    def unseal(self, stored: str, *place: str) -> str:
        """The text of a stored value (a plaintext value is returned as is).

        Raises:
            JournalError: the value is sealed and this keyring cannot open it
                (no key configured, its key is not in the file, or it was
                altered or moved from another place).
        """
        if not stored.startswith(PREFIX):
            return stored
        key_id, _, body = stored[len(PREFIX) :].partition(":")
        where = "/".join(place)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            if self.keyring is None:
                raise JournalError(
                    f"{where} is encrypted and no [journal] encryption_key_file "
                    "is configured"
                )
            raise JournalError(
                f"{where} is encrypted with key {key_id!r}, which is not in "
                f"{self.keyring.path}"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            text = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _place(place))
        except Exception as exc:  # binascii.Error, InvalidTag, ValueError
            raise JournalError(
                f"{where} does not open with key {key_id!r}: it was altered, "
                f"moved from another row, or sealed with another key "
                f"({type(exc).__name__})"
            ) from None
        return text.decode()

    def unseal_optional(self, stored: str | None, *place: str) -> str | None:
        """`unseal`, passing None through."""
        return None if stored is None else self.unseal(stored, *place)

    async def seal_off_loop(self, text: str | None, *place: str) -> str | None:
        """`seal_optional`, on a worker thread for a large value (a big result).

        Sealing 16 MB (AES and base64) takes tens of milliseconds, which
        would stall every other client of the process if done on its loop.
        """
        if text is None or self.keyring is None or len(text) < LARGE_VALUE_CHARS:
            return self.seal_optional(text, *place)
        return await anyio.to_thread.run_sync(lambda: self.seal(text, *place))

    def loads(self, stored: str, *place: str) -> Any:
        """The JSON value of a stored (sealed or plain) JSON text."""
        return json.loads(self.unseal(stored, *place))

    def is_current(self, stored: str | None) -> bool:
        """Whether a stored value needs no rekey (None, or sealed with the newest key)."""
        prefix = self.newest_prefix
        return stored is None or (prefix is not None and stored.startswith(prefix))

    def reseal(self, stored: str, *place: str) -> str:
        """A stored value sealed again with the newest key."""
        return self.seal(self.unseal(stored, *place), *place)

    def canary(self, key_id: str) -> str:
        """The canary of ``key_id``: a known text sealed with that key."""
        return self.seal_with(key_id, _CANARY_TEXT, "sealing_keys", key_id)


#: The sealing of a journal with no key file.
NO_SEALING: Final = Sealing()


def check_keys(
    sealing: Sealing, recorded: Mapping[str, str], journal: str
) -> str | None:
    """Check a keyring against the canaries a journal recorded; what to record.

    Returns the newest key's id when the journal has no canary for it yet
    (the caller records ``sealing.canary(id)``), else None.

    Raises:
        ConfigurationError: the journal holds values sealed with a key the
            keyring lacks or holds differently, or holds sealed values and
            no key file is configured.
    """
    keyring = sealing.keyring
    if keyring is None:
        if recorded:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"the journal {journal} holds encrypted values (keys "
                f"{', '.join(sorted(recorded))}) but no key file is configured: "
                "set [journal] encryption_key_file",
            )
        return None
    for key_id, canary in sorted(recorded.items()):
        if key_id not in keyring.ids:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"the journal {journal} holds values encrypted with key "
                f"{key_id!r}, which is not in {keyring.path}",
            )
        try:
            sealing.unseal(canary, "sealing_keys", key_id)
        except JournalError:
            raise ConfigurationError(
                KEY_FILE_SETTING,
                f"key {key_id!r} in {keyring.path} is not the key that encrypted "
                f"the journal {journal} (wrong key)",
            ) from None
    return None if keyring.newest in recorded else keyring.newest


def sealing_from(key_file: Path | None) -> Sealing:
    """The sealing a ``[journal] encryption_key_file`` setting asks for.

    Raises:
        ConfigurationError: the key file cannot be used, or the
            ``cryptography`` package is missing.
    """
    return NO_SEALING if key_file is None else Sealing(Keyring.load(key_file))


#: The place of a status message: the task's, and its copies in its changes.
MESSAGE: Final = "status_message"
#: The place of a change's data (a log line's text, who acted, …).
DATA: Final = "task_changes.data"
#: The sealed columns of a task row, in the order the reseal queries read them.
TASK_PLACES: Final = (
    "tasks.arguments",
    "tasks.request_meta",
    "tasks.outcome",
    "tasks.tool_error",
    MESSAGE,
)
#: The sealed columns of a change row.
CHANGE_PLACES: Final = (MESSAGE, DATA)
#: The sealed column of a step row.
STEP_PLACES: Final = ("steps.result",)
#: The sealed columns of a question row.
INPUT_PLACES: Final = ("input_requests.params", "input_requests.response")


def resealed_row(
    sealing: Sealing, old: Sequence[str | None], places: Sequence[str], *keys: str
) -> tuple[list[str | None], int]:
    """A row's sealed columns sealed with the newest key, and how many changed.

    ``keys`` are the row's identity (task id, and step or question key) that
    complete each column's place.
    """
    new: list[str | None] = []
    changed = 0
    for value, column in zip(old, places, strict=True):
        if value is None or sealing.is_current(value):
            new.append(value)
        else:
            new.append(sealing.reseal(value, column, *keys))
            changed += 1
    return new, changed


def require_keyring(sealing: Sealing) -> str:
    """The prefix of the newest key's values; a keyring is required.

    Raises:
        ConfigurationError: there is no keyring.
    """
    prefix = sealing.newest_prefix
    if prefix is None:
        raise ConfigurationError(
            KEY_FILE_SETTING,
            "re-sealing needs a key file ([journal] encryption_key_file)",
        )
    return prefix


def key_prefix(key_id: str) -> str:
    """What values sealed with ``key_id`` start with."""
    return f"{PREFIX}{key_id}:"
