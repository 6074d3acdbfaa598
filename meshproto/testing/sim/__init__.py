"""A whole mesh in one deterministic loop: clients, the broker, the network, the clock.

Because the core is sans-IO, a test can own everything a real mesh leaves to
chance. :class:`Simulation` runs N client connections
(:class:`~meshproto.ClientConnection`) and one reference broker
(:class:`~meshproto.Broker`) in a single event loop in virtual time, injects
faults faster than real time, and checks the guarantees of
docs/protocol.md and docs/architecture.md continuously and once the mesh
has settled. Standard library only.

.. rubric:: What is simulated

**The network carries text frames over a simulated WebSocket**, not bytes:
each transport is a *link* carrying the core's text frames and the
WebSocket control frames (open, ping, pong, close) in both directions,
first in, first out each way, each frame with its own delay (a base latency
plus an exponential jitter, plus any delay fault), so frames of different
connections overtake each other and frames of one connection never do. The
WebSocket duties an adapter does (answering pings, echoing closes) are done
by the link. What the broker writes to a client that has stopped reading
waits on the link; the broker's side gives the socket up when what it wrote
in one go, with what its client left unread, exceeds a per-socket send
buffer, as ``meshproto_anyio``'s server does.

**Time and randomness belong to the simulation** and come from one seed:
one ``random.Random(seed)`` draws the run's parameters, the workload, the
fault schedule and every delay, and seeds every client's and every broker's
own generator. Virtual time ``t`` starts at 0. The broker's ``now`` is wall
time, ``T0 + t``; each client process's ``now`` is its own monotonic clock,
``t`` plus an offset of its own; its ``wall_time_ms`` (the hello's
timestamp) is ``(T0 + t + skew) * 1000`` with a skew of its own.

**Sessions and processes.** Each of the N clients is a *session* (an
application instance with a ``session_id``, some with a session key and
``session_hello``) of one of the mesh's members (some members have two
sessions). A session runs one *process* (one ``ClientConnection``) at a
time, two during a takeover; a crashed process is replaced by a new one,
usually with the same session id.

**The workload**, per session: direct messages to other members' keys, to
the member's own key (its other sessions) and to session keys; broadcasts
(``*``, ``@all``, ``#news``) and group messages (``@ops``, ``@dev``); status
changes (``working`` and ``dnd`` hold ``next`` and ``low`` messages,
``idle`` releases them); summaries; ``list_peers``. The application takes
every message as soon as it can, retries a send whose outcome is unknown or
that failed for a retryable reason (always under its ``client_message_id``),
and says its status whenever a process starts.

**The faults**, each chosen by the seeded schedule (``FAULT_KINDS``), about
one to three per virtual second:

* ``cut``: a link is cut at any point (both ends hear of it after a delay);
  besides, a write of a hello or a send, or the opening of a transport,
  sometimes arms a ``cut-targeted`` shortly after: mid-handshake, or with
  sends in flight;
* ``stall``: a dead NAT: the link silently carries nothing more, until each
  side's liveness timeout notices; ``partition``: a process's network is
  down for a while (its connects hang);
* ``delay``: a process's frames take up to 15 s longer for a while (longer
  than the ack timeout);
* ``restart``: the broker crashes, or shuts down, and a new ``Broker`` comes
  up over the same store after a while: what a durable store keeps (stored
  messages, dedupe records, last-seen times) survives, presence, claims and
  rate buckets do not, and every connection is lost;
* ``slow``: an application stops taking messages for up to 90 s: its inbox
  fills, its client stops reading, the broker's send buffer fills;
* ``skew``: a process's wall clock moves up to 59 s away from the broker's;
* ``resend``: an application sends an acknowledged message again under its
  ``client_message_id``;
* ``takeover``: another process starts the same session while the first
  still runs; ``crash``: a process dies (its inbox and outbox with it) and a
  new one starts, which re-sends what was pending if its application kept a
  journal.

After the run's fault budget is spent the network heals, the workload
stops, every status becomes ``idle`` and the mesh must settle: every
session open, every send resolved, every inbox empty, nothing left in the
broker's store.

.. rubric:: What is checked

Continuously: each process's :class:`~meshproto.testing.ClientOracle`
(every send resolves exactly once, bounds, one pending reconnect, no
message announced or handed over twice, acknowledgements only after the
hand-over, no internal error) unless ``oracle=False``; and the whole-mesh
invariants of :mod:`~meshproto.testing.sim._ledger`. At quiescence: nothing
lost, nothing unresolved, nothing left behind. Every 10 virtual seconds: the
broker's sockets are exactly the ones its server has open, the store keeps
its bound per member, and sockets, presences, claims and stored messages
stay within limits set by the mesh's size (the simulated memory is bounded
however long the run).

.. rubric:: The delivery promise, precisely (the reference broker, a durable store)

*Direct messages* (a 64-hex target) acknowledged ``queued: true``:

* were stored before the ack, and reach the application of **at least one**
  session entitled to them, as long as one keeps reconnecting and its
  application keeps taking messages (and the message does not expire first,
  ``store_ttl``, 7 days). A message to a member key is entitled to every
  session of that member except the one it was sent from; one to a session
  key, to that session only (it waits for it);
* reach each **process** (one ``ClientConnection``'s life) **at most once**
  (its dedupe window is the last 4,096 keys);
* reach a later process of the same session again only if an earlier one
  took it and its ``client_ack`` never reached the broker (it crashed, was
  taken over, or its link was cut first): at least once across processes.
  The broker never pushes a direct message after its recipient's ack has
  reached it, and never pushes ``next`` or ``low`` to a socket whose last
  status was ``working`` or ``dnd``;
* may reach **each** live session of the recipient member (it is pushed to
  every one that may have it, until the first ack deletes it).

So "exactly once" holds per member for a member with one session whose
processes do not die between taking a message and acknowledging it;
otherwise it is "at least once, and at most once per process". A send
whose outcome is unknown and that the application gave up on may or may
not have been delivered (at most once per process).

*Broadcasts, group and topic messages* are pushed once, at the moment the
broker accepts them, to the sockets live at that instant (in the group),
except the sending socket; they are never stored and never pushed again.
So each reaches a session **at most once**, never the sending session, and
never a session that was offline (or inside its grace window) then; one
whose link stays up and whose application keeps taking messages gets it,
because a client never drops a message.

*Members that go away*: their direct messages wait in the store until they
expire (``store_ttl``) and within the bound (``store_limit_per_member``,
beyond which sends to them are refused ``store_full``); a presence
disappears 90 s after its socket (``grace``), its messages do not. They are
pushed after the member's next ``hello_ack``. A re-send under the same
``client_message_id`` is acknowledged with the first ``messageId`` and makes
no second copy (``dedupe_ttl``, 24 h), across broker restarts.

A member's backlog may be far larger than its socket's send buffer: the
broker pushes at most its push window (a quarter of the buffer in the runs)
that the client is not known to have read, pings, and sends the next part
when the pong comes back, so the member gets all of it and the socket is
never dropped for it.

.. rubric:: Failures and replays

:meth:`Simulation.run` raises :class:`SimFailure` for anything that broke:
the first violation (and how many more), the one-line command that replays
the run exactly, and the events before it::

    python -m meshproto.testing.sim --seed 1234 --clients 8

``--faults 10000000`` runs seed after seed, 1,000 faults each, and ends
with ``sim: R runs, F faults, M messages, lost L, duplicated D``;
``--plant NAME`` plants one of the bugs of
:mod:`~meshproto.testing.sim._plants` to watch it being caught.
"""

from __future__ import annotations

from ._plants import PLANTS, planted
from ._runner import Totals, clients_for, run_seed, run_seeds
from ._world import DEFAULT_RUN_FAULTS, FAULT_KINDS, RunStats, SimFailure, Simulation

__all__ = [
    "DEFAULT_RUN_FAULTS",
    "FAULT_KINDS",
    "PLANTS",
    "RunStats",
    "SimFailure",
    "Simulation",
    "Totals",
    "clients_for",
    "planted",
    "run_seed",
    "run_seeds",
]
