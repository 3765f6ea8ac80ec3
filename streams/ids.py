"""Identifier rules shared by the events, the store and the HTTP API: one copy of each.

A user id is a short token of safe characters because it becomes part of Milvus primary keys
(``"{user_id}#{slot}#{generation}"``) and of filter expressions, where "#", quotes and backslashes would need
escaping. Integer ids arrive as their decimal string. A model version becomes part of collection names.
"""

from __future__ import annotations

import re

MAX_USER_ID_LENGTH = 128
MAX_ITEM_ID_LENGTH = 128  # what an event may carry (streams/events.py)
MAX_EVENT_ID_LENGTH = 128
USER_ID_PATTERN = re.compile(rf"[A-Za-z0-9_.:@\-]{{1,{MAX_USER_ID_LENGTH}}}")
# Milvus allows only letters, digits and underscores in collection names.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")


def validate_user_id(user_id: object) -> str:
    """The canonical user id (ints become their decimal string); ValueError names what is wrong."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValueError(f"user id must be a string or an integer, got {type(user_id).__name__}")
    text = str(user_id)
    if not USER_ID_PATTERN.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(f"user id {shown!r} is not valid: use 1-{MAX_USER_ID_LENGTH} characters from "
                         f"letters, digits and _ . : @ -")
    return text


def validate_version(version: object) -> str:
    """A model version usable in collection names; ValueError otherwise."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"model version {version!r} is not valid: use 1-64 letters, digits or underscores")
    return version


def interest_key(user_id: str, slot: int) -> str:
    """How callers name one interest vector of a user: ``"{user_id}#{slot}"`` (rows' `pk`, delete keys)."""
    return f"{user_id}#{int(slot)}"


def split_interest_key(key: str) -> tuple[str, int]:
    """``"{user_id}#{slot}"`` → (user id, slot); ValueError for anything else."""
    user_id, _, slot = str(key).rpartition("#")
    if not slot.isdigit():
        raise ValueError(f"interest key {key!r} is not of the form '{{user_id}}#{{slot}}'")
    return validate_user_id(user_id), int(slot)
