"""Key files, sealing and opening values, and the start-up key check (`_sealing`)."""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path

import pytest

from mcp_tasks._exceptions import ConfigurationError, JournalError
from mcp_tasks.journal._sealing import (
    NO_SEALING,
    PREFIX,
    Keyring,
    Sealing,
    add_key,
    check_keys,
    parse_keys,
    resealed_row,
    sealing_from,
)
from mcp_tasks.journal.sqlite._rows import change_from_row

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def ring(*keys: tuple[str, bytes]) -> Sealing:
    return Sealing(Keyring(Path("keys"), tuple(keys)))


def test_a_key_file_lists_keys_oldest_first_with_comments_and_blank_lines() -> None:
    text = f"# keys\n\nk1 {b64(KEY_A)}\n  k2   {b64(KEY_B)}  \n"
    assert parse_keys(text, Path("f")) == [("k1", KEY_A), ("k2", KEY_B)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k1\n", "line 1: expected '<key id> <base64 key>'"),
        (f"k 1 {b64(KEY_A)}\n", "line 1: expected"),
        (f"k/1 {b64(KEY_A)}\n", "line 1: expected"),
        ("k1 ###\n", "line 1: key 'k1' is not base64"),
        (f"k1 {b64(KEY_A[:16])}\n", "key 'k1' is 16 bytes, not 32"),
        (f"k1 {b64(KEY_A)}\nk1 {b64(KEY_B)}\n", "line 2: key id 'k1' appears twice"),
    ],
)
def test_a_malformed_key_file_names_the_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_keys(text, Path("f"))
    assert caught.value.key == "journal.encryption_key_file"


def test_a_missing_empty_or_unreadable_key_file_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="no key file there"):
        Keyring.load(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigurationError, match="holds no key"):
        Keyring.load(empty)
    with pytest.raises(ConfigurationError, match="cannot read"):
        Keyring.load(tmp_path)  # a folder


def test_a_key_file_open_to_others_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"k1 {b64(KEY_A)}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "mcp_tasks.journal"):
        assert Keyring.load(path).ids == ["k1"]
    assert "chmod 600" in caplog.text


def test_keygen_creates_the_file_private_and_appends_the_next_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys"
    assert add_key(path) == "k1"
    assert path.stat().st_mode & 0o777 == 0o600
    with path.open("a") as out:
        out.write(f"k7 {b64(KEY_A)}")  # no newline at the end, an odd id
    assert add_key(path) == "k8"
    keyring = Keyring.load(path)
    assert keyring.ids == ["k1", "k7", "k8"]
    assert keyring.newest == "k8"
    assert len({key for _, key in keyring.keys}) == 3


def test_a_value_opens_only_at_its_place_and_unaltered() -> None:
    sealing = ring(("k1", KEY_A))
    sealed = sealing.seal('{"a":1}', "tasks.arguments", "t1")
    assert sealed.startswith(f"{PREFIX}k1:")
    assert '"a"' not in sealed
    assert sealing.unseal(sealed, "tasks.arguments", "t1") == '{"a":1}'
    assert sealing.seal('{"a":1}', "tasks.arguments", "t1") != sealed  # fresh nonce
    for place in (("tasks.arguments", "t2"), ("tasks.outcome", "t1")):
        with pytest.raises(JournalError, match="does not open"):
            sealing.unseal(sealed, *place)
    body = sealed.rsplit(":", 1)[1]
    flipped = base64.b64decode(body)
    altered = bytes([flipped[-1] ^ 1])
    tampered = sealed[: -len(body)] + b64(flipped[:-1] + altered)
    with pytest.raises(JournalError, match="does not open"):
        sealing.unseal(tampered, "tasks.arguments", "t1")
    with pytest.raises(JournalError, match="does not open"):
        sealing.unseal(f"{PREFIX}k1:not base64", "tasks.arguments", "t1")


