"""``mcp-tasks journal keygen|rekey``: the encryption keys of a journal.

``keygen --key-file F`` appends a new random key to the key file (creating it,
mode 0600); it becomes the newest key, which every server seals new values
with from its next start. ``rekey --db DB --key-file F`` seals every stored
value again with the newest key, alongside running servers, and forgets the
keys no value uses any more: those may then leave the key file.

Exit codes: 0 done; 2 a bad command line, config or key file, or a key that
cannot open the journal; 3 the journal cannot be opened or read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks.journal import Resealed, open_journal
from mcp_tasks.journal._sealing import KEY_FILE_SETTING, Sealing, add_key, sealing_from
from mcp_tasks.ops import _operator

#: Rows re-sealed per transaction by ``rekey`` unless ``--batch`` says otherwise.
DEFAULT_BATCH = 200


def add_command(commands: Any, default_db: str) -> None:
    """Register ``journal keygen`` and ``journal rekey`` on the subparsers."""
    journal = commands.add_parser(
        "journal", help="the journal's encryption keys (keygen, rekey)"
    )
    verbs = journal.add_subparsers(dest="verb", required=True)
    keygen = verbs.add_parser(
        "keygen", help="append a new key to a key file (created 0600)"
    )
    keygen.add_argument("--key-file", type=Path, required=True, help="the key file")
    keygen.set_defaults(journal_action=_keygen)
    rekey = verbs.add_parser(
        "rekey",
        help="encrypt every stored value again with the newest key; forget unused keys",
    )
    rekey.add_argument(
        "--db", default=default_db, help="journal: a file path or database URL"
    )
    rekey.add_argument(
        "--key-file",
        type=Path,
        help="the key file (default: [journal] encryption_key_file of --config)",
    )
    rekey.add_argument("--config", type=Path, help="TOML config file (as serve's)")
    rekey.add_argument(
        "--batch",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help=f"rows per transaction (default {DEFAULT_BATCH})",
    )
    rekey.set_defaults(journal_action=_rekey)


def run(args: argparse.Namespace) -> int:
    """Run ``journal keygen`` or ``journal rekey``; return the exit code.

    Raises:
        ConfigurationError: the key file or config cannot be used (exit 2).
        JournalError: the journal cannot be opened or written (exit 3).
    """
    code: int = args.journal_action(args)
    return code


def _keygen(args: argparse.Namespace) -> int:
    path: Path = args.key_file
    key_id = add_key(path)
    print(
        f"added key {key_id} to {path}: servers started from now on encrypt new "
        "values with it (restart running ones, then run: mcp-tasks journal rekey)"
    )
    return 0


def _rekey(args: argparse.Namespace) -> int:
    settings = Settings.load(args.config)
    key_file: Path | None = args.key_file or settings.encryption_key_file
    if key_file is None:
        raise ConfigurationError(
            KEY_FILE_SETTING, "rekey needs --key-file or a config that names one"
        )
    sealing = sealing_from(key_file)
    _operator.require_existing(args.db)
    done = anyio.run(_reseal, args.db, settings, sealing, args.batch, backend="asyncio")
    newest = sealing.keyring.newest if sealing.keyring is not None else "?"
    line = f"re-encrypted {done.values} values with key {newest}"
    if done.skipped:
        line += f"; {done.skipped} rows changed meanwhile were left as written"
    print(line)
    if done.forgotten:
        print(
            f"no value uses key {', '.join(done.forgotten)} any more: it may be "
            f"removed from {key_file}"
        )
    return 0


async def _reseal(
    db: str, settings: Settings, sealing: Sealing, batch: int
) -> Resealed:
    async with open_journal(
        db, synchronous=settings.synchronous, sealing=sealing
    ) as journal:
        return await journal.reseal(batch)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
