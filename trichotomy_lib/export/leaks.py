"""Scan every byte of an export for forbidden tokens (patient ids, source names, seeds …).

What is searched, for every file under the root (hidden files included):

* its path relative to the root (a file or folder name can leak);
* its raw bytes;
* str tokens in every common encoding of text: UTF-8, and UTF-16 and UTF-32 in both byte
  orders (numpy stores strings as UTF-32, so a copied ``names.npy`` is caught too);
* for PNG files (recognised by signature, not by extension), the zlib streams decompressed:
  the image data (all IDAT chunks together, i.e. the filtered scanlines), and the text
  of zTXt, iTXt and iCCP chunks. Uncompressed text chunks (tEXt) are in the raw bytes.

Every search is case-insensitive for ASCII letters (data and token are both lower-cased,
which also finds exact matches). Tokens must be at least ``MIN_TOKEN_BYTES`` long: shorter
ones occur by chance in compressed binary data. Numeric tokens can, rarely, occur by chance
in image data too; a match there is reported with ``where="IDAT"`` so it can be judged.

Speed: the tokens form a prefix tree, written as one regular expression that marks where any
token starts; the tree is walked only there, so thousands of tokens cost about one pass.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["Leak", "MIN_TOKEN_BYTES", "check_tokens", "find_leaks", "png_chunks"]

MIN_TOKEN_BYTES = 4
_PREFIX = 64          # tokens enter the prefix tree with at most this many bytes
_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Leak(NamedTuple):
    """A forbidden token found: ``file`` relative to the scanned root (POSIX separators),
    the ``token`` as given, ``where``: "path", "bytes", "IDAT", "zTXt", "iTXt" or "iCCP", and
    the ``encoding`` it was found in ("bytes" for a bytes token)."""

    file: str
    token: str | bytes
    where: str
    encoding: str


def png_chunks(data: bytes, name: str = "<png>") -> list[tuple[bytes, bytes]]:
    """``[(chunk type, payload), …]`` of a PNG file's bytes; ValueError if it is malformed."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name}: not a PNG file (bad signature)")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{name}: truncated PNG chunk header at byte {pos}")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"{name}: PNG chunk {kind!r} at byte {pos} runs past the end of the file")
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos = end
        if kind == b"IEND":
            break
    if pos != len(data):
        chunks.append((b"<trailing>", data[pos:]))   # bytes after IEND: still scanned raw
    return chunks


def _inflate(payload: bytes, name: str, kind: str) -> bytes:
    try:
        return zlib.decompress(payload)
    except zlib.error as e:
        raise ValueError(f"{name}: cannot decompress its {kind} data ({e}); the scan would be incomplete") from e


def _png_streams(data: bytes, name: str):
    """(chunk kind, decompressed bytes) of every zlib stream in a PNG."""
    chunks = png_chunks(data, name)
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    if idat:
        yield "IDAT", _inflate(idat, name, "IDAT")
    for kind, payload in chunks:
        if kind in (b"zTXt", b"iCCP"):        # keyword \0 method compressed-data
            key, _, rest = payload.partition(b"\0")
            yield kind.decode(), key + b"\0" + _inflate(rest[1:], name, kind.decode())
        elif kind == b"iTXt":                  # keyword \0 flag method language \0 keyword' \0 text
            key, _, rest = payload.partition(b"\0")
            flag, lang_etc = rest[:1], rest[2:]
            lang, _, rest = lang_etc.partition(b"\0")
            translated, _, text = rest.partition(b"\0")
            if flag == b"\x01":
                text = _inflate(text, name, "iTXt")
            yield "iTXt", b"\0".join((key, lang, translated, text))


