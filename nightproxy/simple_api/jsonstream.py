"""The elements of one array of a JSON object, decoded one at a time from chunks of text.

``json.loads`` of a PEP 691 page makes every file (or, for the project list of a public
index, every one of a million projects) a dict at once: several hundred megabytes for a big
page. Here the document is read as it comes, and each element of the one array wanted
(``files``, ``projects``) is decoded, handed over and dropped before the next; the object's
other members are decoded whole and kept (they are small: ``meta``, ``name``, ``versions``).
Each element is still decoded by the ``json`` module itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BLANKS = " \t\n\r"
_DECODER = json.JSONDecoder()


def _blank_end(text: str, pos: int) -> int:
    """Where the whitespace at ``pos`` ends."""
    match = _WHITESPACE.match(text, pos)
    return match.end() if match is not None else pos


class JsonStreamError(ValueError):
    """The text is not a JSON object (or is cut short)."""


#: What can follow the digits a number was read up to, as part of the same number.
_NUMBER_TAIL = frozenset("0123456789+-.eE")


def _number_cut_short(value: object, buffer: str, after: int) -> bool:
    """Whether a number read up to ``after`` may go on past the end of ``buffer`` (only
    characters of a number's tail follow it there)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return all(char in _NUMBER_TAIL for char in buffer[after:])


class ArrayMember:
    """Feed text with ``feed``, end with ``close``; ``on_element`` gets each element of the
    object's member ``key`` (which must be an array) in order."""

    def __init__(self, key: str, on_element: Callable[[object], None]) -> None:
        self.key = key
        self.on_element = on_element
        #: The object's other members, decoded.
        self.others: dict[str, object] = {}
        #: Whether the member was found (and was an array).
        self.found = False
        self._buffer = ""
        self._pos = 0
        # The state is a function of the class, not a bound method: a bound method would make
        # a reference cycle that keeps ``on_element`` (and all it gathered) alive until the
        # garbage collector's next full pass.
        self._state = ArrayMember._start
        self._current_key = ""
        #: After a value could not be decoded for want of text, the buffer length to wait for
        #: before trying again: doubling it keeps a long value from being rescanned per chunk.
        self._retry_at = 0

    def feed(self, text: str) -> None:
        if self._pos:
            self._buffer = self._buffer[self._pos :]
            self._pos = 0
        self._buffer += text
        if len(self._buffer) >= self._retry_at:
            self._run(eof=False)

    def close(self) -> None:
        self._run(eof=True)
        if self._state is not ArrayMember._done:
            raise JsonStreamError("cut short")
        if _blank_end(self._buffer, self._pos) != len(self._buffer):
            raise JsonStreamError("extra data after the object")

    # -- the states: each returns False when it needs more text -------------------------------

    def _run(self, *, eof: bool) -> None:
        self._retry_at = 0
        while self._state(self, eof):
            pass

    def _skip(self) -> str | None:
        """The next non-blank character (not consumed), None at the end of the buffer."""
        self._pos = _blank_end(self._buffer, self._pos)
        return self._buffer[self._pos] if self._pos < len(self._buffer) else None

    def _expect(self, char: str, wanted: str) -> None:
        if char not in wanted:
            raise JsonStreamError(f"expected {wanted!r}")

    def _value(self, eof: bool) -> tuple[bool, object]:
        """(decoded?, value) at the position; not decoded means: wait for more text."""
        try:
            value, end = _DECODER.raw_decode(self._buffer, self._pos)
        except json.JSONDecodeError as exc:
            # A number at the very end may go on in the next chunk; anything else that fails
            # before the end of the text may just be cut off there.
            if eof:
                raise JsonStreamError(exc.msg) from None
            self._retry_at = 2 * len(self._buffer)
            return False, None
        except RecursionError:
            raise JsonStreamError("nested too deeply") from None
        if (
            not eof
            and not isinstance(value, dict | list | str)
            and (end == len(self._buffer) or _number_cut_short(value, self._buffer, end))
        ):
            return False, None  # "12" may be "123", "1e+" "1e+5", once the next chunk is here
        self._pos = end
        return True, value

    def _start(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        self._expect(char, "{")
        self._pos += 1
        self._state = ArrayMember._first_key
        return True

    def _first_key(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        if char == "}":
            self._pos += 1
            self._state = ArrayMember._done
            return True
        self._state = ArrayMember._key
        return True

    def _key(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        self._expect(char, '"')
        decoded, key = self._value(eof)
        if not decoded:
            return False
        self._current_key = str(key)
        self._state = ArrayMember._colon
        return True

    def _colon(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        self._expect(char, ":")
        self._pos += 1
        self._state = ArrayMember._member
        return True

    def _member(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        if self._current_key == self.key and char == "[":
            self._pos += 1
            self.found = True
            self._state = ArrayMember._first_element
            return True
        decoded, value = self._value(eof)
        if not decoded:
            return False
        self.others[self._current_key] = value
        self._state = ArrayMember._after_member
        return True

    def _after_member(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        self._expect(char, ",}")
        self._pos += 1
        self._state = ArrayMember._key if char == "," else ArrayMember._done
        return True

    def _first_element(self, eof: bool) -> bool:
        char = self._skip()
        if char is None:
            return False
        if char == "]":
            self._pos += 1
            self._state = ArrayMember._after_member
            return True
        self._state = ArrayMember._element
        return True

    def _element(self, eof: bool) -> bool:
        # The one loop that runs per element (a million times for a public index's project
        # list), so it does by itself what the other states do one step at a time.
        buffer, pos, end = self._buffer, self._pos, len(self._buffer)
        decode, on_element = _DECODER.raw_decode, self.on_element
        while True:
            if pos < end and buffer[pos] in _BLANKS:
                pos = _blank_end(buffer, pos)
            if pos >= end:
                break
            try:
                value, after = decode(buffer, pos)
            except json.JSONDecodeError:
                self._pos = pos
                return self._value(eof)[0]  # waits for more text, or fails at the end
            except RecursionError:
                raise JsonStreamError("nested too deeply") from None
            if after < end and buffer[after] in _BLANKS:
                after = _blank_end(buffer, after)
            if after >= end and not (eof and isinstance(value, dict | list | str)):
                # The element may go on in the next chunk ("12" of "123"), or what follows it.
                break
            if not eof and _number_cut_short(value, buffer, after):
                # "1.5e+" at the end of a chunk reads as 1.5: its exponent is still to come.
                break
            on_element(value)
            char = buffer[after] if after < end else ""
            if char == ",":
                pos = after + 1
                continue
            if char == "]":
                self._pos = after + 1
                self._state = ArrayMember._after_member
                return True
            raise JsonStreamError("expected ',' or ']'")
        self._pos = pos
        return False

    def _done(self, eof: bool) -> bool:
        return False
