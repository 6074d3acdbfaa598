"""The mesh side of ``meshproto mcp``: a client per joined mesh, and the five tools.

:class:`McpMesh` knows nothing of MCP (``_mcp`` puts it behind an MCP
connection). It holds one :func:`meshproto_anyio.connect` client per joined
mesh for the life of the process, and answers each tool call with a
:class:`Reply`: a text for the model, structured content where there is
some, and whether it is an error.

* An ``on_event`` hook per client keeps what an error must say (the last
  ``ReconnectScheduled`` cause and when the next attempt is due, the
  ``Closed`` reason), the display names of senders, and, for every
  ``MessageReceived`` or ``UnreadableMessage``, an :class:`Arrival`. The
  message itself waits, unacknowledged, in the client's inbox, in the order
  of :attr:`MeshLink.waiting`; :meth:`McpMesh.next_arrival` hands the
  arrivals, in order, to whoever sends the notifications.
* ``check_messages`` takes what is waiting from every inbox: that is the
  hand-over, when each message is acknowledged to the broker.
* A tool that needs the broker waits for a (re)connecting mesh at most
  :attr:`McpOptions.connect_wait`, then answers with what the connection
  is doing, in one line (:meth:`McpMesh.problem`). A full inbox stops its
  client reading the socket, which would hold back the answers to sends and
  peer lists too, so such calls are refused at once, saying to call
  ``check_messages`` first.
* ``send_message`` runs each send in a task of its own and remembers its
  outcome by ``client_message_id``, so a call that gives up waiting (the
  send goes on) can learn the outcome later under that id, without sending
  a second copy.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import ssl
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from meshproto import (
    Closed,
    ConnectionClosedError,
    ConnectionState,
    Event,
    HandshakeComplete,
    MessageReceived,
    Peer,
    ReconnectScheduled,
    RequestError,
    SystemMessage,
    UnreadableMessage,
)
from meshproto_anyio import Client, connect

from ._identity import Identity
from ._mcp_parts import (
    _EXPECTED_SEND_ERRORS,
    _REFUSED_PREFIX,
    _SEND_RECORDS,
    Arrival,
    McpOptions,
    MeshLink,
    Message,
    Reply,
    _dump,
    _error,
    _humane_cause,
    _inert,
    _SendRecord,
    _short,
    describe_target,
    send_failure,
    send_notes,
)
from ._mcp_tools import BadArgument, normalize_key
from ._names import NameProblem, Resolution, is_target_spec, resolve_target

__all__ = ["Arrival", "McpMesh", "McpOptions", "MeshLink", "Reply"]

logger = logging.getLogger("meshproto.mcp")

T = TypeVar("T")


class McpMesh:
    """The mesh side of the MCP server: a client per joined mesh, and the five tools.

    Make it with the identities to speak as, enter :meth:`running`, then call
    the tools (each returns a :class:`Reply`) and read :meth:`next_arrival`.
    """

    def __init__(
        self,
        identities: Sequence[Identity],
        *,
        url: str | None = None,
        display_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        options: McpOptions | None = None,
    ) -> None:
        if not identities:
            raise ValueError("McpMesh needs at least one identity")
        self.options = options or McpOptions()
        slugs = [identity.mesh.slug for identity in identities]
        self.links = []
        for identity in identities:
            mesh = identity.mesh
            # A mesh is called by its slug, or by its id where two slugs are alike.
            label = mesh.slug if slugs.count(mesh.slug) == 1 else mesh.mesh_id
            self.links.append(MeshLink(identity, label, url or mesh.broker_url))
        self._display_name = display_name
        self._ssl_context = ssl_context
        self._seq = 0
        self._arrivals: deque[Arrival] = deque()
        self._arrived: anyio.Event | None = None
        self._sends: OrderedDict[str, _SendRecord] = OrderedDict()
        self._tasks: TaskGroup | None = None

    @property
    def session_name(self) -> str:
        return self.links[0].identity.session_name

    @property
    def inbox_limit(self) -> int:
        return self.options.client.inbox_limit

    # --- running -----------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[McpMesh]:
        """Start a client per mesh (they connect in the background); close them on exit."""
        self._arrived = anyio.Event()
        async with AsyncExitStack() as stack:
            for link in self.links:
                link.client = await stack.enter_async_context(
                    connect(
                        **link.identity.connect_kwargs(link.url, self._display_name),
                        ssl_context=self._ssl_context,
                        options=self.options.client,
                        close_timeout=self.options.close_timeout,
                        on_event=partial(self._on_event, link),
                    )
                )
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
            try:
                yield self
            finally:
                self._tasks.cancel_scope.cancel()

    def _on_event(self, link: MeshLink, event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            link.ever_open = True
            link.cause = link.retry_at = None
            logger.info("mesh %s: connected to %s", link.label, link.url)
        elif isinstance(event, ReconnectScheduled):
            link.cause, link.retry_at = event.cause, event.at
            logger.info("mesh %s: %s; retrying in %.1f s", link.label, event.cause, event.delay)
        elif isinstance(event, Closed):
            link.closed = event
            if not event.by_user:
                logger.warning("mesh %s: stopped for good: %s", link.label, event.reason)
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            push = event.push
            if push.sender_name:
                link.names[push.sender_pubkey] = push.sender_name
            self._seq += 1
            arrival = Arrival(self._seq, link, event)
            link.waiting.append(arrival)
            self._arrivals.append(arrival)
            if self._arrived is not None:
                self._arrived.set()
                self._arrived = anyio.Event()
        elif isinstance(event, SystemMessage) and event.event in ("peer_joined", "peer_returned"):
            name = event.data.get("displayName") or event.data.get("name")
            key = event.data.get("pubkey")
            if isinstance(name, str) and isinstance(key, str):
                link.names[key] = name

    async def next_arrival(self) -> Arrival:
        """The next message that arrived (in order), waiting for one if need be."""
        while not self._arrivals:
            assert self._arrived is not None, "enter running() first"
            await self._arrived.wait()
        return self._arrivals.popleft()

    # --- the state of a mesh, in words --------------------------------------------

    def problem(self, link: MeshLink) -> str | None:
        """Why a call cannot use ``link`` now (one line), or ``None`` if it can."""
        client = link.client
        if client is None:
            return f"mesh {link.label}: not started"
        state = client.state
        if state is ConnectionState.OPEN:
            if len(link.waiting) >= self.inbox_limit:
                return (
                    f"mesh {link.label}: {len(link.waiting)} messages are waiting to be read, "
                    "so this session has stopped reading from the broker; call check_messages, "
                    "then try again"
                )
            return None
        if state is ConnectionState.CLOSED:
            return self._closed_words(link)
        if link.cause is None:
            return (
                f"mesh {link.label}: connecting to {link.url} (no answer yet); "
                "try again in a few seconds"
            )
        wait = (link.retry_at or 0.0) - anyio.current_time()
        when = f"retrying in {math.ceil(wait)} s" if wait >= 1 else "retrying now"
        return f"mesh {link.label}: connecting to {link.url}: {_humane_cause(link.cause)}, {when}"

    def _closed_words(self, link: MeshLink) -> str:
        closed = link.closed or (link.client.closed if link.client else None)
        if closed is None or closed.by_user:
            return f"mesh {link.label}: closed, because this server is shutting down"
        reason = _REFUSED_PREFIX.sub("", closed.reason)
        code = f" (close code {closed.code})" if closed.code is not None else ""
        if "session_replaced" in reason:
            advice = (
                f"another process connected as session {self.session_name!r}; stop it, "
                "or restart this server"
            )
        elif "revoked" in reason or closed.code == 4002:
            advice = "this member was removed from the mesh: ask its owner, then restart the server"
        else:
            advice = "check the joined mesh's record and the broker, then restart the server"
        return f"mesh {link.label}: refused for good: {reason}{code}; {advice}"

    async def _ready(self, link: MeshLink) -> str | None:
        """``problem(link)``, after waiting briefly for a mesh that is (re)connecting."""
        client = link.client
        if client is not None and client.state not in (
            ConnectionState.OPEN,
            ConnectionState.CLOSED,
        ):
            with anyio.move_on_after(self.options.connect_wait):
                await client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
        return self.problem(link)

    def _notes(self) -> list[str]:
        return [p for p in (self.problem(link) for link in self.links) if p is not None]

    def _waiting_hint(self) -> str:
        waiting = sum(len(link.waiting) for link in self.links)
        if not waiting:
            return ""
        return f"\n{waiting} new message{'s' if waiting != 1 else ''} waiting: call check_messages."

    # --- choosing a mesh -----------------------------------------------------------

    def _link_named(self, name: str) -> MeshLink | None:
        for link in self.links:
            if name in (link.label, link.identity.mesh.slug, link.identity.mesh.mesh_id):
                return link
        return None

    def _labels(self) -> str:
        return ", ".join(link.label for link in self.links)

    def _pick(self, mesh: str | None) -> list[MeshLink]:
        if mesh is None:
            return list(self.links)
        link = self._link_named(mesh)
        if link is None:
            raise BadArgument(f"no joined mesh is called {mesh!r}; joined: {self._labels()}")
        return [link]

    async def _each(
        self, links: Sequence[MeshLink], work: Callable[[MeshLink], Awaitable[T]]
    ) -> dict[MeshLink, T]:
        """``work(link)`` for every link at once; their results by link."""
        results: dict[MeshLink, T] = {}

        async def one(link: MeshLink) -> None:
            results[link] = await work(link)

        async with anyio.create_task_group() as tasks:
            for link in links:
                tasks.start_soon(one, link)
        return results

    # --- peers ---------------------------------------------------------------------

    async def _list(self, link: MeshLink) -> tuple[Peer, ...] | str:
        """The broker's peer list for ``link``, or why there is none (one line)."""
        problem = await self._ready(link)
        if problem is not None:
            return problem
        assert link.client is not None
        wait = self.options.request_wait
        try:
            with anyio.fail_after(wait):
                peers = await link.client.list_peers()
        except TimeoutError:
            return f"mesh {link.label}: the broker did not list the peers in {wait:g} s; try again"
        except RequestError as exc:
            return f"mesh {link.label}: the broker did not list the peers ({exc.reason}); try again"
        except ConnectionClosedError:
            return self._closed_words(link)
        link.learn(peers)
        return peers

    def _peer_record(self, link: MeshLink, peer: Peer) -> dict[str, Any]:
        return {
            "name": _inert(peer.display_name),
            "key": peer.pubkey,
            "member_key": peer.member_pubkey,
            "mesh": link.label,
            "status": peer.status,
            "summary": peer.summary,
            "groups": [group.name for group in peer.groups or ()],
            "online": peer.online,
            "connected_at": peer.connected_at,
            "you": peer.pubkey == link.session_key,
        }

    async def list_peers(self, mesh: str | None = None) -> Reply:
        links = self._pick(mesh)
        results = await self._each(links, self._list)
        records: list[dict[str, Any]] = []
        notes: list[str] = []
        for link in links:
            result = results[link]
            if isinstance(result, str):
                notes.append(result)
            else:
                records.extend(self._peer_record(link, peer) for peer in result)
        if notes and len(notes) == len(links):
            return _error("; ".join(notes))
        hint = self._waiting_hint().strip()
        if hint:
            notes.append(hint)
        data: dict[str, Any] = {"peers": records}
        if notes:
            data["notes"] = notes
        return Reply(_dump(data), data=data)

    async def _learn_names(self, link: MeshLink) -> None:
        """Refresh ``link``'s names from the broker (bounded, at most once a second)."""
        client = link.client
        if (
            client is None
            or client.state is not ConnectionState.OPEN
            or len(link.waiting) >= self.inbox_limit  # reading is paused: no answer would come
            or anyio.current_time() - link.learned_at < 1.0
        ):
            return
        link.learned_at = anyio.current_time()
        with anyio.move_on_after(self.options.name_wait):
            try:
                link.learn(await client.list_peers())
            except (RequestError, ConnectionClosedError) as exc:
                logger.debug("mesh %s: no peer list for names: %s", link.label, exc)

    async def learn_sender(self, arrival: Arrival) -> None:
        """Look the sender's display name up if it is not known yet (bounded)."""
        if arrival.sender_name is None:
            await self._learn_names(arrival.link)

    # --- send_message -----------------------------------------------------------------

    def _split_mesh(self, to: str) -> tuple[MeshLink | None, str]:
        prefix, colon, rest = to.partition(":")
        if colon:
            link = self._link_named(prefix)
            if link is not None:
                if not rest.strip():
                    raise BadArgument(
                        f"send_message: nothing after {prefix + ':'!r}; say who, e.g. "
                        f"'{prefix}:alice' or '{prefix}:*'"
                    )
                return link, rest.strip()
        return None, to

    async def _find_mesh(self, target: str) -> tuple[MeshLink, tuple[Peer, ...] | None] | Reply:
        """The one joined mesh where ``target`` (a name or a key) is, and its peer list."""
        if is_target_spec(target) and not re.fullmatch(r"[0-9a-f]{64}", target):
            first = self.links[0].label
            return _error(
                f"not sent: several meshes are joined ({self._labels()}); put the mesh first, "
                f"e.g. '{first}:{target}'"
            )
        results = await self._each(self.links, self._list)
        found: list[MeshLink] = []
        problems: list[str] = []
        for link in self.links:
            peers = results[link]
            if isinstance(peers, str):
                problems.append(peers)
            elif any(
                target in (p.pubkey, p.member_pubkey) or p.display_name == target for p in peers
            ):
                found.append(link)
        if len(found) == 1:
            peers = results[found[0]]
            return found[0], (peers if not isinstance(peers, str) else None)
        if found:
            names = ", ".join(link.label for link in found)
            return _error(
                f"not sent: {target!r} is on several joined meshes ({names}); put the mesh "
                f"first, e.g. '{found[0].label}:{target}'"
            )
        where = f"; also {'; '.join(problems)}" if problems else ""
        return _error(
            f"not sent: no peer called {target!r} is on any joined mesh ({self._labels()}); "
            f"see list_peers{where}"
        )

    async def send_message(
        self,
        to: str,
        message: str,
        priority: str = "next",
        client_message_id: str | None = None,
    ) -> Reply:
        if client_message_id is not None:
            record = self._sends.get(client_message_id)
            if record is not None and not (record.reported and record.message_id is None):
                # That send is under way, acknowledged, or ended unreported: say how it
                # stands, and send no second copy. After a failure was reported, resend.
                return await self._outcome(record, client_message_id)
        link, target = self._split_mesh(to)
        target = normalize_key(target)
        peers: tuple[Peer, ...] | None = None
        if link is None:
            if len(self.links) == 1:
                link = self.links[0]
            else:
                found = await self._find_mesh(target)
                if isinstance(found, Reply):
                    return found
                link, peers = found
        problem = await self._ready(link)
        if problem is not None:
            return _error(f"not sent: {problem}")
        if is_target_spec(target):
            resolution = Resolution(target, link.peers.get(target))
        else:
            if peers is None:
                listed = await self._list(link)
                if isinstance(listed, str):
                    return _error(f"not sent: {listed}")
                peers = listed
            try:
                resolution = resolve_target(target, peers, own_keys=link.own_keys)
            except NameProblem as exc:
                return _error(f"not sent: {exc}")
        return await self._send(link, resolution, message, priority, client_message_id)

    async def _send(
        self,
        link: MeshLink,
        resolution: Resolution,
        body: str,
        priority: str,
        client_message_id: str | None,
    ) -> Reply:
        cmid = client_message_id or secrets.token_hex(16)
        record = _SendRecord(link, describe_target(link, resolution))
        self._remember_send(cmid, record)
        assert self._tasks is not None, "enter running() first"
        self._tasks.start_soon(self._run_send, record, resolution.target, body, priority, cmid)
        return await self._outcome(record, cmid, resolution, priority)

    async def _outcome(
        self,
        record: _SendRecord,
        cmid: str,
        resolution: Resolution | None = None,
        priority: str = "next",
    ) -> Reply:
        """What became of ``record``'s send, waiting for it at most ``send_wait``."""
        link, who = record.link, record.who
        wait = self.options.send_wait
        with anyio.move_on_after(wait):
            await record.done.wait()
        if not record.done.is_set():
            state = self.problem(link) or "the broker has not answered"
            return _error(
                f"outcome unknown: no answer within {wait:g} s ({state}); the message is still "
                "queued and goes out when the link allows. Call send_message again with "
                f"client_message_id={cmid!r} to learn its outcome without a second copy"
            )
        record.reported = True
        if record.message_id is not None:
            notes = send_notes(link, resolution, priority) if resolution else []
            return Reply(
                f"sent to {who} in mesh {link.label}: the broker accepted it as "
                f"{record.message_id}"
                + "".join(f"\n{note}" for note in notes)
                + self._waiting_hint()
            )
        return send_failure(link, who, record.error, cmid, self._closed_words(link))

    def _remember_send(self, cmid: str, record: _SendRecord) -> None:
        self._sends[cmid] = record
        self._sends.move_to_end(cmid)
        while len(self._sends) > _SEND_RECORDS:
            oldest, first = next(iter(self._sends.items()))
            if not first.done.is_set():
                break
            del self._sends[oldest]

    async def _run_send(
        self, record: _SendRecord, target: str, body: str, priority: str, cmid: str
    ) -> None:
        client = record.link.client
        assert client is not None
        try:
            record.message_id = await client.send(target, body, priority, client_message_id=cmid)
        except Exception as exc:  # every outcome is reported, none ends the server
            if not isinstance(exc, _EXPECTED_SEND_ERRORS):
                logger.exception("mesh %s: unexpected error while sending", record.link.label)
            record.error = exc
        finally:
            record.done.set()

    # --- check_messages ------------------------------------------------------------------

    def message_record(self, arrival: Arrival) -> dict[str, Any]:
        message, push = arrival.message, arrival.message.push
        sender_key = push.sender_pubkey
        record: dict[str, Any] = {
            "mesh": arrival.link.label,
            "sender": _inert(arrival.sender_name),
            "sender_key": sender_key,
            "sender_member_key": push.sender_member_pubkey or arrival.link.members.get(sender_key),
            "kind": arrival.kind,
            "topic": push.topic,
            "priority": push.priority,
            "sent_at": push.created_at,
            "message_id": push.message_id,
            "client_message_id": push.client_message_id,
        }
        if isinstance(message, MessageReceived):
            record["text"] = message.text
            record["unreadable"] = None
        else:
            record["text"] = None
            record["unreadable"] = (
                f"this message could not be opened ({message.reason}); ask the sender to send "
                "it again"
            )
        record["notified"] = arrival.notified
        return record

    async def check_messages(self) -> Reply:
        # Before a mesh's first connection, wait for it briefly: what the broker
        # kept for this session arrives right after the hello.
        await self._each([link for link in self.links if not link.ever_open], self._ready)
        unnamed = {a.link for link in self.links for a in link.waiting if a.sender_name is None}
        if unnamed:
            await self._each(list(unnamed), self._learn_names)
        taken: list[Arrival] = []
        for link in self.links:
            taken.extend(await self._take(link))
        taken.sort(key=lambda arrival: arrival.seq)
        data: dict[str, Any] = {"messages": [self.message_record(a) for a in taken]}
        notes = self._notes()
        if notes:
            data["notes"] = notes
            if not taken and len(notes) == len(self.links):
                # Nothing to return, and no mesh could have brought anything.
                return _error(f"no messages, and {'; '.join(notes)}")
        return Reply(_dump(data), data=data)

    async def _take(self, link: MeshLink) -> list[Arrival]:
        """Take ``link``'s waiting messages from its client: the hand-over, and the acks."""
        client = link.client
        count = len(link.waiting)
        if client is None or not count:
            return []
        taken: list[Arrival] = []
        messages = client.messages()
        for _ in range(count):
            # Each is in the inbox already, so this returns at once; the bound
            # only guards against the two ever disagreeing.
            message: Message | None = None
            with anyio.move_on_after(1.0), suppress(StopAsyncIteration):
                message = await messages.__anext__()
            if message is None:
                logger.error("mesh %s: the inbox had fewer messages than expected", link.label)
                break
            arrival = link.waiting.popleft()
            if arrival.message is not message:  # pragma: no cover - a bug if it happens
                logger.error("mesh %s: inbox order differs from arrival order", link.label)
                arrival = Arrival(arrival.seq, link, message, arrival.notified)
            arrival.returned = True
            taken.append(arrival)
        return taken

    # --- status and summary --------------------------------------------------------------

    async def _apply_everywhere(
        self, what: str, apply: Callable[[Client], Awaitable[None]]
    ) -> Reply:
        async def one(link: MeshLink) -> str | None:
            problem = await self._ready(link)
            client = link.client
            assert client is not None
            if client.state is ConnectionState.CLOSED:
                return problem or self._closed_words(link)
            try:
                await apply(client)  # kept by the client, and sent after every hello_ack
            except ConnectionClosedError:
                return self._closed_words(link)
            if problem is not None and client.state is not ConnectionState.OPEN:
                return f"{problem} (it is kept, and sent once the mesh connects)"
            return None

        results = await self._each(self.links, one)
        problems = [p for p in (results[link] for link in self.links) if p is not None]
        applied = [link.label for link in self.links if results[link] is None]
        if problems:
            done = f"{what} on {', '.join(applied)}; " if applied else f"{what} nowhere yet; "
            return _error(done + "; ".join(problems))
        return Reply(f"{what} on {self._labels()}" + self._waiting_hint())

    async def set_status(self, status: str) -> Reply:
        return await self._apply_everywhere(
            f"status set to {status}", lambda client: client.set_status(status)
        )

    async def set_summary(self, summary: str) -> Reply:
        shown = summary if len(summary) <= 80 else summary[:77] + "..."
        return await self._apply_everywhere(
            f"summary set to {shown!r}", lambda client: client.set_summary(summary)
        )

    # --- the tools by name --------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> Reply:
        """Run tool ``tool`` with checked ``arguments`` (see :func:`parse_arguments`)."""
        if tool == "send_message":
            return await self.send_message(**arguments)
        if tool == "check_messages":
            return await self.check_messages()
        if tool == "list_peers":
            return await self.list_peers(**arguments)
        if tool == "set_summary":
            return await self.set_summary(**arguments)
        if tool == "set_status":
            return await self.set_status(**arguments)
        raise KeyError(tool)

    # --- notifications ------------------------------------------------------------------

    def channel_params(self, arrival: Arrival) -> dict[str, Any]:
        """The ``params`` of the ``notifications/claude/channel`` for ``arrival``."""
        message, push = arrival.message, arrival.message.push
        sender = _inert(arrival.sender_name) or _short(push.sender_pubkey)
        if len(self.links) > 1:
            sender = f"{sender} ({arrival.link.label})"
        if arrival.kind == "topic":
            sender = f"{sender} in #{_inert(push.topic)}"
        elif arrival.kind == "broadcast":
            sender = f"{sender} to all"
        tag = {"now": "[URGENT] ", "low": "[low] "}.get(push.priority, "")
        if isinstance(message, MessageReceived):
            content = f"{tag}{sender}: {message.text}"
        else:
            content = f"{tag}{sender}: [a message that could not be opened: {message.reason}]"
        meta = {
            "sender": _inert(arrival.sender_name) or _short(push.sender_pubkey),
            "sender_key": push.sender_pubkey,
            "mesh": arrival.link.label,
            "priority": push.priority,
            "kind": arrival.kind,
            "sent_at": push.created_at,
            "message_id": push.message_id,
        }
        if push.client_message_id:
            meta["client_message_id"] = push.client_message_id
        if push.topic is not None:
            meta["topic"] = push.topic
        return {"content": content, "meta": meta}