class _Matcher:
    """Finds which of many byte tokens occur in a byte string, ASCII case-insensitively."""

    def __init__(self, tokens: Iterable[str | bytes]):
        self.keys: dict[bytes, list[tuple[str | bytes, str]]] = {}   # lower-cased bytes → (token, encoding)
        for t in tokens:
            if isinstance(t, str):
                variants = [(t.encode(e), e) for e in _ENCODINGS]
            elif isinstance(t, (bytes, bytearray)):
                variants = [(bytes(t), "bytes")]
            else:
                raise TypeError(f"forbidden tokens must be str or bytes, got {type(t).__name__} {t!r}")
            if len(variants[0][0]) < MIN_TOKEN_BYTES:
                raise ValueError(f"forbidden token {t!r}: {len(variants[0][0])} bytes; need at least "
                                 f"{MIN_TOKEN_BYTES} (shorter tokens match binary data by chance)")
            for raw, encoding in variants:
                self.keys.setdefault(raw.lower(), []).append((t, encoding))
        # A prefix tree of the tokens' first _PREFIX bytes; ``None`` marks where such a prefix
        # ends and holds the (lower-cased) tokens that begin with it.
        self.trie: dict = {}
        for key in self.keys:
            node = self.trie
            for b in key[:_PREFIX]:
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(key)
        self.starts = self._start_regex() if self.keys else None

    def _start_regex(self):
        # The tree written as one zero-width pattern: it matches at every position where
        # some token starts, and the engine walks the tree there instead of trying every
        # token. A branch stops where its shortest token ends (enough to mark a start).
        def emit(node: dict) -> bytes:
            if None in node:
                return b""
            branches = [re.escape(bytes([b])) + emit(child) for b, child in sorted(node.items())]
            return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"

        try:
            return re.compile(b"(?=" + emit(self.trie) + b")", re.DOTALL)
        except (RecursionError, OverflowError, re.error):
            return None          # pathological token sets: fall back to testing each token

    def find(self, data: bytes) -> list[tuple[str | bytes, str]]:
        low = data.lower()
        if self.starts is None:
            return [t for key, originals in self.keys.items() if key in low for t in originals]
        found: set[bytes] = set()
        for m in self.starts.finditer(low):
            start = m.start()
            node, i = self.trie, start          # collect every token that starts here
            while node is not None:
                found.update(k for k in node.get(None, ()) if low.startswith(k, start))
                node = node.get(low[i]) if i < len(low) else None
                i += 1
        return [t for key in sorted(found) for t in self.keys[key]]


def check_tokens(forbidden: Iterable[str | bytes]) -> list[str | bytes]:
    """``forbidden`` as a list, after checking every token's type and length (>= 4 bytes)."""
    tokens = list(forbidden)
    _Matcher(tokens)
    return tokens


def find_leaks(root: str | os.PathLike, forbidden: Iterable[str | bytes]) -> list[Leak]:
    """Every occurrence (file, token, where) of a forbidden token under ``root``.

    Args:
        root: a directory (every file below it is scanned) or a single file.
        forbidden: tokens as ``str`` (searched as UTF-8) or ``bytes``, each at least 4 bytes.

    Returns the ``Leak`` entries sorted by file, one per (file, token, where, encoding); an empty list
    means no token occurs anywhere. Raises ``ValueError`` for a PNG that cannot be parsed
    or decompressed (its scan would be incomplete), ``FileNotFoundError`` for a missing root.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: nothing to scan")
    matcher = _Matcher(forbidden)
    if not matcher.keys:
        return []
    if root.is_file():
        entries = [(root.name, root)]
    else:
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                entries.append((path.relative_to(root).as_posix(), path))
    leaks: list[Leak] = []
    for rel, path in entries:
        leaks += [Leak(rel, t, "path", e) for t, e in matcher.find(rel.encode("utf-8"))]
        if path.is_dir():
            continue
        data = path.read_bytes()
        leaks += [Leak(rel, t, "bytes", e) for t, e in matcher.find(data)]
        if data.startswith(PNG_SIGNATURE):
            for kind, stream in _png_streams(data, rel):
                leaks += [Leak(rel, t, kind, e) for t, e in matcher.find(stream)]
    return sorted(set(leaks), key=lambda x: (x.file, x.where, repr(x.token), x.encoding))
