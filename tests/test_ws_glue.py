"""The shared WebSocket glue, in memory: WsConnection pairs talking through byte
buffers, and the client and broker drivers with no sockets at all."""

from __future__ import annotations

import json
import random
import struct
import tracemalloc

import pytest
import wsproto
import wsproto.events as wse
from hypothesis import given
from hypothesis import strategies as st

from meshproto import (
    AcceptingVerifier,
    Backoff,
    Broker,
    BrokerOptions,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    ConnectionState,
    LocalProtocolError,
    ReconnectScheduled,
    SendAcked,
    SendFailed,
    StaticRegistry,
    SystemMessage,
)
from meshproto.testing import FakeSigner
from meshproto_ws import (
    CLIENT_MAX_MESSAGE_BYTES,
    SERVER_MAX_MESSAGE_BYTES,
    BinaryReceived,
    BrokerDriver,
    ClientDriver,
    Closed,
    CloseSocket,
    Opened,
    OpenSocket,
    PingReceived,
    PongReceived,
    SocketCommand,
    TextReceived,
    WriteBytes,
    WsAddress,
    WsConnection,
    WsEvent,
    WsState,
    parse_ws_url,
)
from meshproto_ws._frames import client_text_frame

ADDRESS = WsAddress("broker.test", 7900, False, "/ws")


def pipe(src: WsConnection, dst: WsConnection) -> list[WsEvent]:
    return dst.receive_data(src.data_to_send())


def open_pair(
    *, client_cap: int | None = None, server_cap: int | None = None
) -> tuple[WsConnection, WsConnection]:
    client = WsConnection.client(ADDRESS, max_message_bytes=client_cap)
    server = WsConnection.server(max_message_bytes=server_cap)
    assert pipe(client, server) == [Opened("/ws")]
    assert pipe(server, client) == [Opened("/ws")]
    return client, server


def raw_client_frames(*events: wse.Event) -> tuple[WsConnection, bytes]:
    """An open server WsConnection and the bytes a raw wsproto client sends for ``events``."""
    raw = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = WsConnection.server(max_message_bytes=1000)
    server.receive_data(raw.send(wse.Request(host="broker.test", target="/ws")))
    raw.receive_data(server.data_to_send())
    assert [type(e) for e in raw.events()] == [wse.AcceptConnection]
    return server, b"".join(raw.send(event) for event in events)


def unmasked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + mask + body


# --- URLs ---------------------------------------------------------------------------


def test_url_port_defaults_to_80_for_ws_and_443_for_wss() -> None:
    assert parse_ws_url("ws://h.example") == WsAddress("h.example", 80, False, "/ws")
    assert parse_ws_url("wss://h.example") == WsAddress("h.example", 443, True, "/ws")
    assert parse_ws_url("ws://127.0.0.1:7900/ws").port == 7900


def test_url_keeps_path_and_query_and_builds_host_header() -> None:
    address = parse_ws_url("wss://h.example:8443/other?x=1")
    assert address.target == "/other?x=1"
    assert address.host_header == "h.example:8443"
    assert parse_ws_url("wss://h.example/ws").host_header == "h.example"
    assert parse_ws_url("ws://[::1]:7900/ws").host_header == "[::1]:7900"
    assert parse_ws_url("ws://[::1]:7900/ws").url == "ws://[::1]:7900/ws"


@pytest.mark.parametrize(
    "url",
    ["http://h/ws", "h:7900", "ws:///ws", "ws://h:99999/ws", "ws://u:p@h/ws", "ws://h/ws#x"],
)
def test_url_other_than_ws_or_wss_is_refused(url: str) -> None:
    with pytest.raises(LocalProtocolError):
        parse_ws_url(url)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ws://" + "a" * 64 + "/ws", "the host cannot be looked up"),  # a DNS label is 1-63
        ("ws://x." + "a" * 300 + "/ws", "the host cannot be looked up"),
        ("ws://a..b/ws", "the host cannot be looked up"),
        ("ws://h/a b", "the URL path must be printable ASCII without spaces"),
        ("ws://h/a\x01b", "the URL path must be printable ASCII without spaces"),
        ("ws://h/ws?a=\x7f", "the URL path must be printable ASCII without spaces"),
    ],
)
def test_url_that_no_connection_could_use_is_refused_before_connecting(
    url: str, complaint: str
) -> None:
    # Each once reached the resolver or the HTTP request as it was, and raised
    # there: a UnicodeError from getaddrinfo, h11's "Illegal target characters".
    with pytest.raises(LocalProtocolError, match=complaint):
        parse_ws_url(url)


