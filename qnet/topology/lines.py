"""Line numbers for key paths: tomllib keeps no positions, so the text is scanned again."""

from __future__ import annotations

import contextlib
import re
import tomllib

KeyPath = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class KeyLines:
    """The line of every key path in a TOML text: ("network", "seed"), ("node", 2, "name"), …

    Array-of-tables entries get their 0-based index in the path. Only ever run on text that
    tomllib accepted, so it can be lenient; if it trips anyway, the lines found so far stay
    and lookups fall back to an enclosing table's line.
    """

    def __init__(self, text: str) -> None:
        self._s = text
        self._i = 0
        self._line = 1
        self._arrays: dict[KeyPath, int] = {}
        self.lines: dict[KeyPath, int] = {}
        with contextlib.suppress(IndexError, ValueError, AttributeError, tomllib.TOMLDecodeError):
            self._scan()

    def line(self, path: KeyPath) -> int:
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return 1

    def _scan(self) -> None:
        s = self._s
        table: KeyPath = ()
        while self._i < len(s):
            c = s[self._i]
            if c in " \t\r":
                self._i += 1
            elif c == "\n":
                self._line += 1
                self._i += 1
            elif c == "#":
                self._skip_comment()
            elif c == "[":
                array = s.startswith("[[", self._i)
                self._i += 2 if array else 1
                key = self._key()
                self._i += 2 if array else 1
                if array:
                    base = (*self._resolve(key[:-1]), key[-1])
                    n = self._arrays.get(base, 0)
                    self._arrays[base] = n + 1
                    table = (*base, n)
                else:
                    table = self._resolve(key)
                self._record(table)
            else:
                key = self._key()
                self._i += 1  # the '='
                self._record((*table, *key))
                self._skip_value()

    def _resolve(self, key: tuple[str, ...]) -> KeyPath:
        """[node.x] after the k-th [[node]] means the k-th node's table x."""
        out: KeyPath = ()
        for part in key:
            out = (*out, part)
            if out in self._arrays:
                out = (*out, self._arrays[out] - 1)
        return out

    def _record(self, path: KeyPath) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], self._line)

    def _skip_blank(self) -> None:
        while self._s[self._i] in " \t":
            self._i += 1

    def _skip_comment(self) -> None:
        end = self._s.find("\n", self._i)
        self._i = len(self._s) if end < 0 else end

    def _key(self) -> tuple[str, ...]:
        s = self._s
        parts: list[str] = []
        while True:
            self._skip_blank()
            if s[self._i] == '"':
                end = self._basic_end(self._i)
                parts.append(tomllib.loads(f"k = {s[self._i : end]}")["k"])
                self._i = end
            elif s[self._i] == "'":
                end = s.index("'", self._i + 1)
                parts.append(s[self._i + 1 : end])
                self._i = end + 1
            else:
                m = _BARE_KEY.match(s, self._i)
                if m is None:
                    raise ValueError(f"no key at {self._i}")
                parts.append(m.group())
                self._i = m.end()
            self._skip_blank()
            if s[self._i] != ".":
                return tuple(parts)
            self._i += 1

    def _basic_end(self, i: int) -> int:
        """Index just past the single-line basic string that opens at ``i``."""
        j = i + 1
        while self._s[j] != '"':
            j += 2 if self._s[j] == "\\" else 1
        return j + 1

    def _skip_value(self) -> None:
        s = self._s
        depth = 0
        while self._i < len(s):
            c = s[self._i]
            if s.startswith('"""', self._i) or s.startswith("'''", self._i):
                self._skip_multiline(s[self._i : self._i + 3])
            elif c == '"':
                self._i = self._basic_end(self._i)
            elif c == "'":
                self._i = s.index("'", self._i + 1) + 1
            elif c == "#":
                self._skip_comment()
            elif c == "\n":
                if depth == 0:
                    return
                self._line += 1
                self._i += 1
            else:
                depth += (c in "[{") - (c in "]}")
                self._i += 1

    def _skip_multiline(self, quote: str) -> None:
        s = self._s
        j = self._i + 3
        while not s.startswith(quote, j):
            j += 2 if quote == '"""' and s[j] == "\\" else 1
        j += 3
        # Up to two quotes right before the delimiter belong to the string.
        for _ in range(2):
            if j < len(s) and s[j] == quote[0]:
                j += 1
        self._line += s.count("\n", self._i, j)
        self._i = j
