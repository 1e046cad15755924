"""Turning an exception into the one line that an error message quotes."""

from __future__ import annotations


def first_line(e: BaseException, *, with_type: bool = True, limit: int | None = None) -> str:
    """The first non-blank line of ``str(e)``, stripped; prefixed ``Type: `` unless ``with_type`` is off.

    An exception with no text is named by its type. ``limit`` cuts the quoted text (not the type name),
    for messages that may hold a whole graph dump.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0] if limit is None else lines[0][:limit]
    return f"{type(e).__name__}: {text}" if with_type else text
