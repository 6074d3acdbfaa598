"""Property tests of the reference broker: arbitrary interleavings, checked invariants.

A hypothesis ``RuleBasedStateMachine`` drives one :class:`~meshproto.Broker`
over WebSocket bytes, through a real :class:`~meshproto_ws.BrokerDriver`
(``meshproto_ws.testing.SocketBrokerHarness``, which is
``meshproto.testing.BrokerHarness`` with sockets for a transport): it opens
and closes sockets, says hello (member and session hellos, good and bad),
sends to every kind of target (and to nonsense), acknowledges, changes
status and summary, asks for peers, feeds garbage, binary and hostile frame
text (``meshproto.testing._hostile``: lone surrogates as JSON escapes in any
string or key, strings at the size caps, integers past 2**63, floats where
integers belong, ``NaN``/``Infinity``, duplicate keys, deep nesting, all
written from the harness's own well-formed frames), pings, and moves time;
and at the socket level it botches handshakes, writes raw garbage, hangs up
every way a client can (close frames with any code, EOF, a broken socket,
silence), splits reads and fragments messages, and goes over the size caps.
Every broker input goes through ``meshproto.testing.BrokerOracle``, which
checks the broker's invariants (``meshproto/_broker.py``) around it:

* no input raises;
* every ``send`` on an open socket is answered exactly once (an ``ack`` or an
  ``error`` carrying its id), in the outputs of that very input;
* every output addresses a socket that is open when it is produced, and every
  text output decodes with :func:`meshproto.decode`;
* after ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``;
* once time has moved, no open socket without an accepted hello is older
  than ``hello_timeout``, and no socket that said hello is ever closed
  ``hello timeout``;
* a session key names at most one peer, and an accepted hello (member or
  session) that names one leaves it with that member;
* a session hello is refused ``bad_session_pubkey`` only while a presence
  of another member made by a session hello holds its key (or the key is
  not a key at all), and a member hello's unproven claim never takes a key
  from such a presence;
* at the end (``finish``: shutdown, then every timer run out) no socket,
  presence, claim, stored message or timer is left.

and the socket harness checks the driver: nothing escapes it and its fault
containment is never needed (``internal_errors`` stays 0); every text a
client reads decodes and is the next one the broker wrote for it; a socket
the broker closes gets its close frame; a closed socket is never named
again; and at the end the driver has no socket or deadline left.

``test_byte_driven_broker_runs_keep_the_invariants`` runs the byte
interpreter of ``fuzz/fuzz_broker.py`` (the same harness and oracle) here,
so CI needs no fuzzer; ``test_sans_io_byte_runs_keep_the_invariants`` runs
it on the bare broker, which also gets what the driver never passes on
(inputs for sockets it does not know, a second close, text past the frame
cap).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshproto.testing import BrokerHarness
from meshproto_ws.testing import SocketBrokerHarness

H = SocketBrokerHarness


def index(table: tuple[object, ...]) -> st.SearchStrategy[int]:
    """An index into one of the harness's tables, every entry equally likely."""
    return st.sampled_from(range(len(table)))


slots = st.sampled_from(range(H.SLOTS))


