"""Where things are in a TOML file, and a typed reader that says so when they are wrong.

tomllib parses but keeps no positions. :class:`SourceIndex` scans the source text once and
maps a key path such as ``plan.waves[1].agencies`` to the line where it is defined: table
headers, arrays of tables (counted for their indices), ``key = value`` lines with bare,
quoted and dotted keys, inline tables and the elements of (multi-line) arrays. The scanner
is lenient, so it also indexes text that tomllib rejected, which is how a syntax error gets
the key found on its line (:func:`syntax_error`).

:class:`TableReader` reads one table of the parsed document with types and ranges checked;
every mistake is a :class:`ScenarioError` naming the file, the key path and the line.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import enum
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias, TypeGuard

__all__ = [
    "MISSING",
    "DateRange",
    "KeyPath",
    "Position",
    "ScenarioError",
    "SourceIndex",
    "TableReader",
    "describe",
    "read_source",
    "render_key",
    "split_key",
    "syntax_error",
]

Part: TypeAlias = str | int
KeyPath: TypeAlias = tuple[Part, ...]


class ScenarioError(ValueError):
    """A mistake in a scenario file: ``{path}:{line}: {key}: {message}``.

    ``key`` is the dotted key path with array indices (``""`` when the whole file is
    wrong) and ``line`` is 1-based (``None`` when no line applies).
    """

    def __init__(self, path: Path, key: str, line: int | None, message: str) -> None:
        super().__init__(path, key, line, message)
        self.path = path
        self.key = key
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}" if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


# -- key paths -------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PART = re.compile(
    r'\.?(?:(?P<bare>[A-Za-z0-9_-]+)|(?P<quoted>"(?:[^"\\]|\\.)*")|\[(?P<index>\d+)\])'
)


def render_key(parts: KeyPath) -> str:
    """``("plan", "waves", 1, "agencies")`` -> ``plan.waves[1].agencies`` (odd names quoted)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
        out.append(f".{name}" if out else name)
    return "".join(out)


def split_key(key: str) -> KeyPath:
    """The inverse of :func:`render_key`."""
    parts: list[Part] = []
    pos = 0
    while pos < len(key):
        match = _KEY_PART.match(key, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"not a key path: {key!r}")
        if match["index"] is not None:
            parts.append(int(match["index"]))
        else:
            parts.append(match["bare"] or json.loads(match["quoted"]))
        pos = match.end()
    return tuple(parts)


# -- the line index --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


class SourceIndex:
    """Key path -> position of its definition, from one lenient scan of the source."""

    __slots__ = ("_entries", "_explicit", "_implicit")

    def __init__(self, text: str) -> None:
        self._explicit: dict[KeyPath, Position] = {}
        self._implicit: dict[KeyPath, Position] = {}
        self._entries: list[tuple[Position, KeyPath]] = []
        _Scanner(text, self._record).run()

    def _record(self, parts: KeyPath, position: Position) -> None:
        if not parts:
            return
        for n in range(1, len(parts)):
            self._implicit.setdefault(parts[:n], position)
        self._explicit.setdefault(parts, position)
        self._entries.append((position, parts))

    def position(self, key: str | KeyPath) -> Position | None:
        """Where ``key`` is defined (or first implied, for a table only named by a child)."""
        parts = split_key(key) if isinstance(key, str) else key
        return self._explicit.get(parts) or self._implicit.get(parts)

    def line_of(self, key: str | KeyPath) -> int | None:
        """The line of ``key``, else of its nearest ancestor that is in the file."""
        parts = split_key(key) if isinstance(key, str) else key
        while parts:
            found = self.position(parts)
            if found is not None:
                return found.line
            parts = parts[:-1]
        return None

    def key_at(self, line: int, column: int | None = None) -> str:
        """The key defined on ``line``: the last one starting at or before ``column``."""
        on_line = [(pos.column, parts) for pos, parts in self._entries if pos.line == line]
        if column is not None:
            on_line = [entry for entry in on_line if entry[0] <= column] or on_line[:1]
        if not on_line:
            return ""
        chosen = on_line[-1] if column is not None else on_line[0]
        return render_key(chosen[1])

    def last_entry(self) -> tuple[str, int | None]:
        """The last key defined in the file and its line (for errors at the end of a file)."""
        if not self._entries:
            return "", None
        position, parts = self._entries[-1]
        return render_key(parts), position.line

    def keys(self) -> tuple[str, ...]:
        """Every key defined explicitly, in the order of the source."""
        return tuple(render_key(parts) for _, parts in self._entries)


