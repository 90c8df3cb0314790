"""The fake LM Studio itself: a client that hangs up mid-answer leaves no traceback in the
test output (the standard HTTP server would print one for every broken pipe)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
from fakes.lmstudio import FakeLMStudio


def _handlers_running() -> bool:
    return any("process_request_thread" in thread.name for thread in threading.enumerate())


def test_a_client_that_hangs_up_mid_answer_prints_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with FakeLMStudio(chat_delay=0.3) as lm:
        body = json.dumps({"model": "qwen/qwen3-coder-30b", "messages": [], "stream": True})
        host, port = lm.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        # Hang up at once, with a reset (linger 0): the fake's answer meets a closed socket.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        deadline = time.monotonic() + 10  # a bound for the handler to finish, not a timing
        while (not lm.chat_requests or _handlers_running()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lm.chat_requests, "the fake never received the request"
        assert not _handlers_running()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