def test_url_with_a_long_or_international_host_that_resolves_is_kept() -> None:
    assert parse_ws_url("ws://" + "a" * 63 + ".example/ws").host == "a" * 63 + ".example"
    assert parse_ws_url("ws://bücher.example/ws").host == "bücher.example"
    assert parse_ws_url("ws://[::1]/ws").host == "::1"
    assert parse_ws_url("ws://h/p%20q?x=1&y=%7E").target == "/p%20q?x=1&y=%7E"


# --- handshake ------------------------------------------------------------------------


def test_handshake_opens_both_sides_on_path_ws() -> None:
    client = WsConnection.client(ADDRESS)
    request = client.data_to_send()
    assert request.startswith(b"GET /ws HTTP/1.1\r\n")
    assert b"host: broker.test:7900\r\n" in request.lower()
    server = WsConnection.server()
    assert server.receive_data(request) == [Opened("/ws")]
    assert client.receive_data(server.data_to_send()) == [Opened("/ws")]
    assert client.state is WsState.OPEN and server.state is WsState.OPEN


def test_handshake_works_byte_by_byte() -> None:
    client = WsConnection.client(ADDRESS)
    server = WsConnection.server()
    events: list[WsEvent] = []
    for byte in client.data_to_send():
        events += server.receive_data(bytes([byte]))
    assert events == [Opened("/ws")]


def test_server_refuses_other_paths_with_404() -> None:
    client = WsConnection.client(WsAddress("broker.test", 80, False, "/elsewhere"))
    server = WsConnection.server()
    (closed,) = pipe(client, server)
    assert isinstance(closed, Closed) and closed.code is None and not closed.by_peer
    assert server.state is WsState.CLOSED
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 404 ")
    (refused,) = client.receive_data(response)
    assert refused == Closed(None, "handshake refused: HTTP 404", True)
    assert client.state is WsState.CLOSED


def test_server_answers_garbage_with_400_and_closes() -> None:
    server = WsConnection.server()
    (closed,) = server.receive_data(b"\x16\x03\x01 definitely not http\r\n\r\n")
    assert isinstance(closed, Closed) and closed.code is None and not closed.by_peer
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is WsState.CLOSED
    assert server.receive_data(b"more garbage") == []


def test_server_refuses_a_plain_http_get_with_400() -> None:
    server = WsConnection.server()
    (closed,) = server.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(closed, Closed)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")


def test_frames_sent_right_behind_the_request_are_not_lost() -> None:
    client = WsConnection.client(ADDRESS)
    request = client.data_to_send()
    frames = client_text_frame("first", b"abcd") + client_text_frame("second", b"efgh")
    server = WsConnection.server()
    assert server.receive_data(request + frames[:-3]) == [Opened("/ws"), TextReceived("first")]
    assert server.receive_data(frames[-3:]) == [TextReceived("second")]


def test_frames_sent_right_behind_the_acceptance_are_not_lost() -> None:
    client = WsConnection.client(ADDRESS)
    server = WsConnection.server()
    pipe(client, server)
    server.send_text("early")
    server.send_ping(b"p")
    accepted = server.data_to_send()
    assert client.receive_data(accepted) == [
        Opened("/ws"),
        TextReceived("early"),
        PingReceived(b"p"),
    ]


