"""Train Object2Vec pair-embedding models and serve them over the SageMaker inference contract.

Each command calls the Python API (everything here can be done from Python too). Errors a user
can fix (an :class:`~object2vec.errors.Object2VecError`: bad hyperparameters, bad data, missing
files) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import artifact, container, text
from .api import Object2Vec
from .cli_options import add_device as _add_device
from .cli_options import positive_int as _positive_int
from .container import Layout, serve_target
from .embedding_cli import EMBEDDING_COMMANDS
from .errors import Object2VecError, UsageError
from .hyperparameters import describe_schema, load_hyperparameters_file
from .serving.settings import (
    BATCH_ENV,
    DEFAULT_ACCEPT_ENV,
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_PAYLOAD_MB,
    DEFAULT_MAX_QUEUE_MS,
    DEFAULT_PORT,
    MAX_CONCURRENT_TRANSFORMS_ENV,
    MAX_PAYLOAD_ENV,
    PORT_ENV,
    STRATEGIES,
    transform_limits,
)
from .serving.transform import DEFAULT_MAX_RECORDS, run_transform
from .training import distributed


def parse_key_values(pairs: Sequence[str]) -> dict[str, str]:
    """``["enc_dim=64", ...]`` -> ``{"enc_dim": "64"}``."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def _options(args: argparse.Namespace, *names: str) -> dict:
    """The named command-line options, as the keyword arguments of the API call they feed (each
    option is spelled as its parameter)."""
    return {name: getattr(args, name) for name in names}


def _add_device_and_progress(p: argparse.ArgumentParser) -> None:
    _add_device(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on JSON Lines pairs")
    p.add_argument("--train", help="training data: a JSON Lines file (.gz ok) or a directory of them")
    p.add_argument("--validation", help="validation channel (early stopping and validation:* metrics)")
    p.add_argument("--test", help="test channel (test:* metrics)")
    p.add_argument("--auxiliary", help="directory with vocabulary and pretrained embedding files")
    p.add_argument("--hyperparameters", metavar="FILE.json", help="SageMaker-style hyperparameters.json")
    p.add_argument("--model-dir", help="where to write the model directory")
    p.add_argument("--seed", type=int, default=None, help="make the run repeatable")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="write a checkpoint here after every epoch, and resume from the newest one found "
        "(as a SageMaker container: <ml-root>/checkpoints when that directory exists)",
    )
    p.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=None,
        metavar="N",
        help="also checkpoint within epochs, every N minutes",
    )
    _add_device_and_progress(p)
    p.add_argument(
        "--ml-root",
        default=None,
        help="without --train/--model-dir: the SageMaker layout to run (default: $OBJECT2VEC_ML_ROOT, "
        "else /opt/ml)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="write every epoch's metrics as TensorBoard scalars here (as a SageMaker container: "
        "<ml-root>/output/tensorboard when it exists)",
    )
    p.add_argument("params", nargs="*", metavar="key=value", help="hyperparameters, overriding the file")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    layout = Layout.find(args.ml_root)
    if (
        not args.train and not args.model_dir and layout.is_training_job()
    ):  # as a SageMaker training container
        saved = container.train(
            layout,
            parse_key_values(args.params),
            **_options(args, "seed", "device", "progress", "checkpoint_dir", "checkpoint_every_minutes"),
            tensorboard=args.tensorboard,
        )
        if distributed.is_main_process():
            print(f"model saved to {saved}")
        return 0
    if not args.train or not args.model_dir:
        raise UsageError(
            f"train needs --train PATH and --model-dir DIR (or a SageMaker layout: "
            f"{layout.hyperparameters_file} or {layout.root}/input/data/train)"
        )
    hyperparameters = load_hyperparameters_file(args.hyperparameters) if args.hyperparameters else {}
    hyperparameters.update(parse_key_values(args.params))
    _check_targets(args.model_dir, args.checkpoint_dir)
    model = Object2Vec(hyperparameters).fit(
        args.train,
        args.validation,
        args.test,
        args.auxiliary,
        **_options(args, "seed", "device", "progress", "checkpoint_dir", "checkpoint_every_minutes"),
        tensorboard=args.tensorboard,
    )
    saved = model.save(args.model_dir)
    if distributed.is_main_process():  # under torchrun the other ranks hold the same model
        print(f"model saved to {saved}")
    return 0


