"""JSON text with the rules TF-Serving's REST API inherits from rapidjson and absl.

- `parse_json` is rapidjson itself (python-rapidjson) with TF-Serving's parse flags emulated:
  bare `NaN`/`Infinity` accepted, rapidjson's error texts and byte offsets, and numbers read by
  rapidjson's own algorithm, so every double equals the one TF-Serving reads. Unlike
  TF-Serving (kParseStopWhenDoneFlag), anything but whitespace after the root is refused with
  rapidjson's kParseErrorDocumentRootNotSingular: a body is one document. An object that
  repeats a key becomes a `RepeatedKeys`: lookups see the first value (rapidjson's
  FindMember), `members` sees every member (rapidjson's loops).
- `debug_string` is the truncated pretty print that TF-Serving embeds in its error messages.
- `b64decode` reads `{"b64": ...}` values as absl::Base64Unescape does.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import rapidjson

from tfrec.base.errors import InvalidArgument

# rapidjson's debug strings in error messages stop growing past this many bytes.
_DEBUG_LIMIT = 256
_ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
_RAPIDJSON_1_1_TEXT = {"Invalid encoding in string.": "Invalid escape character in string."}


class RepeatedKeys(dict):
    """A JSON object with a repeated key: lookups see the first value, `pairs` all members."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        for key, value in pairs:
            self.setdefault(key, value)
        self.pairs = pairs


class _Decoder(rapidjson.Decoder):
    def start_object(self) -> list[tuple[str, Any]]:
        return []

    def end_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        return obj if len(obj) == len(pairs) else RepeatedKeys(pairs)


def parse_json(body: bytes) -> Any:
    """Parses like TF-Serving's ParseJson (kParseNanAndInfFlag over rapidjson's UTF-8
    MemoryStream, which skips a leading byte-order mark), without kParseStopWhenDoneFlag."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    start = _bom_length(body)
    try:
        return _parse_document(body[start:])
    except (rapidjson.JSONDecodeError, RecursionError) as err:
        offset, text = _parse_error(err)
        # rapidjson 1.1.0 (TF-Serving's) names a raw control character in a string this way;
        # the newer rapidjson inside python-rapidjson says "Invalid encoding in string.".
        text = _RAPIDJSON_1_1_TEXT.get(text, text)
        raise InvalidArgument(f"JSON Parse error: {text} at offset: {start + offset}") from None
    except UnicodeDecodeError as err:  # rapidjson 1.1.0 would pass the bytes through
        raise InvalidArgument(
            f"JSON Parse error: Invalid encoding in string. at offset: {start + err.start}"
        ) from None


def _bom_length(body: bytes) -> int:
    """How many of the bytes EF, BB, BF rapidjson's UTF-8 MemoryStream skips, in order."""
    start = 0
    for mark in b"\xef\xbb\xbf":
        if body[start : start + 1] == bytes([mark]):
            start += 1
    return start


def _parse_document(text: bytes) -> Any:
    value = _Decoder(number_mode=rapidjson.NM_NATIVE | rapidjson.NM_NAN)(text)
    # python-rapidjson reads a C string: a NUL byte ends the document (rapidjson's
    # MemoryStream reads it as the end too). A NUL cannot be inside a valid document, so
    # whatever follows the first one, NULs and whitespace aside, is content after the root.
    if b"\x00" in text:
        end = text.index(b"\x00")
        rest = text[end:].lstrip(b"\x00 \t\n\r")
        if rest:
            offset = len(text) - len(rest)
            raise rapidjson.JSONDecodeError(f"Parse error at offset {offset}: {_ROOT_NOT_SINGULAR}")
    return value


def _parse_error(err: Exception) -> tuple[int, str]:
    match = re.match(r"Parse error at offset (\d+): (.*)", str(err), re.DOTALL)
    return (int(match[1]), match[2]) if match else (0, str(err))


