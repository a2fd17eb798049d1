"""Batch transform: JSON Lines files in, ``<input name>.out`` files out, as the hosted service does.

Every input line gets exactly one output line, in order: with ``application/jsonlines`` input a
line is one instance and its output line is ``{"scores": [...]}`` or ``{"embeddings": [...]}``;
with ``application/json`` a line is a whole request document ``{"instances": [...]}`` and its
output line is ``{"predictions": [...]}``. A line that cannot be answered (bad JSON, a bad token
ID, a record over the payload limit) gets ``{"error": "line N: ..."}`` and the rest of the file
is still done; the summary counts those lines so the command can fail.

Records are grouped into batches of at most ``max_payload_mb`` (``MultiRecord``) or sent one by
one (``SingleRecord``), and each batch is one model pass, run in-process by the predictor.
An output is written to ``<name>.out.partial`` and renamed when complete, so a rerun skips the
files already done (resumable).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import Object2VecError
from ..runtime import Logger
from . import protocol
from .predictor import Predictor, inference_threads
from .settings import DEFAULT_MAX_PAYLOAD_MB, MB, STRATEGIES, Platform

OUTPUT_SUFFIX = ".out"
PARTIAL_SUFFIX = ".partial"


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


def read_lines(path: Path) -> list[bytes]:
    """The file's lines without their newlines (a final newline does not start another line)."""
    data = path.read_bytes()
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def count_lines(path: Path) -> int:
    return len(read_lines(path)) if path.is_file() else -1


def plan_batches(lines: Sequence[bytes], limit: int, single_record: bool) -> Iterator[list[int]]:
    """Line indices grouped so each group's bytes (newlines included) stay within ``limit``;
    one line per group for SingleRecord. A line over the limit travels alone (and is refused)."""
    batch: list[int] = []
    size = 0
    for index, line in enumerate(lines):
        cost = len(line) + 1
        if batch and (single_record or size + cost > limit):
            yield batch
            batch, size = [], 0
        batch.append(index)
        size += cost
    if batch:
        yield batch


def _decode_line(line: bytes, number: int, job: Job) -> tuple[list[protocol.Instance], str | None]:
    """The instances on one line, and the request mode for a JSON document line (None for one
    JSON Lines instance, whose mode is its own)."""
    if len(line) + 1 > job.max_payload_bytes:
        raise protocol.RequestError(
            f"the record is {len(line)} bytes, over the payload limit of {job.max_payload_bytes} bytes"
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
    predictor: Predictor, lines: Sequence[bytes], numbers: Sequence[int], job: Job
) -> list[bytes]:
    """One output line (without newline) per input line; all good lines in one model pass."""
    decoded: list[tuple[list[protocol.Instance], str | None] | str] = []
    for line, number in zip(lines, numbers):
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
    """Write ``target`` (via ``.partial``, renamed at the end); returns (lines, error lines)."""
    lines = read_lines(source)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = 0
    tasks = (
        lambda rows=rows: answer_batch(predictor, [lines[i] for i in rows], [i + 1 for i in rows], job)
        for rows in plan_batches(lines, job.max_payload_bytes, job.single_record)
    )
    with open(partial, "wb") as out:
        for answers in _ordered(executor, tasks, window):
            errors += sum(answer.startswith(b'{"error"') for answer in answers)
            out.write(b"".join(answer + b"\n" for answer in answers))
            bar.update(len(answers))
    os.replace(partial, target)
    return len(lines), errors


def _job(
    predictor: Predictor, content_type: str, accept: str | None, max_payload_mb: float, strategy: str
) -> Job:
    """How to answer each line. Accept is resolved as the server resolves it (missing or a
    wildcard: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, else the content type) and checked; both
    types it may name give one JSON object per line here."""
    if strategy not in STRATEGIES:
        raise TransformError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not max_payload_mb > 0:
        raise TransformError(f"--max-payload-mb must be positive, got {max_payload_mb}")
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
    progress: bool | None = None,
    log: Logger = print,
) -> TransformSummary:
    """Transform a file, or every file under a directory, into ``output_dir/<relative name>.out``."""
    job = _job(predictor, content_type, accept, max_payload_mb, strategy)
    if concurrency < 1:
        raise TransformError(f"--concurrency must be at least 1, got {concurrency}")
    root, out_root = Path(input_path), Path(output_dir)
    sources = input_files(root)
    targets = [out_root / (src.relative_to(root) if root.is_dir() else Path(src.name)) for src in sources]
    targets = [t.with_name(t.name + OUTPUT_SUFFIX) for t in targets]
    summary = TransformSummary()
    todo = []
    for source, target in zip(sources, targets):
        if target.is_file() and count_lines(target) == count_lines(source):
            summary.skipped.append(target)
        else:
            todo.append((source, target))
    total = sum(count_lines(source) for source, _ in todo)
    with (
        ThreadPoolExecutor(concurrency) as executor,
        tqdm(
            total=total, unit="line", desc="transform", disable=None if progress is None else not progress
        ) as bar,
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
