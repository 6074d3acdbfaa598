"""Commands on the event loop: ``anyio.run``, with Ctrl-C and SIGTERM handled inside it.

Every command but ``send`` and ``peers`` runs here (``_app`` imports this
module for those commands only): ``listen``, ``broker``, ``mcp`` and ``demo`` wait on
several things at once, and ``keygen`` and ``mesh init`` are written the
same way. The one-shot commands run in the main thread on the blocking
client instead (:mod:`meshproto_cli._oneshot`), where the default Ctrl-C
and ``_app``'s SIGTERM handler end them; importing this module is what
loads ``anyio`` and its asyncio backend.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio._backends._asyncio  # anyio.run would load it: now, with the rest

from ._errors import Terminated, sole_exception

__all__ = ["STOP_GRACE", "StopRequest", "loop_command"]

#: Commands that stop by themselves on the first Ctrl-C or SIGTERM.
_GRACEFUL = frozenset({"broker", "listen"})
#: How long they may take before they are cancelled.
STOP_GRACE = 5.0


def _coroutine(name: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    if name == "broker":  # the only command that imports the reference broker
        from ._broker_command import cmd_broker  # noqa: PLC0415 (needs the optional extras)

        return cmd_broker
    if name == "demo":
        from ._demo import run_demo  # noqa: PLC0415

        async def demo(_: argparse.Namespace) -> int:
            return await run_demo()

        return demo
    if name == "mcp":
        from ._mcp import cmd_mcp  # noqa: PLC0415 (needs the mcp extra)

        return cmd_mcp
    from . import _commands  # noqa: PLC0415

    return {
        "listen": _commands.cmd_listen,
        "keygen": _commands.cmd_keygen,
        "mesh-init": _commands.cmd_mesh_init,
    }[name]


def loop_command(name: str) -> Callable[[argparse.Namespace], int]:
    """Command ``name``, its modules imported now, to run with ``anyio.run`` when called.

    Raises :class:`ImportError` if an optional extra it needs is missing.
    """
    coroutine = _coroutine(name)

    def run(args: argparse.Namespace) -> int:
        return anyio.run(_until_interrupted, coroutine, args)

    return run


class StopRequest:
    """The first Ctrl-C or SIGTERM, for a command that stops by itself (``args.stop_requested``).

    ``await wait()`` returns once it came; ``watch(scope)`` cancels ``scope``
    when it comes (at once if it already has).
    """

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._scopes: list[Any] = []

    def set(self) -> None:
        self._event.set()
        for scope in self._scopes:
            scope.cancel()

    def watch(self, scope: Any) -> None:
        self._scopes.append(scope)
        if self._event.is_set():
            scope.cancel()

    async def wait(self) -> None:
        await self._event.wait()


async def _until_interrupted(
    runner: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run the command until SIGINT or SIGTERM, which raise ``KeyboardInterrupt``, ``Terminated``.

    Handling the signals here, inside the event loop, makes Ctrl-C behave the
    same on asyncio and trio and on every Python (3.10's asyncio would
    otherwise surface it as a bare ``CancelledError``). ``broker`` and
    ``listen`` stop gracefully: the first signal sets ``args.stop_requested``
    (a :class:`StopRequest`), and they finish within :data:`STOP_GRACE` seconds
    (a broker closes every socket with 1001, a listener says goodbye); a
    second signal, or the end of the grace, cancels them. Any other command
    is cancelled at once.
    """
    outcome: list[int] = []
    failure: list[BaseException] = []
    received: list[int] = []
    args.stop_requested = stop = StopRequest()
    graceful = args.run in _GRACEFUL
    async with anyio.create_task_group() as tasks:

        async def cancel_later() -> None:
            await anyio.sleep(STOP_GRACE)
            tasks.cancel_scope.cancel()

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    received.append(signum)
                    stop.set()
                    if not graceful or len(received) > 1:
                        tasks.cancel_scope.cancel()
                        return
                    tasks.start_soon(cancel_later)

        async def work() -> None:
            try:
                outcome.append(await runner(args))
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(sole_exception(exc))
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch_signals)
        tasks.start_soon(work)
    if received:
        if received[0] == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt
    if failure:
        raise failure[0]
    return outcome[0]
