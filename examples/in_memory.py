"""The README's in-memory example: one round trip, the broker typed in by hand."""

import json
import random

from meshproto import (
    ClientConfig,
    ClientConnection,
    MessageReceived,
    OpenTransport,
    SendAcked,
    WriteFrame,
)
from meshproto.testing import FakeSigner  # stands in for an ed25519 key

config = ClientConfig(
    url="ws://127.0.0.1:7900/ws",
    mesh_id="mesh-1",
    member_id="member-1",
    signer=FakeSigner(),
    session_id="example",
)
client = ClientConnection(config, rng=random.Random())

now = 0.0  # your monotonic clock; the core never reads one
handle = client.send("*", "hello, mesh", "next", now=now)  # queued while offline
client.connect(now)
(open_action,) = client.drain_actions()
assert isinstance(open_action, OpenTransport)  # open a WebSocket to open_action.url

client.transport_opened(open_action.transport_id, now=now, wall_time_ms=1_790_000_000_000)
hello = client.drain_actions()[0]  # the signed hello, the first frame on every socket
assert isinstance(hello, WriteFrame) and json.loads(hello.text)["type"] == "hello"

client.receive_text('{"type": "hello_ack", "presenceId": "p1"}', now=now + 0.01)
(send_frame,) = client.drain_actions()  # the queued send, written after hello_ack
print("write:", send_frame.text)

client.receive_text(
    json.dumps({"type": "ack", "id": handle.id, "messageId": "m" * 32, "queued": True}),
    now=now + 0.02,
)
client.receive_text(
    json.dumps(
        {
            "type": "push",
            "messageId": "x" * 32,
            "meshId": "mesh-1",
            "senderPubkey": "ab" * 32,
            "priority": "now",
            "nonce": "",
            "ciphertext": "aGkgdGhlcmU=",
            "createdAt": "2026-11-27T00:00:00.000Z",
        }
    ),
    now=now + 0.03,
)
for event in client.drain_events():
    if isinstance(event, SendAcked):
        print("acked as", event.message_id)
    elif isinstance(event, MessageReceived):
        print("waiting in the inbox:", event.message_id)
for message in client.take_messages():  # the hand-over: now it may be acknowledged
    print("received:", message.text)
print("write:", client.drain_actions()[0].text)  # the client_ack for that push
print("wake me at", client.next_deadline())  # then call client.handle_timer(that time)