def members(obj: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """Every member of a parsed object in document order, repeated keys included."""
    return obj.pairs if type(obj) is RepeatedKeys else obj.items()


def is_b64(value: Any) -> bool:
    """`{"b64": "<string>"}` and nothing else (TF-Serving's IsValBase64Object)."""
    if not isinstance(value, dict) or "b64" not in value or not isinstance(value["b64"], str):
        return False
    return len(value.pairs if type(value) is RepeatedKeys else value) == 1


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_DROP_SPACE = str.maketrans("", "", " \t\n\v\f\r")


def b64decode(value: Any) -> bytes:
    """Decodes a b64 object the way absl::Base64Unescape does (whitespace skipped, padding
    optional, `=` or `.` as pad)."""
    if not is_b64(value):
        raise InvalidArgument(
            f"JSON Value: {debug_string(value)} not formatted correctly for base64 data"
        )
    text = value["b64"].translate(_DROP_SPACE)
    data = re.split(r"[=.]", text, maxsplit=1)[0]
    pad = text[len(data) :]
    expected = -len(data) % 4
    if (
        _NOT_BASE64.search(data)
        or len(data) % 4 == 1
        or pad.strip("=.")
        or len(pad) not in (0, expected)
    ):
        raise InvalidArgument("Unable to base64 decode")
    return binascii.a2b_base64(data + "=" * expected)


# ----------------------------------------------------------------------------- debug strings


def json_type(value: Any) -> str:
    """rapidjson's type name of a value, as TF-Serving's JsonTypeString prints it."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)} | {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}


def quote(text: str) -> str:
    """A JSON string literal escaped as rapidjson's Writer escapes it."""
    return '"' + text.translate(_ESCAPES) + '"'


def _rapidjson_double(x: float) -> str | None:
    """rapidjson's Writer::Double text; None for NaN/Inf, which it refuses to write."""
    if not math.isfinite(x):
        return None
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) + int(exp or 0) - (len(whole + frac) - len(digits))
    digits = digits.rstrip("0")
    sign, n = ("-" if x < 0 else ""), len(digits)
    if n <= point <= 21:
        return f"{sign}{digits}{'0' * (point - n)}.0"
    if 0 < point <= 21:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    tail = f".{digits[1:]}" if n > 1 else ""
    return f"{sign}{digits[0]}{tail}e{point - 1}"


def _events(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        yield "{", None
        for key, item in members(value):
            yield "key", key
            yield from _events(item)
        yield "}", None
    elif isinstance(value, list):
        yield "[", None
        for item in value:
            yield from _events(item)
        yield "]", None
    else:
        yield "value", value


def _scalar_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return quote(value)
    return _rapidjson_double(value) if isinstance(value, float) else str(value)


class _PrettyWriter:
    """rapidjson's PrettyWriter with kFormatSingleLineArray and a 4-space indent."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0  # bytes written
        self.levels: list[list[int]] = []  # [in_array, values written] per open container

    def _put(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text.encode("utf-8", "replace"))

    def _prefix(self) -> None:
        if not self.levels:
            return
        in_array, count = self.levels[-1]
        if in_array and count:
            self._put(", ")
        elif not in_array:  # members alternate key, value: `\n` or `,\n` + indent, then `: `
            if count % 2:
                self._put(": ")
            else:
                self._put(("\n" if count == 0 else ",\n") + "    " * len(self.levels))
        self.levels[-1][1] += 1

    def write(self, kind: str, payload: Any) -> bool:
        """Writes one event; False when rapidjson refuses it (a NaN or an infinity)."""
        if kind in ("{", "["):
            self._prefix()
            self.levels.append([kind == "[", 0])
            self._put(kind)
        elif kind in ("}", "]"):
            _, count = self.levels.pop()
            if kind == "}" and count:
                self._put("\n" + "    " * len(self.levels))
            self._put(kind)
        else:
            self._prefix()
            text = quote(payload) if kind == "key" else _scalar_text(payload)
            if text is None:
                return False
            self._put(text)
        return True


def debug_string(value: Any) -> str:
    """TF-Serving's JsonValueToDebugString: the pretty print stops at the first event after
    256 bytes, or at a NaN/Infinity, which rapidjson's writer refuses."""
    writer = _PrettyWriter()
    for kind, payload in _events(value):
        if writer.size >= _DEBUG_LIMIT or not writer.write(kind, payload):
            break
    return "".join(writer.parts)