def test_places_are_unambiguous_whatever_the_ids_hold() -> None:
    sealing = ring(("k1", KEY_A))
    sealed = sealing.seal("x", "steps.result", "a:b", "c")
    with pytest.raises(JournalError):
        sealing.unseal(sealed, "steps.result", "a", "b:c")


def test_plaintext_passes_through_and_without_a_key_nothing_is_sealed() -> None:
    assert NO_SEALING.seal('{"a":1}', "p") == '{"a":1}'
    assert ring(("k1", KEY_A)).unseal('{"a":1}', "p") == '{"a":1}'
    sealed = ring(("k1", KEY_A)).seal("x", "p")
    with pytest.raises(JournalError, match="no \\[journal\\] encryption_key_file"):
        NO_SEALING.unseal(sealed, "p")
    with pytest.raises(JournalError, match="key 'k1', which is not in"):
        ring(("k2", KEY_B)).unseal(sealed, "p")


def test_rotation_seals_with_the_newest_and_opens_the_older() -> None:
    old = ring(("k1", KEY_A))
    both = ring(("k1", KEY_A), ("k2", KEY_B))
    earlier = old.seal("v", "p")
    assert both.unseal(earlier, "p") == "v"
    assert both.seal("v", "p").startswith(f"{PREFIX}k2:")
    assert not both.is_current(earlier)
    again = both.reseal(earlier, "p")
    assert both.is_current(again)
    assert again.startswith(f"{PREFIX}k2:")
    new, changed = resealed_row(both, [earlier, None, again, "{}"], ["p"] * 4)
    assert changed == 2  # the k1 value and the plaintext
    assert new[1] is None
    assert new[2] == again
    assert all(both.is_current(v) for v in new)


def test_the_start_up_check_refuses_what_cannot_open_the_journal() -> None:
    right = ring(("k1", KEY_A))
    recorded = {"k1": right.canary("k1")}
    assert check_keys(NO_SEALING, {}, "j") is None
    assert check_keys(right, {}, "j") == "k1"  # record its canary
    assert check_keys(right, recorded, "j") is None
    newer = ring(("k1", KEY_A), ("k2", KEY_B))
    assert check_keys(newer, recorded, "j") == "k2"
    with pytest.raises(ConfigurationError, match="no key file is configured"):
        check_keys(NO_SEALING, recorded, "j")
    with pytest.raises(ConfigurationError, match="wrong key"):
        check_keys(ring(("k1", KEY_B)), recorded, "j")
    with pytest.raises(ConfigurationError, match="'k1', which is not in keys"):
        check_keys(ring(("k2", KEY_B)), recorded, "j")


def test_no_key_file_setting_means_no_sealing(tmp_path: Path) -> None:
    assert sealing_from(None) is NO_SEALING
    path = tmp_path / "keys"
    add_key(path)
    assert sealing_from(path).enabled


def test_a_key_without_the_cryptography_package_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    add_key(path)
    # As if the package were not installed: importing it raises ImportError.
    monkeypatch.setitem(
        sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None
    )
    with pytest.raises(ConfigurationError, match=r"mcp-tasks\[encryption\]"):
        sealing_from(path)


def test_a_change_sealed_with_a_key_this_process_lacks_comes_without_its_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    newer = ring(("k1", KEY_A), ("k2", KEY_B))
    row = (
        7, "t1", "alice", "status", "working",
        newer.seal("a message", "status_message", "t1"), "claimed", 1.0,
        newer.seal('{"by":"server"}', "task_changes.data", "t1"),
    )  # fmt: skip
    assert change_from_row(row, newer).data == {"by": "server"}
    with caplog.at_level(logging.WARNING, "mcp_tasks.journal"):
        change = change_from_row(row, ring(("k1", KEY_A)))  # before its restart
    assert (change.task_id, change.reason) == ("t1", "claimed")
    assert (change.status_message, change.data) == (None, None)
    assert "key 'k2', which is not in" in caplog.text
