"""Batch transform: JSON Lines files in, ``<input name>.out`` files out, as the hosted service does.

Every input line gets exactly one output line, in order: with ``application/jsonlines`` input a
line is one instance and its output line is ``{"scores": [...]}`` or ``{"embeddings": [...]}``;
with ``application/json`` a line is a whole request document ``{"instances": [...]}`` and its
output line is ``{"predictions": [...]}``. A line that cannot be answered (bad JSON, a bad token
ID, a record over the payload limit) gets ``{"error": "line N: ..."}`` and the rest of the file
is still done; the summary counts those lines so the command can fail.

Files are streamed: lines are read from disk (``.gz`` decompressed) as the batches before them
are answered, with at most ``2 x concurrency`` batches in flight, so memory stays flat whatever
the file's size. Records are grouped into batches of at most ``max_payload_mb`` and at most
``max_records`` lines (``MultiRecord``) or sent one by one (``SingleRecord``), and each batch is
one model pass, run in-process by the predictor. An output is written to
``<name>.out.partial`` and renamed when complete (:func:`object2vec.artifact.atomic_file`), so a
rerun skips the files already done (resumable).
"""

from __future__ import annotations

import functools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..artifact import atomic_file
from ..errors import Object2VecError
from ..inputs import LongLine, count_lines, read_lines
from ..runtime import Logger
from . import protocol
from .predictor import Predictor, inference_threads
from .settings import DEFAULT_MAX_PAYLOAD_MB, MB, STRATEGIES, Platform

OUTPUT_SUFFIX = ".out"
PARTIAL_SUFFIX = ".partial"
#: The most lines answered by one model pass (MultiRecord): a batch of 6 MB of short records
#: would otherwise be hundreds of thousands of instances and their answers, all in memory at once.
DEFAULT_MAX_RECORDS = 1024


class TransformError(Object2VecError):
    """The transform job itself is misconfigured (bad path, type, strategy); nothing was run."""


