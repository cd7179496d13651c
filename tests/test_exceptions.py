"""The exception tree: what each error says, and what it carries."""

from __future__ import annotations

import pytest

from micromessaging import MicromessagingError, NoWorkers, RemoteError, TransportError


def test_no_workers_is_a_transport_error_naming_its_queue() -> None:
    error = NoWorkers("calc")
    assert isinstance(error, TransportError) and isinstance(error, MicromessagingError)
    assert error.queue == "calc"
    assert "'calc'" in str(error)


def test_no_workers_can_say_more() -> None:
    error = NoWorkers("calc", "no consumer on the queue")
    assert error.queue == "calc"
    assert str(error) == "no worker serves queue 'calc': no consumer on the queue"


def test_server_error_text_names_the_exception_type() -> None:
    error = RemoteError(-32000, "Server error", {"type": "ValueError", "message": "boom"})
    assert str(error) == "Server error (code -32000): ValueError: boom"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (RemoteError(-32602, "Invalid params", {"message": "missing 'b'"}),
         "Invalid params (code -32602): missing 'b'"),
        (RemoteError(4001, "insufficient funds", {"type": "x", "message": "y"}),
         "insufficient funds (code 4001): y"),
        (RemoteError(4002, "out of stock", 42), "out of stock (code 4002): 42"),
        (RemoteError(-32601, "Method not found"), "Method not found (code -32601)"),
        (RemoteError(-32000, "Server error", {"message": "no type"}),
         "Server error (code -32000): no type"),
    ],
)  # fmt: skip
def test_remote_error_text(error: RemoteError, text: str) -> None:
    assert str(error) == text
