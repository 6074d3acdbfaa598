"""Property tests of the reference broker: arbitrary interleavings, checked invariants.

A hypothesis ``RuleBasedStateMachine`` drives one :class:`~meshproto.Broker`
through ``meshproto.testing.BrokerHarness``: it opens and closes sockets,
says hello (member and session hellos, good and bad), sends to every kind of
target (and to nonsense), acknowledges, changes status and summary, asks for
peers, feeds garbage and binary, pings, and moves time. Every input goes
through ``meshproto.testing.BrokerOracle``, which checks the broker's
invariants (``meshproto/_broker.py``) around it:

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
  of another member made by a session hello holds its key, and a member
  hello's unproven claim never takes a key from such a presence;
* at the end (``BrokerHarness.finish``: shutdown, then every timer run out)
  no socket, presence, claim, stored message or timer is left.

The fuzz harness in ``fuzz/fuzz_broker.py`` drives the same harness and
oracle from raw bytes; ``test_byte_driven_broker_runs_keep_the_invariants``
runs that path here, so CI needs no fuzzer.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshproto.testing import BrokerHarness

H = BrokerHarness


def index(table: tuple[object, ...]) -> st.SearchStrategy[int]:
    """An index into one of the harness's tables, every entry equally likely."""
    return st.sampled_from(range(len(table)))


slots = st.sampled_from(range(H.SLOTS))


class BrokerMachine(RuleBasedStateMachine):
    """Sockets, hellos, sends, acks, status, peers, garbage and time, in any order."""

    harness: BrokerHarness

    @initialize(small_limits=st.booleans())
    def start(self, small_limits: bool) -> None:
        self.harness = BrokerHarness(small=small_limits)

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

    @rule(slot=slots, data=st.binary(max_size=16))
    def binary(self, slot: int, data: bytes) -> None:
        self.harness.op_binary(slot, data)

    @rule(slot=slots, ping=st.booleans())
    def ping_or_pong(self, slot: int, ping: bool) -> None:
        self.harness.op_ping(slot, ping)

    @rule(slot=slots)
    def close(self, slot: int) -> None:
        self.harness.op_close(slot)

    @rule(step=index(H.TIME_STEPS))
    def advance(self, step: int) -> None:
        self.harness.op_advance(step)

    @rule()
    def run_next_timer(self) -> None:
        self.harness.op_fire_next_deadline()

    @invariant()
    def invariants_hold(self) -> None:
        # Each op already checks around its input; this also covers the start.
        if hasattr(self, "harness"):
            self.harness.oracle.check()

    def teardown(self) -> None:
        if hasattr(self, "harness"):
            self.harness.finish()


TestBrokerProperties = BrokerMachine.TestCase
TestBrokerProperties.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# hypothesis's binaries are a few bytes long unless told otherwise: too short to
# say hello and then send on the same socket.
@settings(max_examples=200, deadline=None)
@given(small_limits=st.booleans(), data=st.binary(min_size=64, max_size=800))
def test_byte_driven_broker_runs_keep_the_invariants(small_limits: bool, data: bytes) -> None:
    BrokerHarness(small=small_limits).run_bytes(data)