class BrokerOverSockets(RuleBasedStateMachine):
    """Sockets, hellos, sends, acks, status, peers, garbage, hostile text, bytes and time."""

    harness: SocketBrokerHarness

    @initialize(small_limits=st.booleans())
    def start(self, small_limits: bool) -> None:
        self.harness = SocketBrokerHarness(small=small_limits)

    @rule(slot=slots)
    def open_socket(self, slot: int) -> None:
        self.harness.op_open(slot)

    @rule(
        slot=slots,
        who=index(H.WHO),
        session_id=index(H.SESSION_IDS),
        session_key=index(H.HELLO_KEYS),
        skew=index(H.SKEWS),
        good_signature=st.booleans(),
        groups=index(H.GROUPS),
    )
    def hello(
        self,
        slot: int,
        who: int,
        session_id: int,
        session_key: int,
        skew: int,
        *,
        good_signature: bool,
        groups: int,
    ) -> None:
        self.harness.op_hello(
            slot, who, session_id, session_key, skew, good_signature=good_signature, groups=groups
        )

    @rule(
        slot=slots,
        who=index(H.WHO),
        session_key=index(H.SESSION_KEYS),
        session_id=index(H.SESSION_IDS),
        expires=index(H.EXPIRIES),
    )
    def session_hello(
        self, slot: int, who: int, session_key: int, session_id: int, expires: int
    ) -> None:
        self.harness.op_session_hello(slot, who, session_key, session_id, expires)

    @rule(
        slot=slots,
        who=st.sampled_from(range(3)),  # a, b or c
        session_id=index(H.SESSION_IDS),
        session_key=st.sampled_from(range(3)),  # none, s1 or s2
    )
    def good_hello(self, slot: int, who: int, session_id: int, session_key: int) -> None:
        self.harness.op_good_hello(slot, who, session_id, session_key)

    @rule(
        slot=slots,
        to=index(H.TARGETS),
        priority=index(H.PRIORITIES),
        cmid=index(H.CLIENT_MESSAGE_IDS),
        big=st.booleans(),
    )
    def send(self, slot: int, to: int, priority: int, cmid: int, big: bool) -> None:
        self.harness.op_send(slot, to, priority, cmid, big)

    @rule(slot=slots, data=st.data(), by_cmid=st.booleans())
    def client_ack(self, slot: int, data: st.DataObject, by_cmid: bool) -> None:
        choices = len(H.CLIENT_MESSAGE_IDS) - 1 if by_cmid else len(self.harness.message_ids)
        self.harness.op_client_ack(slot, data.draw(st.sampled_from(range(choices))), by_cmid)

    @rule(slot=slots, status=index(H.STATUSES))
    def set_status(self, slot: int, status: int) -> None:
        self.harness.op_set_status(slot, status)

    @rule(slot=slots, with_req_id=st.booleans())
    def list_peers(self, slot: int, with_req_id: bool) -> None:
        self.harness.op_list_peers(slot, with_req_id)

    @rule(slot=slots, summary=st.text(max_size=20))
    def set_summary(self, slot: int, summary: str) -> None:
        self.harness.op_set_summary(slot, summary.encode("utf-8"))

    @rule(slot=slots, garbage=index(H.GARBAGE) | st.text(max_size=40))
    def garbage(self, slot: int, garbage: int | str) -> None:
        if isinstance(garbage, int):
            self.harness.op_malformed(slot, garbage)
        else:
            self.harness.op_text(slot, garbage.encode("utf-8"))

    @rule(slot=slots, data=st.data())
    def hostile_frame_text(self, slot: int, data: st.DataObject) -> None:
        """A client frame written as text with hostile strings, numbers, keys or nesting."""
        self.harness.op_hostile(slot, lambda n: data.draw(st.integers(0, max(0, n - 1))))

    @rule(slot=slots, data=st.binary(max_size=16))
    def binary(self, slot: int, data: bytes) -> None:
        self.harness.op_binary(slot, data)

    @rule(slot=slots, ping=st.booleans())
    def ping_or_pong(self, slot: int, ping: bool) -> None:
        self.harness.op_ping(slot, ping)

    @rule(slot=slots)
    def close(self, slot: int) -> None:
        self.harness.op_close(slot)

    # --- the socket level ----------------------------------------------------------

    @rule(slot=slots, how=index(H.ACCEPTS))
    def botched_handshake(self, slot: int, how: int) -> None:
        self.harness.op_accept(slot, how)

    @rule(slot=slots, data=st.binary(min_size=1, max_size=48))
    def raw_bytes(self, slot: int, data: bytes) -> None:
        self.harness.op_raw(slot, data)

    @rule(slot=slots, how=index(H.HANGUPS))
    def hang_up(self, slot: int, how: int) -> None:
        self.harness.op_hangup(slot, how)

    @rule(how=index(H.FRAMINGS))
    def framing(self, how: int) -> None:
        self.harness.op_framing(how)

    @rule(slot=slots, which=st.sampled_from(range(2)))
    def oversize(self, slot: int, which: int) -> None:
        self.harness.op_oversize(slot, which)

    # --- time -------------------------------------------------------------------------

    @rule(step=index(H.TIME_STEPS))
    def advance(self, step: int) -> None:
        self.harness.op_advance(step)

    @rule()
    def run_next_timer(self) -> None:
        self.harness.op_fire_next_deadline()

    @rule(step=index(H.TIME_STEPS))
    def late_timer(self, step: int) -> None:
        self.harness.op_drift(step)

    @invariant()
    def invariants_hold(self) -> None:
        # Each op already checks around its input; this also covers the start.
        if hasattr(self, "harness"):
            self.harness.oracle.check()

    def teardown(self) -> None:
        if hasattr(self, "harness"):
            self.harness.finish()


TestBrokerOverSockets = BrokerOverSockets.TestCase
TestBrokerOverSockets.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# hypothesis's binaries are a few bytes long unless told otherwise: too short to
# say hello and then send on the same socket.
@settings(max_examples=300, deadline=None)
@given(small_limits=st.booleans(), data=st.binary(min_size=64, max_size=800))
def test_byte_driven_broker_runs_keep_the_invariants(small_limits: bool, data: bytes) -> None:
    SocketBrokerHarness(small=small_limits).run_bytes(data)


@settings(max_examples=100, deadline=None)
@given(small_limits=st.booleans(), data=st.binary(min_size=64, max_size=800))
def test_sans_io_byte_runs_keep_the_invariants(small_limits: bool, data: bytes) -> None:
    BrokerHarness(small=small_limits).run_bytes(data)


@settings(max_examples=100, deadline=None)
@given(small_limits=st.booleans(), data=st.binary(min_size=64, max_size=800))
def test_batching_changes_when_system_pushes_arrive_never_which(
    small_limits: bool, data: bytes
) -> None:
    """The same inputs, system pushes batched or not: each socket hears the same events.

    A socket still open at the end hears the same ``(event, peer)`` pushes in
    the same order either way; one that closed hears a prefix of them (what
    waited in a batch when it closed never reaches it). Timers run late too
    (``op_drift``), as an adapter's may. Both runs keep one clock: a jump to
    the next deadline would differ, as their timers do.
    """
    heard, still_open = [], []
    for batch in (0.0, 0.05):
        harness = BrokerHarness(small=small_limits, presence_batch=batch, follow_deadlines=False)
        harness.run_ops(data)
        harness.settle(1.0)
        heard.append(harness.oracle.heard)
        still_open.append(set(harness.oracle.open))
        harness.finish()
    at_once, batched = heard
    assert still_open[0] == still_open[1]
    for conn in at_once.keys() | batched.keys():
        expected, got = at_once.get(conn, []), batched.get(conn, [])
        if conn in still_open[0]:
            assert got == expected, conn
        else:
            assert got == expected[: len(got)], conn
