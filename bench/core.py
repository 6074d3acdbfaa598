"""How much the client core costs per message, against plain JSON, in one run.

Run ``python bench/core.py`` (``--profile`` adds a cProfile of the core loops).
Everything happens in memory: no sockets, no files, nothing but the standard
library and meshproto. Each measurement runs ``REPEATS`` times over ``N``
operations (N is calibrated so the whole run takes about 1-2 s), the repeats of
the different measurements interleaved, and the median per operation is
reported in microseconds, with the spread (slowest - fastest repeat).

Measurements
------------

core send->ack
    An open ``ClientConnection``: ``send("*", body, "next")`` with a ~100-byte
    body, ``drain_actions()``, ``receive_text(ack)``, ``drain_events()``. The
    ack must carry the id that ``send()`` just chose, so its text is built
    inside the timed loop with one f-string. That is charged to the core (the
    figure is, if anything, pessimistic); the f-string alone is measured too
    and printed, so the reader can see it is small. Nothing is subtracted.
core push->client_ack
    ``receive_text(push)`` of a real broadcast push (copied below from
    ``conformance/real-broker/d_broadcast.jsonl``) with a distinct
    ``messageId`` each time (the texts are prepared before timing), then
    ``drain_actions()`` (the client_ack), ``drain_events()`` and
    ``take_messages()`` (default options, so the inbox is used and emptied).
json send->ack, json push->client_ack (the baseline)
    ``json.loads(json.dumps(d))`` of the same frames: the send frame and the
    ack frame; the push frame and the client_ack frame. ``json.dumps`` is
    called with its defaults, its fastest path (the cached encoder); the wire's
    compact ``separators``/``ensure_ascii=False`` would build an encoder per
    call and make the baseline slower, and the ratio kinder to the core.

crypto seal+open, pynacl Box encrypt+decrypt (printed when PyNaCl is installed)
    ``BoxSealer.seal`` of the same body to a direct target plus ``open`` of the
    resulting push (the ``Push`` is built in the loop) against PyNaCl's own
    ``Box.encrypt`` + ``Box.decrypt`` of the same bytes with boxes built once.
    Both draw a fresh nonce from the operating system each time. The line
    ``crypto/pynacl ratio`` compares them; it is not part of the last line.

The garbage collector stays on (it is part of what the core costs); it runs
a full collection before each repeat. The last line is
``core/json ratio: X.XX`` = (core send->ack + core push->client_ack) /
(json send->ack + json push->client_ack), medians.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import platform
import pstats
import random
import statistics
import sys
from collections.abc import Callable
from time import perf_counter_ns

import meshproto
from meshproto import (
    ClientConfig,
    ClientConnection,
    ConnectionState,
    MessageReceived,
    OpenTransport,
    SendAcked,
    WriteFrame,
)
from meshproto.testing import FakeSigner

REPEATS = 7
#: Wall-clock budget per measurement, all repeats together (5 measurements).
BUDGET_NS = 250_000_000
WALL_TIME_MS = 1_795_738_953_347  # for the signed hello; no clock is read

#: A realistic chat-sized body: about 100 bytes of UTF-8 text.
BODY = (
    "build 4711 passed on linux-x86_64; 2 flaky tests retried "
    "(test_sync, test_io). deploying to staging"
)
MESSAGE_ID = "tNokSJ3wizpA9xdsF6XqO9HP0jA1a4Hr"
HELLO_ACK = json.dumps(
    {
        "type": "hello_ack",
        "presenceId": "BB8qpne0XK46JrD4QyXD4EQ6dvYX2wGB",
        "memberDisplayName": "peer-b",
        "memberProfile": {"roleTag": None, "groups": [], "messageMode": "push"},
        "meshPolicy": {"selfEditable": {"groups": True, "roleTag": True}},
    }
)
#: A broadcast push as the real broker sent it (d_broadcast.jsonl, conn B, t=0.641).
PUSH = {
    "type": "push",
    "messageId": "tNokSJ3wizpA9xdsF6XqO9HP0jA1a4Hr",
    "meshId": "CopKJ4mA3LbRL7ojdCSZTf0LVSsxrYb9",
    "senderPubkey": "876d90edc8b8594b40862bf03e53a7dac9b6306f837024b5287776611ebdacfb",
    "senderMemberPubkey": "876d90edc8b8594b40862bf03e53a7dac9b6306f837024b5287776611ebdacfb",
    "senderMemberId": "UwcrqXknnJD6dVbBAA7wHJ0jBaIO7wi0",
    "senderName": "peer-a",
    "priority": "next",
    "nonce": "MJBnlhaJQbIYzoKi4f1GA62FBAXQILMF",
    "ciphertext": "YnJvYWRjYXN0IHRvICo=",
    "createdAt": "2026-11-27T00:22:33.984Z",
}


def wire(frame: dict[str, object]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def open_client(seed: int = 0) -> ClientConnection:
    """A client past its handshake, in memory."""
    client = ClientConnection(
        ClientConfig(
            url="ws://127.0.0.1:7900/ws",
            mesh_id="CopKJ4mA3LbRL7ojdCSZTf0LVSsxrYb9",
            member_id="zpEY3fESSmtcdpFHiboqq7BMts4G2Jsw",
            signer=FakeSigner("bench"),
            session_id="bench-session",
        ),
        rng=random.Random(seed),
    )
    client.connect(0.0)
    (opened,) = [a for a in client.drain_actions() if isinstance(a, OpenTransport)]
    client.transport_opened(opened.transport_id, now=0.0, wall_time_ms=WALL_TIME_MS)
    client.receive_text(HELLO_ACK, now=0.0)
    client.drain_actions()
    client.drain_events()
    assert client.state is ConnectionState.OPEN, client.state
    return client


def push_texts(start: int, count: int) -> list[str]:
    """Push texts that differ only in their (32-character) messageId."""
    template = wire(PUSH).replace(MESSAGE_ID, "\0")
    return [template.replace("\0", f"bench{i:027d}") for i in range(start, start + count)]


# --- one check that the loops do what they say, and the baseline frames ---------


def sample_frames() -> tuple[dict[str, object], ...]:
    """Run each core loop once, check its outputs, and return the frames it saw."""
    client = open_client()
    handle = client.send("*", BODY, "next", now=1.0)
    (send_text,) = [a.text for a in client.drain_actions() if isinstance(a, WriteFrame)]
    ack_text = f'{{"type":"ack","id":"{handle.id}","messageId":"{MESSAGE_ID}","queued":true}}'
    client.receive_text(ack_text, now=1.0)
    assert client.drain_events() == [SendAcked(handle.id, MESSAGE_ID)]
    (text,) = push_texts(0, 1)
    client.receive_text(text, now=1.0)
    assert len(client.take_messages()) == 1  # the hand-over, and with it the client_ack
    (client_ack,) = [a.text for a in client.drain_actions() if isinstance(a, WriteFrame)]
    (event,) = client.drain_events()
    assert isinstance(event, MessageReceived) and event.text == "broadcast to *", event
    return json.loads(send_text), json.loads(ack_text), json.loads(text), json.loads(client_ack)


# --- the timed loops: each returns the nanoseconds its n operations took ---------


def core_send_ack(n: int, _repeat: int) -> int:
    client = open_client()
    send, drain_actions = client.send, client.drain_actions
    receive, drain_events = client.receive_text, client.drain_events
    body, message_id, now = BODY, MESSAGE_ID, 1.0
    start = perf_counter_ns()
    for _ in range(n):
        handle = send("*", body, "next", now=now)
        drain_actions()
        receive(
            f'{{"type":"ack","id":"{handle.id}","messageId":"{message_id}","queued":true}}',
            now=now,
        )
        drain_events()
    elapsed = perf_counter_ns() - start
    assert client.pending_sends == 0
    return elapsed


def ack_fstring(n: int, _repeat: int) -> int:
    """The f-string of core_send_ack alone, with an id of the same shape."""
    ids = [f"{random.Random(i).getrandbits(64):016x}" for i in range(64)]
    message_id = MESSAGE_ID
    text = ""
    start = perf_counter_ns()
    for i in range(n):
        send_id = ids[i & 63]
        text = f'{{"type":"ack","id":"{send_id}","messageId":"{message_id}","queued":true}}'
    elapsed = perf_counter_ns() - start
    assert text.startswith('{"type":"ack"')
    return elapsed


def core_push_client_ack(n: int, repeat: int) -> int:
    client = open_client()
    texts = push_texts(repeat * n, n)
    receive, drain_actions = client.receive_text, client.drain_actions
    drain_events, take_messages = client.drain_events, client.take_messages
    now = 1.0
    start = perf_counter_ns()
    for text in texts:
        receive(text, now=now)
        take_messages()
        drain_actions()
        drain_events()
    elapsed = perf_counter_ns() - start
    assert client.counters.duplicate_pushes == 0
    return elapsed


def json_pair(first: dict[str, object], second: dict[str, object]) -> Callable[[int, int], int]:
    def run(n: int, _repeat: int) -> int:
        dumps, loads = json.dumps, json.loads
        a, b = first, second
        start = perf_counter_ns()
        for _ in range(n):
            loads(dumps(a))
            loads(dumps(b))
        return perf_counter_ns() - start

    return run


def crypto_loops() -> dict[str, Callable[[int, int], int]]:
    """The sealed direct message and its PyNaCl baseline, or nothing without PyNaCl."""
    try:
        import nacl.public  # noqa: PLC0415 (optional: the crypto extra)

        from meshproto_crypto import BoxSealer, KeyPair  # noqa: PLC0415
    except ImportError:
        return {}
    alice, bob = KeyPair.from_seed(bytes(32)), KeyPair.from_seed(bytes([1]) * 32)
    sender, receiver = BoxSealer(alice), BoxSealer(bob)
    data = BODY.encode()

    def ours(n: int, _repeat: int) -> int:
        seal, open_, rng, push = sender.seal, receiver.open, random.Random(0), meshproto.Push
        target, origin, body = bob.pubkey, alice.pubkey, data
        start = perf_counter_ns()
        for _ in range(n):
            nonce, ciphertext = seal(target, body, rng)
            open_(push("m", "mesh", origin, "now", nonce, ciphertext, "t"))
        return perf_counter_ns() - start

    def pynacl(n: int, _repeat: int) -> int:
        to_bob = nacl.public.Box(nacl.public.PrivateKey(curve_secret(alice)), curve_public(bob))
        from_alice = nacl.public.Box(nacl.public.PrivateKey(curve_secret(bob)), curve_public(alice))
        encrypt, decrypt, body = to_bob.encrypt, from_alice.decrypt, data
        start = perf_counter_ns()
        for _ in range(n):
            decrypt(encrypt(body))
        return perf_counter_ns() - start

    def curve_secret(keys: KeyPair) -> bytes:
        from nacl import bindings  # noqa: PLC0415

        secret: bytes = bindings.crypto_sign_ed25519_sk_to_curve25519(keys.secret_bytes)
        return secret

    def curve_public(keys: KeyPair) -> nacl.public.PublicKey:
        from nacl import bindings  # noqa: PLC0415

        return nacl.public.PublicKey(
            bindings.crypto_sign_ed25519_pk_to_curve25519(keys.public_bytes)
        )

    return {"crypto seal+open direct": ours, "pynacl Box encrypt+decrypt": pynacl}


# --- measuring ---------------------------------------------------------------------


def calibrate(loop: Callable[[int, int], int]) -> int:
    """N such that REPEATS runs of ``loop`` take about BUDGET_NS."""
    n = 200
    for _ in range(20):  # bounded: grows n until a trial is long enough to trust
        elapsed = loop(n, 0)
        if elapsed >= 20_000_000:
            break
        n *= 4
    per_op = elapsed / n
    return max(1_000, int(BUDGET_NS / REPEATS / per_op))


def measure(loops: dict[str, Callable[[int, int], int]]) -> dict[str, tuple[float, float, int]]:
    """Per loop: (median, spread max-min) in microseconds per operation, and N.

    The repeats are interleaved (every loop once per round), so a slow patch
    of the machine falls on the core and the baseline alike.
    """
    sizes = {label: calibrate(loop) for label, loop in loops.items()}
    for label, loop in loops.items():
        loop(min(sizes[label], 1_000), REPEATS + 1)  # warm-up
    samples: dict[str, list[float]] = {label: [] for label in loops}
    for repeat in range(REPEATS):
        for label, loop in loops.items():
            gc.collect()
            samples[label].append(loop(sizes[label], repeat + 1) / sizes[label] / 1_000)
    return {
        label: (statistics.median(s), max(s) - min(s), sizes[label]) for label, s in samples.items()
    }


def profile_core(n: int = 20_000) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    core_send_ack(n, 0)
    core_push_client_ack(n, 99)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> None:
    send_frame, ack_frame, push_frame, client_ack_frame = sample_frames()
    print(
        f"meshproto {meshproto.__version__} core bench, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {REPEATS} repeats, medians"
    )
    print(
        f"frames: send {len(wire(send_frame))} B (body {len(BODY.encode())} B), "
        f"ack {len(wire(ack_frame))} B, push {len(wire(push_frame))} B, "
        f"client_ack {len(wire(client_ack_frame))} B"
    )
    measured = measure(
        {
            "core send->ack": core_send_ack,
            "core push->client_ack": core_push_client_ack,
            "json send->ack": json_pair(send_frame, ack_frame),
            "json push->client_ack": json_pair(push_frame, client_ack_frame),
            "ack f-string alone": ack_fstring,
            **crypto_loops(),
        }
    )
    results = {}
    for label, (median, spread, n) in measured.items():
        results[label] = median
        print(f"{label + ':':<26}{median:9.3f} us/op  (N={n}, spread {spread:.3f} us)")
    print(
        f"(core send->ack includes building the ack text, "
        f"{results['ack f-string alone']:.3f} us of it; nothing subtracted)"
    )
    send_ratio = results["core send->ack"] / results["json send->ack"]
    push_ratio = results["core push->client_ack"] / results["json push->client_ack"]
    print(f"core/json send->ack: {send_ratio:.2f}")
    print(f"core/json push->client_ack: {push_ratio:.2f}")
    if "pynacl Box encrypt+decrypt" in results:
        crypto = results["crypto seal+open direct"] / results["pynacl Box encrypt+decrypt"]
        print(f"crypto/pynacl ratio (seal+open vs Box encrypt+decrypt): {crypto:.2f}")
    else:
        print("(PyNaCl is not installed: the sealed-message figures are skipped)")
    if "--profile" in sys.argv[1:]:
        print(profile_core())
    core = results["core send->ack"] + results["core push->client_ack"]
    baseline = results["json send->ack"] + results["json push->client_ack"]
    print(f"core/json ratio: {core / baseline:.2f}")


if __name__ == "__main__":
    main()