def _check_targets(model_dir: str, checkpoint_dir: str | None) -> None:
    """Before training, not after it: the model directory can be saved to, and does not hold the
    checkpoints (saving replaces the model directory whole)."""
    artifact.check_model_target(Path(model_dir))
    if checkpoint_dir is not None:
        model, checkpoints = Path(model_dir).resolve(), Path(checkpoint_dir).resolve()
        if checkpoints == model or model in checkpoints.parents:
            raise UsageError(
                f"--checkpoint-dir {checkpoint_dir} is inside --model-dir {model_dir}, which saving "
                "replaces whole; put the checkpoints elsewhere"
            )


def _quickstart_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="train on the bundled sample, then embed and score")
    p.add_argument("--model-dir", default="quickstart-model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=lambda args: _run_quickstart(args))


def _run_quickstart(args: argparse.Namespace) -> int:
    from . import quickstart  # serves the model: loads the HTTP server's libraries only when asked

    quickstart.run(args.model_dir, seed=args.seed)
    return 0


def _hyperparameters_parser(sub) -> None:
    p = sub.add_parser("hyperparameters", help="list every hyperparameter with its default and range")
    p.set_defaults(run=lambda args: print(describe_schema()) or 0)


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (the SageMaker inference contract)")
    p.add_argument(
        "--model-dir",
        default=None,
        help="model directory or model.tar.gz (default, as a SageMaker container: $SM_MODEL_DIR, else "
        "<ml-root>/model, served on 0.0.0.0)",
    )
    p.add_argument(
        "--host",
        default=None,
        help="address to bind (default: loopback with --model-dir, else 0.0.0.0 as a container)",
    )
    p.add_argument(
        "--ml-root",
        default=None,
        help="without --model-dir: the SageMaker layout (default: $OBJECT2VEC_ML_ROOT, else /opt/ml)",
    )
    p.add_argument(
        "--port", type=int, default=None, help=f"default: ${PORT_ENV} when set, else {DEFAULT_PORT}"
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help=f"server processes, each with the model (default: 1; in a batch transform, ${BATCH_ENV}, "
        f"one per ${MAX_CONCURRENT_TRANSFORMS_ENV}, at most one per CPU core)",
    )
    p.add_argument(
        "--max-payload-mb",
        type=float,
        default=None,
        help=f"larger request bodies get 413 (default: ${MAX_PAYLOAD_ENV} when set, else "
        f"{DEFAULT_MAX_PAYLOAD_MB:g})",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_MS,
        help="longest wait to gather concurrent requests into one forward pass",
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=DEFAULT_MAX_QUEUE_MS,
        help="a request queued longer than this for a forward pass gets 503 (busy)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads per worker (default: $OMP_NUM_THREADS, else CPU cores / workers)",
    )
    _add_device(p)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--index", default=None, help="an index directory of this model: adds POST /neighbors")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .serving.server import serve  # the HTTP server's libraries only when serving

    model_dir, host = serve_target(args.model_dir, args.host, args.ml_root)
    options = ("port", "workers", "max_payload_mb", "batch_wait_ms", "max_queue_ms", "threads", "device")
    options += ("access_log", "index")
    serve(model_dir, host=host, **_options(args, *options))
    return 0


def _transform_parser(sub) -> None:
    p = sub.add_parser("transform", help="batch transform: JSON Lines files -> <name>.out, one line per line")
    p.add_argument("--model-dir", required=True, help="model directory or model.tar.gz")
    p.add_argument("--input", required=True, help="a JSON Lines file (.gz ok) or a directory of them")
    p.add_argument("--output", required=True, help="directory for the <input name>.out files")
    p.add_argument(
        "--content-type",
        default="application/jsonlines",
        help="application/jsonlines (one instance per line) or application/json (one request "
        "document per line); may carry ;infer_max_seqlens=FWD,BCK",
    )
    p.add_argument(
        "--accept",
        default=None,
        help=f"application/jsonlines or application/json; checked only, the output is one object per "
        f"line either way (default: ${DEFAULT_ACCEPT_ENV} when set, else the content type)",
    )
    p.add_argument(
        "--max-payload-mb",
        type=float,
        default=None,
        help=f"the most bytes of records per model pass (default: ${MAX_PAYLOAD_ENV} when set, else "
        f"{DEFAULT_MAX_PAYLOAD_MB:g})",
    )
    p.add_argument(
        "--max-records",
        type=_positive_int,
        default=DEFAULT_MAX_RECORDS,
        help="the most records per model pass (MultiRecord), which bounds memory",
    )
    p.add_argument("--strategy", choices=STRATEGIES, default=STRATEGIES[0])
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help=f"batches answered at the same time (default: ${MAX_CONCURRENT_TRANSFORMS_ENV} when set, "
        "else 1)",
    )
    _add_device_and_progress(p)
    p.set_defaults(run=_run_transform)