@dataclass
class TransformSummary:
    """What a transform did: files written or skipped, lines answered, lines with an error."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    lines: int = 0
    errors: int = 0

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def __str__(self) -> str:
        return (
            f"{len(self.written)} file(s) written, {len(self.skipped)} already complete and skipped, "
            f"{self.lines} line(s), {self.errors} error line(s)"
        )


@dataclass(frozen=True)
class Job:
    """How to read and answer each line."""

    body: protocol.BodyFormat
    vocab_sizes: tuple[int, int]
    max_payload_bytes: int
    single_record: bool
    max_records: int = DEFAULT_MAX_RECORDS


def input_files(path: Path) -> list[Path]:
    """The file itself, or every non-hidden file under a directory (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    raise TransformError(f"{path}: no such file or directory")


def stream_lines(path: Path, limit: int) -> Iterator[bytes | LongLine]:
    """The file's lines without their line endings (``\\n`` or ``\\r\\n``), read as they are
    needed; a line over ``limit`` bytes comes as a :class:`LongLine` (its length only)."""
    for line in read_lines(path, limit):
        yield line[:-1] if not isinstance(line, LongLine) and line.endswith(b"\r") else line


def plan_batches(
    lines: Iterable[bytes | LongLine], limit: int, single_record: bool, max_records: int = DEFAULT_MAX_RECORDS
) -> Iterator[list[tuple[int, bytes | LongLine]]]:
    """(line number, line) pairs grouped so each group's bytes (newlines included) stay within
    ``limit`` and its lines within ``max_records``; one line per group for SingleRecord. A line
    over the limit travels alone (and is refused). Lazy: a group is read when it is asked for."""
    batch: list[tuple[int, bytes | LongLine]] = []
    size = 0
    for number, line in enumerate(lines, start=1):
        cost = _length(line) + 1
        if batch and (single_record or size + cost > limit or len(batch) >= max_records):
            yield batch
            batch, size = [], 0
        batch.append((number, line))
        size += cost
    if batch:
        yield batch


def _length(line: bytes | LongLine) -> int:
    return line.length if isinstance(line, LongLine) else len(line)


def _decode_line(line: bytes | LongLine, number: int, job: Job) -> tuple[list[protocol.Instance], str | None]:
    """The instances on one line, and the request mode for a JSON document line (None for one
    JSON Lines instance, whose mode is its own)."""
    if _length(line) + 1 > job.max_payload_bytes:
        raise protocol.RequestError(
            f"the record is {_length(line)} bytes, over the payload limit of {job.max_payload_bytes} bytes"
        )
    if not line.strip():
        raise protocol.RequestError("empty line; expected a JSON object")
    if job.body.lines:
        return [
            protocol.check_instance(protocol.load_json(line), None, job.vocab_sizes, job.body.caps, number)
        ], None
    request = protocol.decode_request(line, protocol.BodyFormat(False, *job.body.caps), job.vocab_sizes)
    return [(a, b) for a, b in zip(request.in0, request.in1)], request.mode


def answer_batch(
    predictor: Predictor, batch: Sequence[tuple[int, bytes | LongLine]], job: Job
) -> list[bytes]:
    """One output line (without newline) per input line; all good lines in one model pass."""
    decoded: list[tuple[list[protocol.Instance], str | None] | str] = []
    for number, line in batch:
        try:
            decoded.append(_decode_line(line, number, job))
        except protocol.RequestError as exc:
            message = str(exc)
            decoded.append(message if message.startswith("line ") else f"line {number}: {message}")
    instances = [instance for item in decoded if not isinstance(item, str) for instance in item[0]]
    rows = iter(
        predictor.infer([i[0] for i in instances], [i[1] for i in instances], validate=False)
        if instances
        else []
    )
    out = []
    for item in decoded:
        if isinstance(item, str):
            out.append(protocol.error_body(item))
        elif item[1] is None:  # one JSON Lines instance
            out.append(protocol.encode_object({protocol.instance_mode(item[0][0]): next(rows)}))
        else:
            out.append(
                protocol.encode_predictions([next(rows) for _ in item[0]], item[1], protocol.JSON).rstrip(
                    b"\n"
                )
            )
    return out


def _ordered(
    executor: Executor, tasks: Iterable[Callable[[], list[bytes]]], window: int
) -> Iterator[list[bytes]]:
    """Run ``tasks`` on ``executor`` with at most ``window`` in flight; results in task order."""
    pending: deque[Future] = deque()
    for task in tasks:
        pending.append(executor.submit(task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def transform_file(
    predictor: Predictor, source: Path, target: Path, job: Job, executor: Executor, window: int, bar: tqdm
) -> tuple[int, int]:
    """Stream ``source`` into ``target`` (written as ``.partial``, renamed when complete) with at
    most ``window`` batches in flight; returns (lines, error lines)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = errors = 0
    batches = plan_batches(
        stream_lines(source, job.max_payload_bytes), job.max_payload_bytes, job.single_record, job.max_records
    )
    tasks = (functools.partial(answer_batch, predictor, batch, job) for batch in batches)
    with atomic_file(target, target.with_name(target.name + PARTIAL_SUFFIX)) as out:
        for answers in _ordered(executor, tasks, window):
            lines += len(answers)
            errors += sum(answer.startswith(b'{"error"') for answer in answers)
            out.write(b"".join(answer + b"\n" for answer in answers))
            bar.update(len(answers))
    return lines, errors


def _job(
    predictor: Predictor,
    content_type: str,
    accept: str | None,
    max_payload_mb: float,
    strategy: str,
    max_records: int,
) -> Job:
    """How to answer each line. Accept is resolved as the server resolves it (missing or a
    wildcard: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, else the content type) and checked; both
    types it may name give one JSON object per line here."""
    if strategy not in STRATEGIES:
        raise TransformError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not max_payload_mb > 0:
        raise TransformError(f"--max-payload-mb must be positive, got {max_payload_mb}")
    if max_records < 1:
        raise TransformError(f"--max-records must be at least 1, got {max_records}")
    try:
        body = protocol.parse_content_type(content_type)
        protocol.parse_accept(accept, protocol.default_accept(body, Platform.read().default_accept))
    except protocol.RequestError as exc:
        raise TransformError(str(exc)) from None
    return Job(
        body,
        (predictor.hp.enc0_vocab_size, predictor.hp.enc1_vocab_size),
        int(max_payload_mb * MB),
        strategy == "SingleRecord",
        max_records,
    )


def transform(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    content_type: str = protocol.JSONLINES,
    accept: str | None = None,
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
    strategy: str = STRATEGIES[0],
    concurrency: int = 1,
    max_records: int = DEFAULT_MAX_RECORDS,
    progress: bool | None = None,
    log: Logger = print,
) -> TransformSummary:
    """Transform a file, or every file under a directory, into ``output_dir/<relative name>.out``
    (a ``.gz`` input is read decompressed; its output is ``<name>.gz.out``, not compressed)."""
    job = _job(predictor, content_type, accept, max_payload_mb, strategy, max_records)
    if concurrency < 1:
        raise TransformError(f"--concurrency must be at least 1, got {concurrency}")
    root, out_root = Path(input_path), Path(output_dir)
    sources = input_files(root)
    targets = [out_root / (src.relative_to(root) if root.is_dir() else Path(src.name)) for src in sources]
    targets = [t.with_name(t.name + OUTPUT_SUFFIX) for t in targets]
    summary = TransformSummary()
    todo = []
    for source, target in zip(sources, targets):
        if target.is_file() and count_lines(target) == count_lines(source):  # done by an earlier run
            summary.skipped.append(target)
        else:
            todo.append((source, target))
    show = sys.stderr.isatty() if progress is None else progress
    total = (
        sum(count_lines(source) for source, _ in todo) if show else None
    )  # one more pass: only for the bar
    with (
        ThreadPoolExecutor(concurrency) as executor,
        tqdm(total=total, unit="line", desc="transform", disable=not show) as bar,
    ):
        for source, target in todo:
            lines, errors = transform_file(predictor, source, target, job, executor, 2 * concurrency, bar)
            summary.written.append(target)
            summary.lines += lines
            summary.errors += errors
            if errors:
                log(f"{source}: {errors} of {lines} line(s) could not be answered (see their error objects)")
    return summary


def run_transform(
    model_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | None = None,
    **options,
) -> TransformSummary:
    """Load a model directory (or model.tar.gz) and :func:`transform` with it, sharing this
    process's CPU cores among the ``concurrency`` batches in flight."""
    predictor = Predictor.load(model_dir, device=device)
    inference_threads(options.get("concurrency", 1))
    return transform(predictor, input_path, output_dir, **options)