_BARE_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_VALUE_END: Final = frozenset(",]}#\r\n")
_ESCAPES: Final = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b"}


class _Scanner:
    """Walks TOML text statement by statement, reporting every key and array element."""

    def __init__(self, text: str, record: Callable[[KeyPath, Position], None]) -> None:
        self.text = text
        self.pos = 0
        self.record = record
        self.line_starts = [0, *(i + 1 for i, char in enumerate(text) if char == "\n")]
        self.arrays: dict[KeyPath, int] = {}  # array-of-tables path -> headers seen
        self.table: KeyPath = ()

    def here(self, offset: int) -> Position:
        line = bisect.bisect_right(self.line_starts, offset)
        return Position(line=line, column=offset - self.line_starts[line - 1] + 1)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def run(self) -> None:
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.peek() == "[":
                self.header()
            else:
                self.key_value(self.table)
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else max(end, start + 1)

    def skip_blank(self, *, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
                if not newlines:
                    return
            else:
                return

    def header(self) -> None:
        start = self.pos
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        names = self.key_names()
        parts: KeyPath = ()
        for i, name in enumerate(names):
            parts = (*parts, name)
            if is_array and i == len(names) - 1:
                seen = self.arrays.get(parts, 0)
                self.arrays[parts] = seen + 1
                parts = (*parts, seen)
            elif parts in self.arrays:
                parts = (*parts, self.arrays[parts] - 1)
        self.record(parts, self.here(start))
        self.table = parts

    def key_names(self) -> list[str]:
        names: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char in ('"', "'"):
                names.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE_CHARS:
                    self.pos += 1
                if self.pos == start:
                    return names
                names.append(self.text[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return names
            self.pos += 1

    def key_value(self, prefix: KeyPath) -> None:
        start = self.pos
        names = self.key_names()
        if not names:
            return
        parts = (*prefix, *names)
        self.record(parts, self.here(start))
        self.skip_blank(newlines=False)
        if self.peek() == "=":
            self.pos += 1
            self.skip_blank(newlines=False)
            self.value(parts)

    def value(self, parts: KeyPath) -> None:
        char = self.peek()
        if char == "[":
            self.array(parts)
        elif char == "{":
            self.inline_table(parts)
        elif char in ('"', "'"):
            self.string()
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _VALUE_END:
                self.pos += 1

    def array(self, parts: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank(newlines=True)
            char = self.peek()
            if char in ("", "]"):
                self.pos += len(char)
                return
            start = self.pos
            if char != ",":
                self.record((*parts, index), self.here(start))
                self.value((*parts, index))
                index += 1
                self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1
            elif self.pos == start:
                self.pos += 1  # something no value starts with: step over it

    def inline_table(self, parts: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_blank(newlines=True)
            char = self.peek()
            if char in ("", "}"):
                self.pos += len(char)
                return
            start = self.pos
            if char != ",":
                self.key_value(parts)
            if self.pos == start:
                self.pos += 1

    def string(self) -> str:
        """Step over a string of any of the four kinds; return its (key-relevant) text."""
        quote = self.peek()
        text = self.text
        if text.startswith(quote * 3, self.pos):
            end = self.pos + 3
            while end < len(text) and not text.startswith(quote * 3, end):
                end += 2 if quote == '"' and text[end] == "\\" else 1
            end = close = min(end + 3, len(text))
            while end < len(text) and end < close + 2 and text[end] == quote:
                end += 1  # up to two quotes may close the content itself
            self.pos = end
            return ""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(text) and text[self.pos] not in (quote, "\n"):
            char = text[self.pos]
            if quote == '"' and char == "\\":
                self.pos += 1
                out.append(self.escape())
            else:
                out.append(char)
                self.pos += 1
        self.pos += self.peek() == quote
        return "".join(out)

    def escape(self) -> str:
        char = self.peek()
        self.pos += 1
        width = {"u": 4, "U": 8}.get(char, 0)
        if width:
            digits = self.text[self.pos : self.pos + width]
            self.pos += width
            try:
                return chr(int(digits, 16))
            except ValueError:
                return ""
        return _ESCAPES.get(char, char)


def read_source(path: Path) -> str:
    """A file's text; an unreadable or non-UTF-8 file is a :class:`ScenarioError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(path, "", None, f"cannot read the file: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(path, "", line, "the file is not valid UTF-8") from exc


# -- syntax errors ---------------------------------------------------------------------------

_AT = re.compile(
    r"(?P<what>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)", re.S
)
_DATE_TOKEN = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?)?"
)


def syntax_error(
    error: tomllib.TOMLDecodeError, *, text: str, path: Path, index: SourceIndex
) -> ScenarioError:
    """Translate tomllib's error: its line, the key found there, a plainer message."""
    match = _AT.fullmatch(str(error))
    what = match["what"] if match else str(error)
    what = what[:1].lower() + what[1:]
    if match is None or match["line"] is None:
        key, line = index.last_entry()
        return ScenarioError(path, key, line, f"TOML syntax error at the end of the file: {what}")
    line, column = int(match["line"]), int(match["column"])
    lines = text.split("\n")
    bad_date = _impossible_date(lines[line - 1] if line <= len(lines) else "", column)
    if bad_date is not None:
        at, message = bad_date
        return ScenarioError(path, index.key_at(line, at), line, message)
    key = index.key_at(line, column)
    first = index.position(key) if key and what.startswith("cannot overwrite") else None
    if first is not None and first.line != line:
        return ScenarioError(path, key, line, f"set twice (first on line {first.line})")
    return ScenarioError(path, key, line, f"TOML syntax error at column {column}: {what}")


def _impossible_date(line: str, column: int) -> tuple[int, str] | None:
    """A date-shaped token under ``column`` that is no real date: its column and why."""
    for token in _DATE_TOKEN.finditer(line):
        if not token.start() <= column - 1 <= token.end():
            continue
        literal = token.group()
        normal = literal.upper().replace(" ", "T")
        try:
            if len(normal) == 10:
                dt.date.fromisoformat(normal)
            else:
                dt.datetime.fromisoformat(normal)
        except ValueError as exc:
            kind = "date" if len(normal) == 10 else "datetime"
            return token.start() + 1, f"invalid {kind} {literal}: {exc}"
    return None


# -- the typed reader ------------------------------------------------------------------------


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING: Final = _Missing.MISSING


def describe(value: object) -> str:
    """``a float (12.5)``: a value's TOML type and a short rendering, for messages."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return f"a string ({shown if len(shown) <= 40 else shown[:36] + '...'})"
    if isinstance(value, dt.datetime):
        kind = "datetime" if value.tzinfo is None else "datetime with a UTC offset"
        return f"a {kind} ({value.isoformat()})"
    if isinstance(value, dt.date | dt.time):
        return f"a {type(value).__name__} ({value.isoformat()})"
    if isinstance(value, list):
        return "an array"
    return "a table" if isinstance(value, dict) else type(value).__name__


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class TableReader:
    """Reads one TOML table: typed getters, range checks, unknown keys, precise errors."""

    __slots__ = ("data", "index", "path", "prefix")

    def __init__(
        self, data: Mapping[str, object], *, path: Path, index: SourceIndex, prefix: KeyPath = ()
    ) -> None:
        self.data = data
        self.path = path
        self.index = index
        self.prefix = prefix

    def key(self, *parts: Part) -> str:
        return render_key((*self.prefix, *parts))

    def error(self, at: Part | KeyPath, message: str) -> ScenarioError:
        """A :class:`ScenarioError` for ``at`` (a key of this table, or a path below it)."""
        parts = (*self.prefix, *(at if isinstance(at, tuple) else (at,)))
        return ScenarioError(self.path, render_key(parts), self.index.line_of(parts), message)

    def only(self, *names: str, context: str = "") -> None:
        """Refuse any key but ``names``, the first in source order, with a close suggestion."""
        unknown = [name for name in self.data if name not in names]
        if not unknown:
            return
        name = min(unknown, key=lambda n: self.index.line_of((*self.prefix, n)) or 0)
        raise self.error(name, f"unknown key '{name}'{context}{_hint(name, names)}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        if name not in self.data:
            raise self.error(name, f"missing required key '{name}'")
        return self.data[name]

    def integer(
        self,
        name: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        default: int | _Missing = MISSING,
    ) -> int:
        if default is not MISSING and name not in self.data:
            return default
        value = self.raw(name)
        if not _is_int(value):
            raise self.error(name, f"expected an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum}, got {value}")
        return value

    def number(
        self,
        name: str,
        *,
        minimum: float | None = None,
        above: float | None = None,
        maximum: float | None = None,
        default: float | _Missing = MISSING,
    ) -> float:
        """A float (an integer is accepted and widened) within the given bounds."""
        if default is not MISSING and name not in self.data:
            return default
        value = self.raw(name)
        if not (_is_int(value) or isinstance(value, float)):
            raise self.error(name, f"expected a number, got {describe(value)}")
        assert isinstance(value, int | float)
        number = float(value)
        if not math.isfinite(number):
            raise self.error(name, f"must be a finite number, got {number}")
        if minimum is not None and not number >= minimum:
            raise self.error(name, f"must be >= {minimum:g}, got {number:g}")
        if above is not None and not number > above:
            raise self.error(name, f"must be > {above:g}, got {number:g}")
        if maximum is not None and not number <= maximum:
            raise self.error(name, f"must be <= {maximum:g}, got {number:g}")
        return number

    def probability(self, name: str, *, default: float | _Missing = MISSING) -> float:
        value = self.number(name, default=default)
        if not 0.0 <= value <= 1.0:
            raise self.error(name, f"must be a probability between 0 and 1, got {value:g}")
        return value

    def text(self, name: str, *, default: str | _Missing = MISSING, nonempty: bool = False) -> str:
        if default is not MISSING and name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {describe(value)}")
        if nonempty and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def choice(
        self, name: str, options: Sequence[str], *, what: str, default: str | _Missing = MISSING
    ) -> str:
        value = self.text(name, default=default)
        if value not in options:
            raise self.error(name, f"unknown {what} '{value}'{_hint(value, options)}")
        return value

    def date(self, name: str) -> dt.date:
        return self._date(self.raw(name), name)

    def dates(self, name: str) -> tuple[dt.date, ...]:
        """An array of dates (absent: empty)."""
        if name not in self.data:
            return ()
        return tuple(self._date(v, (name, i)) for i, v in enumerate(self.array(name)))

    def datetime(self, name: str) -> dt.datetime:
        value = self.raw(name)
        if not isinstance(value, dt.datetime) or value.tzinfo is not None:
            raise self.error(
                name, f"expected a local datetime (YYYY-MM-DDTHH:MM:SS), got {describe(value)}"
            )
        return value

    def pair(self, name: str) -> tuple[int, int]:
        """``[min, max]``: two integers, 0 <= min <= max."""
        items = self.array(name)
        if len(items) != 2:
            raise self.error(name, f"expected [min, max] (two integers), got {len(items)} items")
        low, high = (self._count(v, (name, i)) for i, v in enumerate(items))
        if low > high:
            raise self.error(name, f"min ({low}) must be <= max ({high})")
        return low, high

    def array(self, name: str) -> list[object]:
        value = self.raw(name)
        if not isinstance(value, list):
            raise self.error(name, f"expected an array, got {describe(value)}")
        return value

    def table(self, name: str) -> TableReader:
        value = self.raw(name)
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {describe(value)}")
        return TableReader(value, path=self.path, index=self.index, prefix=(*self.prefix, name))

    def tables(self, name: str) -> list[TableReader]:
        """An array of tables (``[[name]]`` or an array of inline tables; absent: empty)."""
        if name not in self.data:
            return []
        readers = []
        for i, value in enumerate(self.array(name)):
            if not isinstance(value, dict):
                raise self.error((name, i), f"expected a table, got {describe(value)}")
            prefix = (*self.prefix, name, i)
            readers.append(TableReader(value, path=self.path, index=self.index, prefix=prefix))
        return readers

    def _date(self, value: object, at: Part | KeyPath) -> dt.date:
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise self.error(at, f"expected a local date (YYYY-MM-DD), got {describe(value)}")
        return value

    def _count(self, value: object, at: Part | KeyPath) -> int:
        if not _is_int(value):
            raise self.error(at, f"expected an integer, got {describe(value)}")
        if value < 0:
            raise self.error(at, f"must be >= 0, got {value}")
        return value


@dataclass(frozen=True, slots=True)
class DateRange:
    """Inclusive bounds for dates (and for the day of a datetime), named in messages."""

    start: dt.date
    end: dt.date
    what: str  # "scenario span", "calendar"

    def check(self, r: TableReader, at: Part | KeyPath, value: dt.date) -> None:
        day = value.date() if isinstance(value, dt.datetime) else value
        if not self.start <= day <= self.end:
            raise r.error(at, f"{value.isoformat()} is outside the {self.what} {self}")

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


def _hint(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (expected one of: {', '.join(options)})" if options else " (none is allowed here)"
