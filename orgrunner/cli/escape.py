"""Untrusted text made safe for a terminal: the one escape function.

Account names, tags, resource ids, rule descriptions, error messages and notes come from AWS,
from files or from task code; any of them can hold characters a terminal obeys instead of
showing (ESC starts a control sequence that can clear the screen, move the cursor or hide
text; CR returns to the start of the line; a bidi override reorders what follows). Everything
printed to a terminal or shown in a prompt passes through `visible`, which writes such
characters as escapes (`\\x1b`, `\\n`, `\\u202e`) so the operator sees them instead of their effect.
The JSON report, the audit log and the journal keep the exact value (JSON escapes it there).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char == " " or char.isprintable():
        return char
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: object) -> str:
    """`text` (str() of anything) with every character a terminal would act on made visible: what
    Python does not call printable (controls C0, DEL and C1, format characters such as the bidi
    overrides and zero-width ones, line and paragraph separators, spaces other than the plain one,
    lone surrogates, unassigned code points) is written as an escape."""
    string = text if isinstance(text, str) else str(text)
    if string.isprintable():
        return string
    return "".join(_escape(char) for char in string)