@pytest.mark.parametrize("header", [b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_server_refuses_an_upgrade_request_with_a_body_with_400(header: bytes) -> None:
    request = WsConnection.client(ADDRESS).data_to_send()
    with_body = request.replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n", 1) + b"abc"
    server = WsConnection.server()
    (closed,) = server.receive_data(with_body)
    assert closed == Closed(None, "bad handshake: an upgrade request with a body", False)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is WsState.CLOSED


def test_eof_during_handshake_reports_closed() -> None:
    server = WsConnection.server()
    server.receive_data(b"GET /ws HTT")
    assert server.receive_data(None) == [
        Closed(None, "connection closed without a close frame", True)
    ]


# --- messages ---------------------------------------------------------------------------


def test_text_travels_both_ways() -> None:
    client, server = open_pair()
    assert client.send_text('{"type": "hello"}')
    assert pipe(client, server) == [TextReceived('{"type": "hello"}')]
    assert server.send_text("héllo ✓")
    assert pipe(server, client) == [TextReceived("héllo ✓")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_001])
def test_client_text_frames_of_every_length_class_arrive_whole(size: int) -> None:
    client, server = open_pair(server_cap=100_000)
    text = "é" * (size // 2) + "a" * (size % 2)  # exactly ``size`` bytes of UTF-8
    assert len(text.encode()) == size
    assert client.send_text(text)
    assert pipe(client, server) == [TextReceived(text)]


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_client_text_frames_are_masked_and_read_back_by_any_server(text: str) -> None:
    raw = wsproto.WSConnection(wsproto.ConnectionType.SERVER)  # wsproto's own, not ours
    client = WsConnection.client(ADDRESS)
    raw.receive_data(client.data_to_send())
    (request,) = raw.events()
    assert isinstance(request, wse.Request)
    client.receive_data(raw.send(wse.AcceptConnection()))
    for _ in range(2):
        assert client.send_text(text)
        frame = client.data_to_send()
        assert frame[1] & 0x80  # masked, as RFC 6455 requires of a client
        raw.receive_data(frame)
        (message,) = raw.events()
        assert isinstance(message, wse.TextMessage) and message.data == text


def test_each_client_frame_has_its_own_masking_key() -> None:
    client, _ = open_pair()
    keys = set()
    for _ in range(20):
        client.send_text("x" * 10)
        keys.add(client.data_to_send()[2:6])
    assert len(keys) == 20


def test_message_split_across_reads_is_delivered_once_complete() -> None:
    client, server = open_pair()
    client.send_text("x" * 300)
    events: list[WsEvent] = []
    for byte in client.data_to_send():
        events += server.receive_data(bytes([byte]))
    assert events == [TextReceived("x" * 300)]


def test_fragmented_text_is_reassembled() -> None:
    server, data = raw_client_frames(
        wse.TextMessage(data="one ", message_finished=False),
        wse.Ping(payload=b"p"),
        wse.TextMessage(data="two ", message_finished=False),
        wse.TextMessage(data="three", message_finished=True),
    )
    events = server.receive_data(data)
    assert events == [PingReceived(b"p"), TextReceived("one two three")]


def test_binary_message_is_reported() -> None:
    server, data = raw_client_frames(wse.BytesMessage(data=b"\x00\x01"))
    assert server.receive_data(data) == [BinaryReceived(b"\x00\x01")]


def test_ping_is_answered_with_a_pong() -> None:
    client, server = open_pair()
    assert server.send_ping(b"are you there")
    assert pipe(server, client) == [PingReceived(b"are you there")]
    assert pipe(client, server) == [PongReceived(b"are you there")]


# --- closing ----------------------------------------------------------------------------


def test_peer_close_is_echoed_and_reported_once() -> None:
    client, server = open_pair()
    client.close(1000, "bye")
    assert client.state is WsState.CLOSING
    assert pipe(client, server) == [Closed(1000, "bye", True)]
    assert server.state is WsState.CLOSED
    # The echo completes the handshake on the side that started it, silently.
    assert pipe(server, client) == []
    assert client.state is WsState.CLOSED


def test_nothing_is_delivered_or_sent_while_closing() -> None:
    client, server = open_pair()
    server.send_text("late")
    client.close(1001, "going away")
    assert not client.send_text("no")
    assert not client.send_ping()
    assert pipe(server, client) == []


def test_close_before_the_handshake_gives_up_quietly() -> None:
    client = WsConnection.client(ADDRESS)
    client.data_to_send()
    client.close(1000, "never mind")
    assert client.state is WsState.CLOSED
    assert client.data_to_send() == b""


def test_eof_reports_a_close_without_a_code() -> None:
    client, _ = open_pair()
    assert client.receive_data(None) == [
        Closed(None, "connection closed without a close frame", True)
    ]
    assert client.receive_data(None) == []
    assert client.receive_data(b"anything") == []


def test_eof_after_our_close_is_not_reported() -> None:
    client, _ = open_pair()
    client.close(1000, "")
    assert client.receive_data(None) == []
    assert client.state is WsState.CLOSED


def test_unmasked_client_frame_is_a_protocol_error_1002() -> None:
    server, _ = raw_client_frames()
    (closed,) = server.receive_data(unmasked_frame(0x1, b"hi"))
    assert isinstance(closed, Closed)
    assert closed.code == 1002 and not closed.by_peer
    assert server.state is WsState.CLOSING
    assert server.data_to_send()[:1] == b"\x88"  # a close frame went out


def test_invalid_utf8_text_closes_with_1007() -> None:
    server, _ = raw_client_frames()
    (closed,) = server.receive_data(masked_frame(0x1, b"\xff\xfe"))
    assert isinstance(closed, Closed) and closed.code == 1007


def test_frames_after_a_protocol_error_are_dropped() -> None:
    server, data = raw_client_frames(wse.TextMessage(data="after"))
    events = server.receive_data(unmasked_frame(0x1, b"bad") + data)
    assert len(events) == 1 and isinstance(events[0], Closed)


# --- the message cap --------------------------------------------------------------------


def test_default_caps() -> None:
    assert WsConnection.server().max_message_bytes == SERVER_MAX_MESSAGE_BYTES == 1_048_576
    assert WsConnection.client(ADDRESS).max_message_bytes == CLIENT_MAX_MESSAGE_BYTES
    assert CLIENT_MAX_MESSAGE_BYTES > 65_536


def test_message_at_the_cap_is_delivered() -> None:
    client, server = open_pair(server_cap=1000)
    client.send_text("é" * 500)  # 1000 bytes of UTF-8
    assert pipe(client, server) == [TextReceived("é" * 500)]


def test_message_over_the_cap_closes_with_1009() -> None:
    client, server = open_pair(server_cap=1000)
    client.send_text("x" * 1001)
    (closed,) = pipe(client, server)
    assert closed == Closed(1009, "message too big: over 1000 bytes", False)
    assert server.state is WsState.CLOSING
    # The peer sees the 1009 and echoes it; that completes the close.
    (peer_view,) = pipe(server, client)
    assert isinstance(peer_view, Closed) and peer_view.code == 1009 and peer_view.by_peer
    assert pipe(client, server) == []
    assert server.state is WsState.CLOSED


def test_cap_counts_every_fragment_of_a_message() -> None:
    server, data = raw_client_frames(
        *(wse.TextMessage(data="y" * 300, message_finished=False) for _ in range(3)),
        wse.TextMessage(data="y" * 300, message_finished=True),
    )
    (closed,) = server.receive_data(data)
    assert isinstance(closed, Closed) and closed.code == 1009


def test_cap_closes_before_the_whole_message_has_arrived() -> None:
    client, server = open_pair(server_cap=1000)
    client.send_text("z" * 50_000)
    data = client.data_to_send()
    (closed,) = server.receive_data(data[:2000])
    assert isinstance(closed, Closed) and closed.code == 1009
    assert server.receive_data(data[2000:]) == []


def test_client_cap_applies_to_what_the_server_sends() -> None:
    client, server = open_pair(client_cap=100)
    server.send_text("b" * 101)
    (closed,) = pipe(server, client)
    assert isinstance(closed, Closed) and closed.code == 1009 and not closed.by_peer


def test_binary_messages_are_capped_too() -> None:
    server, data = raw_client_frames(wse.BytesMessage(data=b"\x00" * 1001))
    (closed,) = server.receive_data(data)
    assert isinstance(closed, Closed) and closed.code == 1009


# --- the client driver ----------------------------------------------------------------


class ScriptedBroker:
    """Carries out a ClientDriver's commands against in-memory server WebSockets."""

    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver
        self.now = 100.0
        self.sockets: dict[int, WsConnection] = {}
        self.closed: list[int] = []
        self.received: list[WsEvent] = []
        self.opening: list[int] = []

    def run(self) -> None:
        """Carry out every pending command (opening sockets succeeds at once)."""
        for _ in range(100):
            commands = self.driver.drain_commands(now=self.now)
            if not commands:
                return
            for command in commands:
                self.apply(command)
        raise AssertionError("the driver kept producing commands")

    def apply(self, command: SocketCommand) -> None:
        if isinstance(command, OpenSocket):
            self.sockets[command.socket_id] = WsConnection.server()
            self.driver.socket_opened(command.socket_id, now=self.now)
        elif isinstance(command, WriteBytes):
            server = self.sockets[command.socket_id]
            self.received += server.receive_data(command.data)
            self.reply(command.socket_id)
        elif isinstance(command, CloseSocket):
            self.closed.append(command.socket_id)

    def reply(self, socket_id: int) -> None:
        data = self.sockets[socket_id].data_to_send()
        if data:
            self.driver.receive_data(socket_id, data, now=self.now, wall_time_ms=1)

    def texts(self) -> list[dict[str, object]]:
        return [json.loads(e.text) for e in self.received if isinstance(e, TextReceived)]

    def send(self, socket_id: int, frame: dict[str, object]) -> None:
        self.sockets[socket_id].send_text(json.dumps(frame))
        self.reply(socket_id)
        self.run()


def make_driver(**options: object) -> ClientDriver:
    config = ClientConfig(
        url="ws://broker.test:7900/ws",
        mesh_id="mesh",
        member_id="member",
        signer=FakeSigner(),
        session_id="session",
    )
    opts = ClientOptions(backoff=Backoff(caps=(0.01,)), **options)  # type: ignore[arg-type]
    return ClientDriver(ClientConnection(config, rng=random.Random(1), options=opts))


def test_driver_says_hello_only_after_the_websocket_handshake() -> None:
    driver = make_driver()
    driver.start(100.0)
    commands = driver.drain_commands(now=100.0)
    assert commands == [OpenSocket(1, WsAddress("broker.test", 7900, False, "/ws"))]
    driver.socket_opened(1, now=100.0)
    (handshake,) = driver.drain_commands(now=100.0)
    assert isinstance(handshake, WriteBytes) and handshake.data.startswith(b"GET /ws ")
    assert driver.connection.state is ConnectionState.CONNECTING
    broker = ScriptedBroker(driver)
    broker.sockets[1] = WsConnection.server()
    broker.apply(handshake)
    broker.run()
    assert driver.connection.state is ConnectionState.HANDSHAKING
    assert [t["type"] for t in broker.texts()] == ["hello"]


def test_driver_round_trip_send_and_ack() -> None:
    driver = make_driver()
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    broker.send(1, {"type": "hello_ack", "presenceId": "p"})
    assert driver.connection.state is ConnectionState.OPEN
    handle = driver.connection.send("*", "hi", now=broker.now)
    broker.run()
    sent = broker.texts()[-1]
    assert sent["type"] == "send" and sent["id"] == handle.id
    broker.send(1, {"type": "ack", "id": handle.id, "messageId": "m" * 32, "queued": True})
    assert SendAcked(handle.id, "m" * 32) in driver.drain_events()


def test_driver_turns_the_core_ping_into_a_websocket_ping() -> None:
    driver = make_driver(ping_interval=1.0)
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    broker.send(1, {"type": "hello_ack", "presenceId": "p"})
    broker.now = driver.next_deadline() or 0.0
    driver.handle_timer(broker.now)
    broker.run()
    assert isinstance(broker.received[-1], PingReceived)
    assert driver.connection.state is ConnectionState.OPEN


def test_driver_closes_with_a_close_frame_then_the_socket_after_the_echo() -> None:
    driver = make_driver()
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    driver.connection.close(now=broker.now)
    broker.run()
    assert broker.received[-1] == Closed(1000, "client closing", True)
    assert broker.closed == [1]
    assert driver.open_sockets == 0


def test_driver_closing_socket_without_echo_is_closed_at_the_close_timeout() -> None:
    driver = make_driver()
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    driver.connection.close(now=broker.now)
    commands = driver.drain_commands(now=broker.now)
    assert [type(c) for c in commands] == [WriteBytes]  # the close frame, no echo yet
    deadline = driver.next_deadline()
    assert deadline == pytest.approx(broker.now + driver.close_timeout)
    driver.handle_timer(deadline)
    assert driver.drain_commands(now=deadline) == [CloseSocket(1)]
    assert driver.next_deadline() is None


def test_driver_reports_a_failed_socket_and_reconnects() -> None:
    driver = make_driver()
    driver.start(0.0)
    driver.drain_commands(now=0.0)
    driver.socket_failed(1, now=0.0, reason="connection refused")
    assert driver.drain_commands(now=0.0) == [CloseSocket(1)]
    events = driver.drain_events()
    assert any(isinstance(e, ReconnectScheduled) for e in events)
    due = driver.next_deadline()
    assert due is not None
    driver.handle_timer(due)
    assert driver.drain_commands(now=due) == [OpenSocket(2, driver.address)]


def test_driver_own_1009_is_not_taken_for_the_broker_refusing_a_send() -> None:
    """A push over the client's cap closes with 1009 from *our* side: the core must
    see a lost link (the send in flight is re-sent), not the broker's 1009 (which
    would fail the last send as too large)."""
    driver = ClientDriver(make_driver().connection, max_message_bytes=200)
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    broker.send(1, {"type": "hello_ack", "presenceId": "p"})
    handle = driver.connection.send("*", "hi", now=broker.now)
    broker.run()
    broker.send(1, {"type": "push", "filler": "f" * 300})
    events = driver.drain_events()
    assert not any(isinstance(e, SendFailed) for e in events)
    assert any(isinstance(e, ReconnectScheduled) for e in events)
    assert driver.connection.pending_sends == 1
    assert 1 in broker.closed
    del handle


def test_driver_ignores_what_a_detached_socket_still_delivers() -> None:
    driver = make_driver()
    broker = ScriptedBroker(driver)
    driver.start(broker.now)
    broker.run()
    driver.connection.close(now=broker.now)
    driver.drain_commands(now=broker.now)
    driver.drain_events()
    broker.sockets[1].send_text(json.dumps({"type": "hello_ack", "presenceId": "p"}))
    broker.reply(1)
    assert driver.drain_events() == []


def test_driver_refuses_a_url_that_is_not_websocket() -> None:
    config = ClientConfig(
        url="http://broker.test/ws",
        mesh_id="m",
        member_id="m",
        signer=FakeSigner(),
        session_id="s",
    )
    with pytest.raises(LocalProtocolError):
        ClientDriver(ClientConnection(config, rng=random.Random(0)))


# --- garbage never raises ---------------------------------------------------------------


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_garbage_before_the_handshake_never_raises(chunks: list[bytes]) -> None:
    server = WsConnection.server(max_message_bytes=100)
    for chunk in [*chunks, None]:
        for event in server.receive_data(chunk):
            assert isinstance(event, (Opened, Closed, TextReceived, BinaryReceived))
        server.data_to_send()


@given(st.lists(st.binary(max_size=200), max_size=8), st.booleans())
def test_garbage_after_the_handshake_never_raises(chunks: list[bytes], server_side: bool) -> None:
    client, server = open_pair(client_cap=100, server_cap=100)
    target = server if server_side else client
    closes = 0
    for chunk in [*chunks, None]:
        for event in target.receive_data(chunk):
            closes += isinstance(event, Closed)
        target.data_to_send()
        target.send_text("still fine")
        target.send_ping()
    assert closes == 1
    assert target.state is WsState.CLOSED


# --- the broker driver, and both drivers wired together in memory ------------------------


class MemoryNet:
    """Client drivers and a broker driver joined by in-memory 'sockets'."""

    def __init__(self, broker: BrokerDriver) -> None:
        self.broker = broker
        self.now = 1_790_000_000.0  # one clock for all: the broker's is wall-clock seconds
        self.clients: dict[str, ClientDriver] = {}
        self.to_server: dict[tuple[str, int], int] = {}
        self.to_client: dict[int, tuple[str, int]] = {}

    def add(self, name: str, **options: object) -> ClientDriver:
        config = ClientConfig(
            url="ws://broker.test/ws",
            mesh_id="mesh",
            member_id=f"member-{name}",
            signer=FakeSigner(name),
            session_id=name,
        )
        core = ClientConnection(config, rng=random.Random(name), options=ClientOptions(**options))  # type: ignore[arg-type]
        driver = ClientDriver(core)
        self.clients[name] = driver
        driver.start(self.now)
        return driver

    def run(self) -> None:
        """Deliver everything until nobody has anything left to do."""
        for _ in range(1000):
            busy = False
            for name, client in self.clients.items():
                for command in client.drain_commands(now=self.now):
                    busy = True
                    self._client_command(name, client, command)
            for command in self.broker.drain_commands(now=self.now):
                busy = True
                self._broker_command(command)
            if not busy:
                return
        raise AssertionError("the network never went quiet")

    def _client_command(self, name: str, client: ClientDriver, command: SocketCommand) -> None:
        if isinstance(command, OpenSocket):
            server_id = self.broker.socket_opened(now=self.now)
            self.to_server[(name, command.socket_id)] = server_id
            self.to_client[server_id] = (name, command.socket_id)
            client.socket_opened(command.socket_id, now=self.now)
        elif isinstance(command, WriteBytes):
            server_id = self.to_server.get((name, command.socket_id))
            if server_id is not None:
                self.broker.receive_data(server_id, command.data, now=self.now)
        elif isinstance(command, CloseSocket):
            server_id = self.to_server.pop((name, command.socket_id), None)
            if server_id is not None:
                del self.to_client[server_id]
                self.broker.receive_data(server_id, None, now=self.now)

    def _broker_command(self, command: SocketCommand) -> None:
        target = self.to_client.get(command.socket_id)
        if target is None:
            return
        name, client_id = target
        client = self.clients[name]
        wall = int(self.now * 1000)
        if isinstance(command, WriteBytes):
            data = bytes(command.data)  # what a socket would read
            client.receive_data(client_id, data, now=self.now, wall_time_ms=wall)
        elif isinstance(command, CloseSocket):
            del self.to_client[command.socket_id]
            del self.to_server[target]
            client.receive_data(client_id, None, now=self.now, wall_time_ms=wall)


def make_broker_driver(**options: object) -> BrokerDriver:
    broker = Broker(
        StaticRegistry(open_mesh="mesh"),
        verifier=AcceptingVerifier(),
        rng=random.Random(3),
        options=BrokerOptions(**options),  # type: ignore[arg-type]
    )
    return BrokerDriver(broker, handshake_timeout=5.0)


def test_drivers_in_memory_send_ack_and_push() -> None:
    net = MemoryNet(make_broker_driver())
    a = net.add("a")
    b = net.add("b")
    net.run()
    assert a.connection.state is ConnectionState.OPEN
    assert b.connection.state is ConnectionState.OPEN
    handle = a.connection.send(FakeSigner("b").public_key, "hi b", "now", now=net.now)
    net.run()
    acked = [e for e in a.drain_events() if isinstance(e, SendAcked)]
    assert [e.send_id for e in acked] == [handle.id]
    assert net.broker.broker.claimed_count == 1  # not acked until b's application takes it
    (message,) = b.connection.take_messages()
    net.run()
    assert message.message_id == acked[0].message_id
    assert net.broker.broker.claimed_count == 0  # b's client_ack came back


def test_broker_driver_writes_once_per_socket_for_all_the_messages_of_one_read() -> None:
    net = MemoryNet(make_broker_driver())
    a = net.add("a")
    net.add("b")
    net.run()
    handles = [
        a.connection.send(FakeSigner("b").public_key, f"hi {i}", "now", now=net.now)
        for i in range(3)
    ]
    (write,) = a.drain_commands(now=net.now)  # the three sends, in one read of the broker's
    assert isinstance(write, WriteBytes)
    net.broker.receive_data(net.to_server[("a", write.socket_id)], write.data, now=net.now)
    commands = net.broker.drain_commands(now=net.now)
    assert all(isinstance(c, WriteBytes) for c in commands)
    by_client = {net.to_client[c.socket_id][0]: c for c in commands}
    assert sorted(by_client) == ["a", "b"] and len(commands) == 2
    for command in commands:
        net._broker_command(command)
    acked = [e.send_id for e in a.drain_events() if isinstance(e, SendAcked)]
    assert acked == [h.id for h in handles]  # three acks, in order, from one write
    assert [m.body for m in net.clients["b"].connection.take_messages()] == [
        b"hi 0",
        b"hi 1",
        b"hi 2",
    ]


def test_a_presence_batch_to_sockets_that_joined_in_turn_holds_one_copy_of_its_frames() -> None:
    net = MemoryNet(make_broker_driver())
    names = [f"p{i:03d}" for i in range(120)]
    for name in names:  # one after the other: each hears only the later arrivals
        net.add(name)
        net.run()
    for client in net.clients.values():
        client.drain_events()
    net.now += 1.0  # the batch window is over
    tracemalloc.start()
    try:
        net.broker.handle_timer(net.now)
        commands = net.broker.drain_commands(now=net.now)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    longest = max(len(c.data) for c in commands if isinstance(c, WriteBytes))
    # One copy of the batch (and small change), not one per socket's own tail.
    assert peak < 8 * longest, (peak, longest)
    for command in commands:
        net._broker_command(command)
    net.run()
    for i, name in enumerate(names):
        heard = [
            e.data["pubkey"]
            for e in net.clients[name].drain_events()
            if isinstance(e, SystemMessage) and e.event == "peer_joined"
        ]
        # p001's arrival went out at once (drained above): the batch is the rest.
        later = names[max(i + 1, 2) :]
        assert heard == [FakeSigner(n).public_key for n in later], name


def test_broker_driver_tells_the_broker_once_when_a_client_leaves() -> None:
    net = MemoryNet(make_broker_driver())
    a = net.add("a")
    net.run()
    assert net.broker.broker.connection_count == 1
    a.connection.close(now=net.now)
    net.run()
    assert net.broker.broker.connection_count == 0
    assert net.broker.socket_count == 0 and a.open_sockets == 0


def test_broker_driver_closes_the_replaced_session_after_its_echo() -> None:
    net = MemoryNet(make_broker_driver())
    first = net.add("a")
    net.run()
    net.clients["a2"] = second = ClientDriver(
        ClientConnection(
            ClientConfig(
                url="ws://broker.test/ws",
                mesh_id="mesh",
                member_id="member-a",
                signer=FakeSigner("a"),
                session_id="a",
            ),
            rng=random.Random(9),
        )
    )
    second.start(net.now)
    net.run()
    assert first.connection.state is ConnectionState.CLOSED
    assert second.connection.state is ConnectionState.OPEN
    assert net.broker.socket_count == 1 and first.open_sockets == 0


def test_broker_driver_closes_a_socket_that_never_upgrades() -> None:
    driver = make_broker_driver()
    socket_id = driver.socket_opened(now=100.0)
    driver.receive_data(socket_id, b"GET /ws HTT", now=100.0)
    assert driver.next_deadline() == 105.0
    driver.handle_timer(105.0)
    assert driver.drain_commands(now=105.0) == [CloseSocket(socket_id)]
    assert driver.broker.connection_count == 0


def test_broker_driver_caps_messages_at_the_broker_hard_cap() -> None:
    driver = BrokerDriver(make_broker_driver().broker, max_message_bytes=1000)
    socket_id = driver.socket_opened(now=100.0)
    client = WsConnection.client(ADDRESS)
    driver.receive_data(socket_id, client.data_to_send(), now=100.0)
    (upgrade,) = driver.drain_commands(now=100.0)
    assert isinstance(upgrade, WriteBytes)
    client.receive_data(upgrade.data)
    assert driver.broker.connection_count == 1
    client.send_text("x" * 1001)
    driver.receive_data(socket_id, client.data_to_send(), now=100.0)
    assert driver.broker.connection_count == 0
    (close_frame,) = driver.drain_commands(now=100.0)
    assert isinstance(close_frame, WriteBytes)
    (closed,) = client.receive_data(close_frame.data)
    assert isinstance(closed, Closed) and closed.code == 1009
    driver.receive_data(socket_id, client.data_to_send(), now=100.0)  # the echo
    assert driver.drain_commands(now=100.0) == [CloseSocket(socket_id)]
