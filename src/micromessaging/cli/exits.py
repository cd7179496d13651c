"""Exit codes, and the one place errors become a line on stderr and one of them.

| code | meaning |
|---|---|
| 0 | done (for ``worker`` and ``gateway``: stopped by SIGTERM or SIGINT, calls drained) |
| 1 | the service answered with an error |
| 2 | bad usage or configuration: an unknown option, a bad URL, a missing extra, a target
      that doesn't import |
| 3 | no reply before the timeout |
| 4 | the broker can't be reached, or the connection broke, or the peer sent non-JSON-RPC |
| 5 | the broker is up, but no worker serves the queue |
| 6 | worker processes kept crashing: the supervisor gave up (or had to kill them) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

import click
import orjson

from .. import (
    CallTimeout,
    ConfigurationError,
    ErrorCode,
    MicromessagingError,
    NoWorkers,
    RemoteError,
)
from .._settings import mask_password

EXIT_REMOTE_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_UNREACHABLE = 4
EXIT_NO_WORKERS = 5
EXIT_WORKERS_FAILED = 6
EXIT_INTERRUPTED = 130

# Fields of error data that the line above already says, or that are printed apart.
_SHOWN = frozenset({"message", "type", "method", "available", "traceback"})


class CommandError(click.ClickException):
    """An error a person can act on: one line on stderr, then exit with `exit_code`."""

    exit_code = EXIT_USAGE
    prefix = "error: "

    def __init__(self, message: str) -> None:
        super().__init__(self.prefix + message)

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message on stderr, as it is."""
        click.echo(self.format_message(), err=True, file=file)


class ServiceAnswered(CommandError):
    """The service answered with a JSON-RPC error (printed as ``error CODE: ...``)."""

    exit_code = EXIT_REMOTE_ERROR
    prefix = ""


class TimedOut(CommandError):
    """No reply before the timeout."""

    exit_code = EXIT_TIMEOUT
    prefix = "timeout: "


class Unreachable(CommandError):
    """The broker can't be reached, or the link broke."""

    exit_code = EXIT_UNREACHABLE


class NoWorkersServe(CommandError):
    """No worker serves the queue."""

    exit_code = EXIT_NO_WORKERS


class WorkersFailed(CommandError):
    """The supervisor gave up on its worker processes."""

    exit_code = EXIT_WORKERS_FAILED


def remote_error_text(error: RemoteError) -> str:
    """What a JSON-RPC error object says, for a person: code, message, then the data's detail."""
    text = f"error {error.code}: {error.message}"
    data = error.data
    if data is None:
        return text
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return f"{text}\n{_json(data)}"
    detail = data["message"]
    if error.code == ErrorCode.SERVER_ERROR and isinstance(data.get("type"), str):
        detail = f"{data['type']}: {detail}"
    lines = [f"{text}: {detail}"]
    rest = {key: value for key, value in data.items() if key not in _SHOWN}
    if rest:
        lines.append(_json(rest))
    if isinstance(data.get("traceback"), str):
        lines.append(data["traceback"].rstrip("\n"))
    return "\n".join(lines)


def missing_extra(what: str, error: ModuleNotFoundError, extra: str) -> CommandError:
    """The one-line error for `what` needing a package that an extra installs."""
    if error.name is None or error.name.startswith("micromessaging"):
        raise error  # our own module is missing: a bug, not a missing extra
    package = error.name.partition(".")[0]
    return CommandError(
        f'{what} needs the {package!r} package: pip install "micromessaging[{extra}]"'
    )


@contextlib.contextmanager
def errors_to_exits(broker: str | None = None) -> Iterator[None]:
    """Turn what micromessaging raises into a line on stderr and the documented exit code."""
    try:
        yield
    except RemoteError as exc:
        raise ServiceAnswered(remote_error_text(exc)) from exc
    except CallTimeout as exc:
        raise TimedOut(str(exc)) from exc
    except NoWorkers as exc:
        where = f" on {mask_password(broker)}" if broker else ""
        raise NoWorkersServe(
            f"{exc}{where}; start one: micromessaging worker MODULE:ATTR --queue {exc.queue}"
        ) from exc
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from exc
    except MicromessagingError as exc:  # TransportError, ProtocolError
        raise Unreachable(str(exc)) from exc


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
