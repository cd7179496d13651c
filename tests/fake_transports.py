"""A transport whose broker is up but has no worker on any queue: for exit code 5."""

from __future__ import annotations

from collections.abc import Callable

from micromessaging import NoWorkers
from micromessaging.transports.base import ClientTransport, Delivery, WorkerOptions, WorkerTransport


class NobodyHome(ClientTransport):
    async def connect(self) -> None:
        pass

    async def request(self, queue: str, body: bytes, deadline: float, trace=None) -> bytes:
        raise NoWorkers(queue, "no consumer")

    async def send(self, queue: str, body: bytes, deadline: float | None, trace=None) -> None:
        raise NoWorkers(queue)

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class NoWorker(WorkerTransport):
    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        raise NotImplementedError

    async def stop_receiving(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def client_transport(url: str) -> ClientTransport:
    return NobodyHome()


def worker_transport(url: str, options: WorkerOptions) -> WorkerTransport:
    return NoWorker()