def _run_transform(args: argparse.Namespace) -> int:
    args.max_payload_mb, args.concurrency = transform_limits(args.max_payload_mb, args.concurrency)
    options = ("device", "content_type", "accept", "max_payload_mb", "max_records", "strategy", "concurrency")
    options += ("progress",)
    summary = run_transform(args.model_dir, args.input, args.output, **_options(args, *options))
    print(f"transform: {summary}", file=sys.stdout if summary.ok else sys.stderr)
    return 0 if summary.ok else 1


def _vocab_parser(sub) -> None:
    p = sub.add_parser("vocab", help="build a vocabulary JSON ({token: id}, <pad>=0, <unk>=1) from raw text")
    p.add_argument(
        "inputs",
        nargs="+",
        help="TSV files (with a header row), .jsonl files, or .txt files (one text per line, field 'text')",
    )
    p.add_argument(
        "--fields",
        default="text",
        help="comma-separated text columns/fields, e.g. sentence_A,sentence_B (default: text)",
    )
    p.add_argument("--output", required=True, help="the vocabulary JSON file to write")
    p.add_argument("--min-count", type=_positive_int, default=1, help="keep words seen at least this often")
    p.add_argument(
        "--max-size", type=_positive_int, default=None, help="most entries, reserved tokens included"
    )
    p.set_defaults(run=_run_vocab)


def _run_vocab(args: argparse.Namespace) -> int:
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    texts = (t for path in args.inputs for t in text.texts_of(path, fields))
    vocab = text.build_vocab(texts, args.min_count, args.max_size)
    print(
        f"vocabulary of {len(vocab)} tokens (use encX_vocab_size={len(vocab)}) written to "
        f"{text.write_vocab(vocab, args.output)}"
    )
    return 0


def _tokenize_parser(sub) -> None:
    p = sub.add_parser(
        "tokenize", help="TSV/JSON Lines of texts -> token-ID JSON Lines (training or inference)"
    )
    p.add_argument("input", help="a TSV file with a header row, or a .jsonl file")
    p.add_argument("--vocab", required=True, help="vocabulary JSON (object2vec vocab)")
    p.add_argument("--output", required=True, help="JSON Lines file to write")
    p.add_argument("--text0", required=True, help="column/field giving in0")
    p.add_argument("--text1", default=None, help="column/field giving in1 (pairs)")
    p.add_argument("--label", default=None, help="column/field of the label: makes training records")
    p.add_argument(
        "--classes", default=None, help="comma-separated label names, mapped to 0, 1, ... in order"
    )
    p.add_argument(
        "--max-len", type=_positive_int, default=None, help="truncate sequences to this many tokens"
    )
    p.add_argument("--boundaries", action="store_true", help="wrap each text in <s> ... </s>")
    p.set_defaults(run=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    count = text.tokenize_file(
        args.input,
        args.output,
        text.read_vocab(args.vocab),
        text0=args.text0,
        text1=args.text1,
        label=args.label,
        classes=classes,
        max_len=args.max_len,
        add_boundaries=args.boundaries,
    )
    print(f"{count} records written to {args.output}")
    return 0


#: Each command registers itself here: a function adding its sub-parser.
COMMANDS: list[Callable] = [
    _train_parser,
    _quickstart_parser,
    _hyperparameters_parser,
    _serve_parser,
    _transform_parser,
    _vocab_parser,
    _tokenize_parser,
    *EMBEDDING_COMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="object2vec", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Object2VecError as exc:
        print(f"object2vec {args.command}: error: {exc}", file=sys.stderr)
        return 2
