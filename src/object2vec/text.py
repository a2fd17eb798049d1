"""Raw text -> token IDs: one tokenizer, vocabulary files, GloVe-style pretrained vectors.

The reference leaves text preparation to its users; every published example repeats the same
steps (tokenize, count, keep frequent words, reserve ``<pad>``/``<unk>``/``<s>``/``</s>``, write a
JSON vocabulary, map sentences to IDs). This module does them once, deterministically:

* :func:`tokenize` lowercases (after Unicode NFKC normalisation) and splits into runs of word
  characters (letters, digits, underscore) and single punctuation marks; whitespace separates.
  ``"Don't stop!"`` -> ``["don", "'", "t", "stop", "!"]``. No language model, no state.
* A vocabulary is a JSON object ``{"token": id}``; ``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` = 2,
  ``</s>`` = 3, then words by decreasing count (ties alphabetically). Unknown words map to
  ``<unk>``.
* A pretrained file is text, one ``token v1 v2 ... vD`` per line (GloVe); an optional first line
  ``<count> <dim>`` (word2vec text format) is skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from .errors import Object2VecError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
RESERVED = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3
_TOKEN = re.compile(r"\w+|[^\w\s]")


class TextError(Object2VecError):
    """A vocabulary, pretrained-vector or text file is malformed; the message names file and line."""


def tokenize(text: str) -> list[str]:
    """Lowercased word runs and single punctuation marks (see the module docstring)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def build_vocab(texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> dict[str, int]:
    """A vocabulary of the words seen at least ``min_count`` times, at most ``max_size`` entries
    in all (reserved tokens included), most frequent first; ties are broken alphabetically so the
    same texts always give the same IDs."""
    if max_size is not None and max_size < len(RESERVED):
        raise TextError(f"max_size={max_size} leaves no room for the {len(RESERVED)} reserved tokens")
    counts = Counter(token for text in texts for token in tokenize(text))
    words = sorted(
        (w for w, c in counts.items() if c >= min_count and w not in RESERVED), key=lambda w: (-counts[w], w)
    )
    if max_size is not None:
        words = words[: max_size - len(RESERVED)]
    return {token: index for index, token in enumerate((*RESERVED, *words))}


def encode(text: str, vocab: dict[str, int], *, add_boundaries: bool = False) -> list[int]:
    """Token IDs of ``text``; unknown words map to ``<unk>``. ``add_boundaries`` wraps the
    sequence in ``<s>`` ... ``</s>``. An empty text gives ``[<unk>]`` (a record needs a token)."""
    unknown = vocab[UNK]
    ids = [vocab.get(token, unknown) for token in tokenize(text)]
    if add_boundaries:
        ids = [vocab[BOS], *ids, vocab[EOS]]
    return ids or [unknown]


def write_vocab(vocab: dict[str, int], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path


def read_vocab(path: str | os.PathLike, vocab_size: int | None = None) -> dict[str, int]:
    """A JSON ``{"token": id}`` object; IDs must be distinct non-negative integers (below
    ``vocab_size`` when given)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextError(f"{path}: vocabulary file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TextError(f"{path}: not a valid JSON vocabulary ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise TextError(f'{path}: a vocabulary must be a non-empty JSON object {{"token": id, ...}}')
    seen: dict[int, str] = {}
    for token, index in data.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TextError(f"{path}: token {token!r} has id {index!r}; ids must be non-negative integers")
        if vocab_size is not None and index >= vocab_size:
            raise TextError(
                f"{path}: token {token!r} has id {index}, outside [0, {vocab_size}) (encX_vocab_size)"
            )
        if index in seen:
            raise TextError(f"{path}: tokens {seen[index]!r} and {token!r} share id {index}")
        seen[index] = token
    return data


@dataclass
class PretrainedRows:
    """Rows of a token table initialised from a pretrained file."""

    ids: np.ndarray  # int64 [K], the vocabulary IDs found in the file
    vectors: np.ndarray  # float32 [K, dim]

    @property
    def found(self) -> int:
        return len(self.ids)


def iter_vectors(path: str | os.PathLike, dim: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(token, vector)`` per line of a GloVe-style file; a wrong width or a non-number is a
    :class:`TextError` naming the file and line."""
    try:
        handle = open(path, encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise TextError(f"{path}: pretrained embedding file not found") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if not line.strip():
                    continue
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec text header "<count> <dim>"
                if len(parts) - 1 != dim:
                    raise TextError(
                        f"{path}:{number}: {len(parts) - 1} values for {parts[0]!r}, expected {dim} "
                        f"(encX_token_embedding_dim)"
                    )
                try:
                    vector = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise TextError(f"{path}:{number}: values for {parts[0]!r} are not all numbers") from None
                if not np.isfinite(vector).all():
                    raise TextError(f"{path}:{number}: values for {parts[0]!r} are not all finite")
                yield parts[0], vector
        except UnicodeDecodeError as exc:
            raise TextError(f"{path}: not UTF-8 text ({exc})") from None


def pretrained_rows(vocab: dict[str, int], path: str | os.PathLike, dim: int) -> PretrainedRows:
    """The vectors of the vocabulary's tokens that the file holds (the first occurrence wins);
    ``<pad>`` is never loaded, so padding stays what the encoders expect."""
    ids: list[int] = []
    vectors: list[np.ndarray] = []
    taken: set[str] = set()
    for token, vector in iter_vectors(path, dim):
        if token in vocab and token not in taken and token != PAD:
            taken.add(token)
            ids.append(vocab[token])
            vectors.append(vector)
    matrix = np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return PretrainedRows(np.asarray(ids, dtype=np.int64), matrix)


# ----- files of raw text -> training / inference JSON Lines -----------------------------------


def read_text_records(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for each row of a TSV with a header row, each object of a JSON Lines
    file, or each non-empty line of plain text as ``{"text": line}`` (by extension:
    ``.jsonl``/``.json`` are JSON Lines, ``.txt`` plain text, anything else TSV)."""
    path = Path(path)
    if not path.is_file():
        raise TextError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix == ".txt":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{path}:{number}", {"text": line.rstrip("\r\n")}
        elif path.suffix in (".jsonl", ".json"):
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise TextError(f"{path}:{number}: not valid JSON ({exc})") from None
                    if not isinstance(record, dict):
                        raise TextError(f"{path}:{number}: expected a JSON object")
                    yield f"{path}:{number}", record
        else:
            for number, row in enumerate(
                csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=2
            ):
                yield f"{path}:{number}", row


def _field(record: dict, name: str, where: str) -> object:
    if name not in record or record[name] is None:
        raise TextError(f"{where}: missing field '{name}'")
    return record[name]


def _label(value: object, classes: dict[str, int] | None, where: str) -> int | float:
    if classes is not None:
        if str(value) not in classes:
            raise TextError(f"{where}: label {value!r} is not one of {', '.join(classes)}")
        return classes[str(value)]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TextError(
            f"{where}: label {value!r} is not a number; name the classes (--classes A,B,C)"
        ) from None
    return int(number) if number.is_integer() else number


def texts_of(path: str | os.PathLike, fields: Iterable[str]) -> Iterator[str]:
    """Every text in the named fields of a TSV/JSON Lines file (for building a vocabulary)."""
    fields = list(fields)
    for where, record in read_text_records(path):
        for name in fields:
            yield str(_field(record, name, where))


def tokenize_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    vocab: dict[str, int],
    *,
    text0: str,
    text1: str | None = None,
    label: str | None = None,
    classes: list[str] | None = None,
    max_len: int | None = None,
    add_boundaries: bool = False,
) -> int:
    """Write ``target`` as JSON Lines of token IDs; returns the number of records.

    With ``label``: training records ``{"label", "in0", "in1"}`` (``text1`` required). Without:
    inference instances ``{"in0"}`` (and ``"in1"`` when ``text1`` is given). ``classes`` maps
    label strings to class IDs in the given order; otherwise labels must be numbers.
    """
    if label is not None and text1 is None:
        raise TextError("a training file needs two texts per record: give text1 as well as text0")
    mapping = {name: index for index, name in enumerate(classes)} if classes else None
    count = 0
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for where, record in read_text_records(source):
            row: dict = {}
            if label is not None:
                row["label"] = _label(_field(record, label, where), mapping, where)
            for key, name in (("in0", text0), ("in1", text1)):
                if name is not None:
                    row[key] = encode(str(_field(record, name, where)), vocab, add_boundaries=add_boundaries)[
                        :max_len
                    ]
            out.write(orjson.dumps(row) + b"\n")
            count += 1
    return count
