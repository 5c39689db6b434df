"""The response-mode seam refuses to start on an SDK that moved its internals."""

from __future__ import annotations

import pytest
from mcp.server.streamable_http import StreamableHTTPServerTransport

from mcp_tasks.binding import _response_mode


def test_the_installed_sdk_has_what_the_seam_relies_on() -> None:
    _response_mode.check_sdk()


def test_a_missing_sdk_method_fails_at_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(StreamableHTTPServerTransport, "_run_sse_writer")
    with pytest.raises(_response_mode.SdkChangedError, match="_run_sse_writer"):
        _response_mode.check_sdk()
