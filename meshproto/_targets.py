"""Target specs (docs/protocol.md §4.1), checked locally.

The real broker answers a malformed ``send`` with silence, so a client
validates targets before it writes anything: a direct target is a 64-hex
lowercase member or session pubkey; ``*`` and ``@all`` reach everyone else;
``@name`` a group; ``#id`` a topic.
"""

from __future__ import annotations

import re

from ._errors import LocalProtocolError

__all__ = ["check_target", "is_direct_target", "is_pubkey"]

#: What a pubkey is made of: ``not t.strip(_HEX_DIGITS)`` says every character
#: of ``t`` is one, without the regular expression engine (every send checks
#: its target, and most targets are pubkeys).
_HEX_DIGITS = "0123456789abcdef"
_NAME = re.compile(r"[^\s@#*]{1,128}")


def is_pubkey(text: object) -> bool:
    """Whether ``text`` is 64 lowercase hex characters."""
    return isinstance(text, str) and is_direct_target(text)


def is_direct_target(target_spec: str) -> bool:
    """Whether a target names one peer (and its body is therefore sealed): a pubkey."""
    return len(target_spec) == 64 and not target_spec.strip(_HEX_DIGITS)


def check_target(target: object) -> None:
    """Raise :class:`LocalProtocolError` unless ``target`` is a well-formed target spec."""
    if not isinstance(target, str):
        raise LocalProtocolError(f"target must be a str, got {type(target).__name__}")
    if is_direct_target(target) or target in ("*", "@all"):
        return
    if not target.isprintable():
        raise LocalProtocolError(f"target contains unprintable characters: {target!r}")
    if target[:1] in ("@", "#") and _NAME.fullmatch(target[1:]):
        return
    if is_direct_target(target.lower()):
        raise LocalProtocolError(f"target pubkey must be lowercase hex: {target!r}")
    raise LocalProtocolError(
        f"target must be a 64-hex pubkey, '*', '@all', '@group' or '#topic', got {target!r}"
    )
