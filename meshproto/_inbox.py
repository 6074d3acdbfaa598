"""The receiving side of a client connection: dedupe, the inbox, and when to acknowledge.

Theory of operation
===================

The broker delivers at least once (docs/protocol.md §4.2): it may push a
message again, and it forgets a message only when the receiver answers with
``client_ack`` (§4.3). So a receiver must say ``client_ack`` only for a
message it will never lose, and it must never hand the same message to the
application twice. :class:`Inbox` keeps both promises for one connection.

Every push is known by its dedupe key (``client_message_id``, else
``messageId``). A key is in one of four states:

* *unknown*: the push is new. It becomes a message (its body opened) and
  is either *waiting* in the inbox (``limit > 0``) or handed over at once as
  an event (``limit == 0``, *handed over*);
* *waiting*: the message sits in the inbox, not yet taken. A duplicate push
  of it is not delivered and **not acknowledged**: the acknowledgement (one
  ``client_ack`` per broker ``messageId`` seen for it) is owed, and leaves
  only when the message is taken and acknowledged;
* *taken, unacknowledged*: the application took the message without
  acknowledging it (``take(..., acknowledge=False)``), because it has yet to
  use it (print it, store it). It is not handed over again; a duplicate push
  of it is treated as for a waiting message (its acknowledgement is owed);
  the owed acknowledgements leave when the application calls
  :meth:`Inbox.acknowledge`. If it never does, the broker keeps the message
  and pushes it again to a later connection: a failure between the take and
  the use loses nothing;
* *handed over*: the application has it, acknowledged (taken with
  ``acknowledge=True``, acknowledged after a take, or given as an event). A
  duplicate push is acknowledged at once and not delivered.

So ``client_ack`` is written exactly when a message reaches the
application's hands and it says so (a take that acknowledges, or
:meth:`Inbox.acknowledge`), or when the broker re-pushes one that already
has. The inbox never drops a message: instead, while ``limit`` messages or
more wait in it, the connection asks its adapter to stop reading the socket
(:attr:`Inbox.full`), which pushes back on the broker through TCP. It can
grow past ``limit`` by what one read of the socket had already brought in.

A message taken without acknowledging leaves its place in the inbox at once:
the application is using it, and may wait on the broker meanwhile (a peer
list, the ack of a reply), so the socket must be read. What it holds is
bounded apart: ``window - limit`` messages held unacknowledged at once also
stop the reading (:attr:`Inbox.hold_limit`), so that an application that
never acknowledges stops the reading rather than growing the memory
without bound.

Acknowledging a message that is not taken-unacknowledged (one still
waiting, one already acknowledged, one this inbox never held, or another
connection's copy of one it holds) is the caller's error:
:class:`~meshproto.LocalProtocolError`, and nothing changes.

The ``window`` keys handed over last are remembered, and the keys of the
messages waiting or held besides: those are never forgotten, and take no
room from the others, so a message acknowledged a moment ago is still known
when the broker pushes it again, however many are held. So at most
``window + limit + hold_limit`` keys (twice the window), plus what one read
brought in. Forgetting costs the same however many messages are held: the
two kinds of key are kept apart.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque

from ._codec import frame_text
from ._errors import LocalProtocolError
from ._events import MessageReceived, UnreadableMessage
from ._frames import ClientAck, Push
from ._seams import OpenError, Sealer

__all__ = ["Inbox", "Message", "ack_for", "open_message"]

# The client core's logger: a sealer's failure is the client's to report.
logger = logging.getLogger("meshproto.client")

Message = MessageReceived | UnreadableMessage


class _Waiting:
    """A message not yet acknowledged (waiting, or taken) and the acknowledgements owed for it."""

    __slots__ = ("acks", "key", "message")

    def __init__(self, key: str, message: Message, ack: str) -> None:
        self.key = key
        self.message = message
        self.acks = [ack]


def open_message(sealer: Sealer, push: Push) -> Message:
    """The message a push carries, its body opened by ``sealer``."""
    try:
        body = sealer.open(push)
    except OpenError as exc:
        return UnreadableMessage(push.message_id, push.sender_pubkey, str(exc), push)
    except Exception as exc:  # a sealer bug costs this one message, nothing more
        logger.exception("the sealer failed to open message %s", push.message_id)
        reason = f"the sealer failed: {exc!r}"
        return UnreadableMessage(push.message_id, push.sender_pubkey, reason, push)
    return MessageReceived(
        push.message_id,
        push.client_message_id,
        push.sender_pubkey,
        push.priority,
        body,
        push.created_at,
        push,
    )


_client_ack_text = frame_text(ClientAck)


def ack_for(push: Push) -> str:
    """The text of the ``client_ack`` that answers ``push`` (what is kept, and written)."""
    return _client_ack_text(push.client_message_id, push.message_id)


class Inbox:
    """Dedupe, the bounded inbox and the acknowledgements owed; see the module docstring."""

    __slots__ = ("_handed", "_pending", "_queue", "_taken", "duplicates", "limit", "window")

    def __init__(self, *, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self._queue: deque[_Waiting] = deque()
        # Waiting or taken-unacknowledged, by key: never forgotten.
        self._pending: dict[str, _Waiting] = {}
        # The taken-unacknowledged among them, in the order taken.
        self._taken: dict[str, _Waiting] = {}
        # Handed-over keys, oldest first: the ones the window forgets.
        self._handed: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def unacknowledged(self) -> int:
        """How many messages were taken without acknowledging, and not acknowledged since."""
        return len(self._taken)

    @property
    def hold_limit(self) -> int:
        """How many taken-unacknowledged messages stop the reading: ``window - limit``."""
        return self.window - self.limit

    @property
    def full(self) -> bool:
        """Whether to read no more: ``limit`` messages waiting, or ``hold_limit`` held."""
        return self.limit > 0 and (
            len(self._queue) >= self.limit or len(self._taken) >= self.hold_limit
        )

    @property
    def remembered(self) -> int:
        """How many dedupe keys are remembered."""
        return len(self._pending) + len(self._handed)

    def duplicate(self, push: Push) -> tuple[bool, str | None]:
        """Whether ``push`` was seen before, and the ``client_ack`` to write for it now.

        A duplicate of a waiting or taken-unacknowledged message owes its
        acknowledgement to the acknowledging take, or to :meth:`acknowledge`.
        """
        key = push.dedupe_key
        waiting = self._pending.get(key)
        if waiting is None:
            if key not in self._handed:
                return False, None
            self.duplicates += 1
            return True, ack_for(push)
        self.duplicates += 1
        ack = ack_for(push)
        if ack not in waiting.acks:
            waiting.acks.append(ack)
        return True, None

    def handed_over(self, push: Push) -> None:
        """Remember ``push`` as handed over (a system message, or an event-mode message)."""
        self._handed[push.dedupe_key] = None
        self._trim()

    def put(self, push: Push, message: Message) -> None:
        """Keep ``message`` (from ``push``, not a duplicate) waiting in the inbox."""
        waiting = _Waiting(push.dedupe_key, message, ack_for(push))
        self._pending[waiting.key] = waiting
        self._queue.append(waiting)
        self._trim()

    def take(
        self, limit: int | None, *, acknowledge: bool = True
    ) -> tuple[list[Message], list[str]]:
        """Hand over up to ``limit`` messages, oldest first, with the acknowledgements now due.

        With ``acknowledge=False`` none is due: each message taken becomes
        taken-unacknowledged, its acknowledgements owed to :meth:`acknowledge`.
        """
        queue = self._queue
        count = len(queue) if limit is None else max(0, min(limit, len(queue)))
        messages: list[Message] = []
        acks: list[str] = []
        for _ in range(count):
            waiting = queue.popleft()
            messages.append(waiting.message)
            if acknowledge:
                del self._pending[waiting.key]
                self._handed[waiting.key] = None
                acks.extend(waiting.acks)
            else:
                self._taken[waiting.key] = waiting
        if acknowledge:
            self._trim()
        return messages, acks

    def holds_another_copy(self, message: Message) -> bool:
        """Whether a message of ``message``'s key is held here, but not ``message`` itself."""
        push = getattr(message, "push", None)
        waiting = self._taken.get(push.dedupe_key) if isinstance(push, Push) else None
        return waiting is not None and waiting.message is not message

    def acknowledge(self, message: Message) -> list[str]:
        """The acknowledgements now due for ``message``, taken without acknowledging.

        It becomes handed over. Raises :class:`~meshproto.LocalProtocolError`,
        changing nothing, if ``message`` is not taken-unacknowledged here:
        the very object :meth:`take` returned, not another connection's copy.
        """
        if not isinstance(message, (MessageReceived, UnreadableMessage)):
            raise LocalProtocolError(
                f"acknowledge() takes a message that take_messages() returned, "
                f"not {type(message).__name__}"
            )
        key = message.push.dedupe_key
        waiting = self._taken.get(key)
        if waiting is None or waiting.message is not message:
            if waiting is not None:
                why = "that copy was not taken from this connection"
            elif key in self._pending:
                why = "not taken yet"
            elif key in self._handed:
                why = "already acknowledged"
            else:
                why = "never taken from this connection, or acknowledged long ago"
            raise LocalProtocolError(f"cannot acknowledge message {key}: {why}")
        del self._taken[key]
        del self._pending[key]
        self._handed[key] = None
        self._trim()
        return waiting.acks

    def _trim(self) -> None:
        handed = self._handed
        while len(handed) > self.window:
            handed.popitem(last=False)
