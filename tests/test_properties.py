"""Property tests: the client driven through arbitrary interleavings.

A hypothesis ``RuleBasedStateMachine`` plays a scripted broker against one
``ClientConnection`` (through ``meshproto.testing.ClientHarness``) and the
``ClientOracle`` checks every contract after every step. Besides well-formed
frames it feeds hostile frame *text* (``meshproto.testing._hostile``): lone
surrogates as JSON escapes in any string or key, characters outside the
BMP, NUL, strings at the size caps, integers past 2**63, floats where
integers belong, ``NaN``/``Infinity``, duplicate keys and deep nesting, all
through the real codec; and the application takes messages at its own pace,
acknowledging them as it takes them or later, with an inbox of any size (or
none), or accepts none at all. The fuzz harness in
``fuzz/fuzz_client.py`` drives the same harness and oracle from raw bytes;
``test_byte_driven_runs_keep_the_contracts`` runs that path here, so CI needs
no fuzzer.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshproto import ClientOptions
from meshproto.testing import ClientHarness

small = st.integers(min_value=0, max_value=255)
# The receiving side's pushes carry eight messages, each under one of two
# dedupe keys (messageId, or client_message_id with flag 1): sixteen keys.
_MESSAGES = 8
_PUSH_KEYS = 2 * _MESSAGES


class _AgainstScriptedBroker(RuleBasedStateMachine):
    """What both machines below share: a harness whose oracle is checked at every step."""

    harness: ClientHarness

    @invariant()
    def contracts_hold(self) -> None:
        # Each op already checks after its step; this also covers the start.
        self.harness.oracle.check()

    def teardown(self) -> None:
        if hasattr(self, "harness"):
            self.harness.finish()


class ClientAgainstScriptedBroker(_AgainstScriptedBroker):
    """Send, ack, reject, push (with duplicates), link drops, garbage, timers, close."""

    @initialize(
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        resend=st.booleans(),
        outbox=st.integers(min_value=1, max_value=8),
        inbox=st.integers(min_value=0, max_value=6),
        accept=st.booleans() | st.just(True),
        opened=st.booleans(),
        spare=st.integers(min_value=0, max_value=6) | st.just(4096),
    )
    def start(
        self,
        seed: int,
        resend: bool,
        outbox: int,
        inbox: int,
        accept: bool,
        *,
        opened: bool,
        spare: int,
    ) -> None:
        # Mostly a dedupe window smaller than the 32 keys the pushes use, so that
        # keys are forgotten and pushed again; the oracle knows which may be.
        options = ClientOptions(
            resend_in_flight=resend,
            max_outbox=outbox,
            inbox_limit=inbox,
            accept_messages=accept,
            dedupe_window=max(1, 2 * inbox) + spare,
        )
        self.harness = ClientHarness(seed=seed, options=options)
        if opened:  # half the runs start on an open link, where the inbox fills
            self.harness.op_open()
            self.harness.op_hello_ack()

    @rule(to=small, priority=small, size=small)
    def send(self, to: int, priority: int, size: int) -> None:
        self.harness.op_send(to, priority, size)

    @rule()
    def transport_opens(self) -> None:
        self.harness.op_open()

    @rule()
    def transport_fails_to_open(self) -> None:
        self.harness.op_open_fails()

    @rule()
    def hello_ack(self) -> None:
        self.harness.op_hello_ack()

    @rule(index=small, how=small)
    def broker_answers_a_send(self, index: int, how: int) -> None:
        self.harness.op_answer(index, how)

    @rule(index=small)
    def stale_ack(self, index: int) -> None:
        self.harness.op_stale_ack(index)

    @rule(key=small, flags=small)
    def push(self, key: int, flags: int) -> None:
        self.harness.op_push(key, flags)

    @rule(how_many=small)
    def application_takes_messages(self, how_many: int) -> None:
        self.harness.op_take(how_many)

    @rule(how_many=small)
    def application_takes_messages_without_acknowledging(self, how_many: int) -> None:
        self.harness.op_take(how_many, acknowledge=False)

    @rule(index=small, how=small)
    def application_acknowledges_a_message(self, index: int, how: int) -> None:
        self.harness.op_acknowledge(index, how)

    @rule(index=small, fresh_id=st.booleans())
    def broker_pushes_a_taken_message_again(self, index: int, fresh_id: bool) -> None:
        self.harness.op_push_again(index, fresh_id)

    @rule(data=st.data())
    def hostile_frame_text(self, data: st.DataObject) -> None:
        """A broker frame written as text with hostile strings, numbers, keys or nesting."""
        self.harness.op_hostile(lambda n: data.draw(st.integers(0, max(0, n - 1))))

    @rule(which=small)
    def link_drop(self, which: int) -> None:
        self.harness.op_link_drop(which)

    @rule(which=small)
    def permanent_refusal(self, which: int) -> None:
        self.harness.op_refuse(which)

    @rule(data=st.binary(max_size=64), binary=st.booleans())
    def garbage(self, data: bytes, binary: bool) -> None:
        self.harness.op_garbage(data, binary)

    @rule(text=st.sampled_from(['{"type":"ack"}', "[]", "null", '{"type":1}', '{"type":"push"}']))
    def malformed_known_frame(self, text: str) -> None:
        self.harness.op_garbage(text.encode(), False)

    @rule(step=small)
    def time_passes(self, step: int) -> None:
        self.harness.op_advance(step)

    @rule()
    def next_timer_fires(self) -> None:
        self.harness.op_fire_next_deadline()

    @rule(pong=st.booleans())
    def ping_or_pong(self, pong: bool) -> None:
        self.harness.op_ping(pong)

    @rule(which=small)
    def set_status(self, which: int) -> None:
        self.harness.op_set_status(which)

    @rule()
    def list_peers(self) -> None:
        self.harness.op_list_peers()

    @rule(index=small)
    def broker_answers_list_peers(self, index: int) -> None:
        self.harness.op_answer_peers(index)

    @rule()
    def user_closes(self) -> None:
        self.harness.op_close()


ClientAgainstScriptedBroker.TestCase.settings = settings(
    max_examples=600,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_client_keeps_its_contracts_in_any_interleaving = ClientAgainstScriptedBroker.TestCase


class ReceivingSideAgainstScriptedBroker(_AgainstScriptedBroker):
    """The receiving side alone: pushes and re-pushes, takes with and without
    acknowledging, acknowledgements (and refused second ones), lost links, timers.

    The rules above reach a full inbox rarely (most inputs go elsewhere); these
    keep a link open most of the time, so that messages pile up, are taken
    unacknowledged, and are pushed again while held. The dedupe window is
    mostly smaller than the sixteen keys the pushes use, so that messages held
    reach ``dedupe_window - inbox_limit`` and stop the reading, and keys are
    forgotten around them (the oracle knows which may be).
    """

    @initialize(
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        inbox=st.integers(min_value=1, max_value=6),
        spare=st.integers(min_value=0, max_value=6),
    )
    def start(self, seed: int, inbox: int, spare: int) -> None:
        window = 2 * inbox + spare
        options = ClientOptions(inbox_limit=inbox, dedupe_window=window)
        self.harness = ClientHarness(seed=seed, options=options)
        self.reconnect()

    @rule()
    def reconnect(self) -> None:
        harness = self.harness
        if harness.transport is None and harness.opening is None:
            harness.op_fire_next_deadline()  # the reconnect timer
        harness.op_open()
        harness.op_hello_ack()

    @rule(
        key=st.integers(min_value=0, max_value=_MESSAGES - 1), flags=st.sampled_from([0, 1, 8, 9])
    )
    def push(self, key: int, flags: int) -> None:
        self.harness.op_push(key, flags)

    @rule(index=small, fresh_id=st.booleans())
    def push_again(self, index: int, fresh_id: bool) -> None:
        self.harness.op_push_again(index, fresh_id)

    @rule(how_many=small, acknowledge=st.booleans())
    def take(self, how_many: int, acknowledge: bool) -> None:
        self.harness.op_take(how_many, acknowledge=acknowledge)

    @rule(index=small, how=small)
    def acknowledge(self, index: int, how: int) -> None:
        self.harness.op_acknowledge(index, how)

    @rule(which=small)
    def link_drop(self, which: int) -> None:
        self.harness.op_link_drop(which)

    @rule(step=small)
    def time_passes(self, step: int) -> None:
        self.harness.op_advance(step)


ReceivingSideAgainstScriptedBroker.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_receiving_side_keeps_its_contracts_in_any_interleaving = (
    ReceivingSideAgainstScriptedBroker.TestCase
)


@settings(max_examples=500, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**16),
    inbox=st.integers(min_value=0, max_value=4),
    data=st.binary(min_size=64, max_size=600),
)
def test_byte_driven_runs_keep_the_contracts(seed: int, inbox: int, data: bytes) -> None:
    ClientHarness(seed=seed, options=ClientOptions(inbox_limit=inbox)).run_bytes(data)
