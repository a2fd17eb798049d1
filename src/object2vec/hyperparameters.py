"""The one declared hyperparameter schema and its parser.

Every name, default and valid range is the SageMaker Object2Vec one, so a user's existing
``hyperparameters.json`` (a string-to-string map) works unchanged. Values may arrive as strings
("True", "auto", "0.001") or as Python values. Keys starting with ``_`` (``_kvstore``,
``_num_gpus`` in published notebooks) are accepted and ignored; every other unknown key, bad type
or out-of-range value raises :class:`HyperparameterError` naming the key, the value and the range.

Rules that relate several hyperparameters (tied tables need equal sizes, row_sparse needs an
optimizer with sparse updates, ...) are declared here too, in :data:`CROSS_PARAMETER_RULES`, and run
by :func:`parse_hyperparameters`, so every configuration error surfaces before any data is read.

This module imports only :mod:`object2vec.errors`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import Object2VecError, UsageError

AUTO = "auto"
COMPARATORS = ("hadamard", "concat", "abs_diff")
ENCODER_NETWORKS = ("hcnn", "bilstm", "pooled_embedding")
OPTIMIZERS = ("adadelta", "adagrad", "adam", "sgd", "rmsprop")
#: Optimizers that accept the sparse gradients of row_sparse token tables.
SPARSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
AUX_FILE_NAME = re.compile(r"^[A-Za-z0-9._]*$")


class HyperparameterError(Object2VecError):
    """A hyperparameter is unknown, of the wrong type, out of its valid range, or in conflict with
    another one."""


@dataclass(frozen=True)
class Param:
    """One documented hyperparameter: how to parse it and what values are valid."""

    name: str
    kind: str  # int | float | bool | bool_or_auto | choice | int_or_auto | file | comparators
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    help: str = ""

    def valid_range(self) -> str:
        if self.kind in ("int", "float"):
            high = "inf" if self.high is None else _fmt(self.high)
            return f"{self.kind} in [{_fmt(self.low)}, {high}]"
        if self.kind == "int_or_auto":
            return f"'auto' or int in [{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.kind == "bool":
            return "True or False"
        if self.kind == "bool_or_auto":
            return "'auto', True or False"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "file":
            return "a file name of characters [A-Za-z0-9._] (or empty)"
        if self.kind == "comparators":
            return "comma-separated list of " + ", ".join(COMPARATORS)
        return self.kind

    def parse(self, raw: Any) -> Any:
        parser: Callable[[Any], Any] = getattr(self, "_parse_" + self.kind)
        try:
            return parser(raw)
        except (TypeError, ValueError, OverflowError) as exc:  # "1e999" for an int overflows
            detail = f" ({exc})" if str(exc) else ""
            raise HyperparameterError(
                f"hyperparameter {self.name}={raw!r} is invalid{detail}; valid: {self.valid_range()}"
            ) from None

    def _in_range(self, value: float) -> None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError("out of range")

    def _parse_int(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("not an integer")
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError("not an integer")
            value = int(raw)
        else:
            text = str(raw).strip()
            value = int(float(text)) if re.fullmatch(r"[+-]?\d+(\.0*)?([eE]\+?\d+)?", text) else int(text)
        self._in_range(value)
        return value

    def _parse_float(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("not a number")
        value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        self._in_range(value)
        return value

    def _parse_bool(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValueError("not a boolean")

    def _parse_bool_or_auto(self, raw: Any) -> str | bool:
        if isinstance(raw, str) and raw.strip().lower() == AUTO:
            return AUTO
        return self._parse_bool(raw)

    def _parse_choice(self, raw: Any) -> str:
        text = str(raw).strip()
        if text not in self.choices:
            raise ValueError("not an allowed value")
        return text

    def _parse_int_or_auto(self, raw: Any) -> str | int:
        if isinstance(raw, str) and raw.strip().lower() == AUTO:
            return AUTO
        return self._parse_int(raw)

    def _parse_file(self, raw: Any) -> str:
        text = str(raw).strip()
        if not AUX_FILE_NAME.match(text):
            raise ValueError("characters outside [A-Za-z0-9._]")
        return text

    def _parse_comparators(self, raw: Any) -> tuple[str, ...]:
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        names = tuple(str(item).strip() for item in items if str(item).strip())
        unknown = [name for name in names if name not in COMPARATORS]
        if not names or unknown:
            raise ValueError(f"unknown comparator {unknown[0]!r}" if unknown else "empty list")
        return names


def _fmt(number: float | None) -> str:
    if number is None:
        return "-inf"
    return str(int(number)) if float(number).is_integer() else repr(number)


def _encoder_params(side: int) -> list[Param]:
    """The per-encoder parameters, declared once for enc0 and enc1."""
    enc = f"enc{side}"
    first = side == 0
    networks = ENCODER_NETWORKS if first else ("enc0",) + ENCODER_NETWORKS
    return [
        Param(
            f"{enc}_max_seq_len",
            "int",
            None,
            1,
            5000,
            required=first,
            help="Maximum tokens per input; longer inputs are truncated."
            + ("" if first else " Default: enc0's."),
        ),
        Param(
            f"{enc}_vocab_size",
            "int",
            None,
            2,
            3_000_000,
            required=first,
            help="Token IDs must lie in [0, vocab_size)." + ("" if first else " Default: enc0's."),
        ),
        Param(
            f"{enc}_network",
            "choice",
            "hcnn" if first else "enc0",
            choices=networks,
            help="Encoder architecture"
            + ("." if first else "; 'enc0': enc0's, with its settings (own weights)."),
        ),
        Param(f"{enc}_token_embedding_dim", "int", 300, 2, 1000, help="Token embedding size."),
        Param(f"{enc}_layers", "int_or_auto", AUTO, 1, 4, help="Encoder depth (hcnn, bilstm)."),
        Param(f"{enc}_cnn_filter_width", "int", 3, 1, 9, help="hcnn convolution width."),
        Param(
            f"{enc}_pretrained_embedding_file",
            "file",
            "",
            help="GloVe-style text file in the auxiliary channel.",
        ),
        Param(f"{enc}_vocab_file", "file", "", help="JSON token->id vocabulary in the auxiliary channel."),
        Param(f"{enc}_freeze_pretrained_embedding", "bool", True, help="Keep pretrained rows fixed."),
    ]


SCHEMA: dict[str, Param] = {
    p.name: p
    for p in [
        *_encoder_params(0),
        *_encoder_params(1),
        Param("enc_dim", "int", 4096, 4, 10000, help="Output size of both encoders."),
        Param(
            "comparator_list",
            "comparators",
            ("hadamard", "concat", "abs_diff"),
            help="Ordered operators joining the two encodings.",
        ),
        Param("mlp_layers", "int", 2, 0, 10, help="Hidden layers after the comparator."),
        Param("mlp_dim", "int", 512, 2, 10000, help="Width of each hidden layer."),
        Param("mlp_activation", "choice", "linear", choices=("tanh", "relu", "linear")),
        Param("output_layer", "choice", "softmax", choices=("softmax", "mean_squared_error")),
        Param("num_classes", "int", 2, 2, 30, help="Classes for softmax (ignored for regression)."),
        Param("optimizer", "choice", "adam", choices=OPTIMIZERS),
        Param("learning_rate", "float", 0.0004, 1e-6, 1.0),
        Param("weight_decay", "float", 0.0, 0.0, 10000.0),
        Param("dropout", "float", 0.0, 0.0, 1.0),
        Param(
            "weight_decay_scope",
            "choice",
            "all",
            choices=("all", "token_tables"),
            help="Beyond the reference: which parameters weight_decay applies to; token_tables: the "
            "token (ID) tables only, the encoders' other layers, the MLP and the output left free.",
        ),
        Param("epochs", "int", 30, 1, 100),
        Param("mini_batch_size", "int", 32, 1, 10000),
        Param("early_stopping_patience", "int", 3, 1, 5),
        Param("early_stopping_tolerance", "float", 0.01, 1e-6, 0.1),
        Param("negative_sampling_rate", "int", 0, 0, 100, help="Negatives made per positive each epoch."),
        Param("tied_token_embedding_weight", "bool", False, help="One token table for both encoders."),
        Param(
            "tied_encoder_weight",
            "bool_or_auto",
            AUTO,
            help="Beyond the reference: one encoder for in0 and in1 (shared parameters, a siamese network); "
            "enc1's architecture is enc0's; implies tied_token_embedding_weight. auto: one encoder when "
            "enc1_network=enc0 and tied_token_embedding_weight=True (inputs of one kind), else two.",
        ),
        Param(
            "tied_encoder_projection",
            "bool",
            False,
            help="Beyond the reference: two encoders (tied_encoder_weight=False) of one architecture "
            "share their last linear map to enc_dim: both inputs land in one space, each keeps its body.",
        ),
        Param(
            "weight_average_epochs",
            "float",
            0.25,
            0.01,
            100.0,
            help="Beyond the reference: how many epochs of steps the moving average of the weights "
            "(used to evaluate, early-stop and save) spans; at least 100 steps, at most 10,000.",
        ),
        Param("token_embedding_storage_type", "choice", "dense", choices=("dense", "row_sparse")),
        Param("bucket_width", "int", 0, 0, 100, help="Allowed length difference within a batch; 0 = off."),
    ]
}


@dataclass(frozen=True)
class EncoderConfig:
    """The settings of one encoder (``enc0_*`` or ``enc1_*`` without the prefix), typed.

    Encoders and token tables take this rather than the whole hyperparameter mapping, so each
    sees exactly the settings it may use; ``key`` names a setting as the user wrote it, for errors.
    """

    side: int
    network: str
    max_seq_len: int
    vocab_size: int
    token_embedding_dim: int
    layers: int | str
    cnn_filter_width: int
    pretrained_embedding_file: str
    vocab_file: str
    freeze_pretrained_embedding: bool

    def key(self, setting: str) -> str:
        """The hyperparameter's full name, e.g. ``enc1_vocab_file``."""
        return f"enc{self.side}_{setting}"


ENCODER_SETTINGS = tuple(f.name for f in fields(EncoderConfig) if f.name != "side")


class Hyperparameters(Mapping[str, Any]):
    """A validated, immutable set of hyperparameters with attribute access (``hp.enc_dim``)."""

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Hyperparameters are immutable; use replace()")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Hyperparameters({self._values!r})"

    def replace(self, **changes: Any) -> Hyperparameters:
        """A copy with some values changed, validated again."""
        merged = {**self.to_strings(), **{k: v for k, v in changes.items()}}
        return parse_hyperparameters(merged)

    def encoder(self, side: int) -> EncoderConfig:
        """The settings of enc0 or enc1."""
        return EncoderConfig(side, **{name: self._values[f"enc{side}_{name}"] for name in ENCODER_SETTINGS})

    @property
    def encoders(self) -> tuple[EncoderConfig, EncoderConfig]:
        return self.encoder(0), self.encoder(1)

    @property
    def regression(self) -> bool:
        """A real-valued label (``output_layer=mean_squared_error``) rather than a class."""
        return self._values["output_layer"] == "mean_squared_error"

    @property
    def row_sparse(self) -> bool:
        """Token tables with sparse gradients (``token_embedding_storage_type=row_sparse``)."""
        return self._values["token_embedding_storage_type"] == "row_sparse"

    def to_strings(self) -> dict[str, str]:
        """The SageMaker form: every value as a string, as in hyperparameters.json."""
        return {k: _to_string(v) for k, v in self._values.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_strings(), indent=2, sort_keys=True)


def _to_string(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(value)
    return str(value)


def parse_hyperparameters(raw: Mapping[str, Any] | None = None, **overrides: Any) -> Hyperparameters:
    """Validate a string map (or Python values) into :class:`Hyperparameters`.

    enc1's max_seq_len and vocab_size default to enc0's; ``enc1_network=enc0`` is resolved to
    enc0's architecture and hyperparameters (an enc1 setting that contradicts them is refused),
    so the rest of the code never sees ``enc0`` as a network name.
    """
    given = {**(raw or {}), **overrides}
    unknown = sorted(k for k in given if k not in SCHEMA and not str(k).startswith("_"))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter {unknown[0]}={given[unknown[0]]!r}; "
            f"valid names: {', '.join(sorted(SCHEMA))}"
        )
    values: dict[str, Any] = {}
    for name, param in SCHEMA.items():
        if name in given and given[name] is not None and not (given[name] == "" and param.kind != "file"):
            values[name] = param.parse(given[name])
        elif param.required:
            raise HyperparameterError(f"hyperparameter {name} is required; valid: {param.valid_range()}")
        else:
            values[name] = param.default
    _resolve_enc1(values, given)
    _resolve_tied_encoder(values, given)
    hp = Hyperparameters(values)
    for rule in CROSS_PARAMETER_RULES:
        rule(hp)
    return hp


def _is_unset(given: Mapping[str, Any], name: str) -> bool:
    """Not given, or given empty: what ``parse_hyperparameters`` replaces by the default."""
    return given.get(name) in (None, "")


def _inherit_from_enc0(values: dict[str, Any], given: Mapping[str, Any], suffixes: tuple[str, ...]) -> None:
    """enc1 settings the user left unset take enc0's values."""
    for suffix in suffixes:
        if _is_unset(given, f"enc1_{suffix}"):
            values[f"enc1_{suffix}"] = values[f"enc0_{suffix}"]


#: The settings ``enc1_network=enc0`` gives enc1 along with enc0's network.
ENC0_NETWORK_SETTINGS = ("token_embedding_dim", "layers", "cnn_filter_width")


def _resolve_enc1(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    """enc1's sizes default to enc0's. ``enc1_network=enc0`` (the default) gives enc1 enc0's
    network "including the hyperparameter values" (the reference), with its own weights; an enc1
    setting given with a different value would be silently overridden, so it is refused."""
    _inherit_from_enc0(values, given, ("max_seq_len", "vocab_size"))
    if values["enc1_network"] != "enc0":
        return
    values["enc1_network"] = values["enc0_network"]
    _inherit_from_enc0(values, given, ENC0_NETWORK_SETTINGS)
    if values["tied_encoder_weight"] is True:
        return  # its own rule refuses the same conflicts, and names itself (auto is resolved after)
    default = " (the default)" if _is_unset(given, "enc1_network") else ""
    _require_enc1_as_enc0(
        values,
        ENC0_NETWORK_SETTINGS,
        f"enc1_network=enc0{default} gives enc1 enc0's network and its settings",
        f"or leave it unset; name enc1's network, e.g. enc1_network={values['enc0_network']}, "
        "to give enc1 settings of its own",
    )


#: enc1 settings that must equal enc0's when both inputs go through one encoder.
TIED_ENCODER_SETTINGS = ("network", "vocab_size", "token_embedding_dim", "layers", "cnn_filter_width")


def _same_kind_inputs(values: dict[str, Any], given: Mapping[str, Any]) -> bool:
    """What ``tied_encoder_weight=auto`` means: one encoder when the user says both inputs are
    objects of one kind, i.e. ``enc1_network=enc0`` (given or left unset, its default) with
    ``tied_token_embedding_weight=True``, and enc1's architecture is enc0's.

    With two encoders, hcnn and bilstm trained with the published notebooks' sentence-pair
    settings sit near the majority class on SICK (trial entailment accuracy 0.63, against 0.80
    with one encoder; README, "Why two encoders fail"). A saved model's hyperparameters.json
    names enc1's network (never ``enc0``) and holds the resolved True/False, so a model saved
    before auto existed rebuilds the network it was trained with."""
    enc1_is_enc0 = _is_unset(given, "enc1_network") or str(given["enc1_network"]).strip() == "enc0"
    same_architecture = all(values[f"enc1_{s}"] == values[f"enc0_{s}"] for s in TIED_ENCODER_SETTINGS)
    two_asked = values["tied_encoder_projection"]  # two encoders sharing their last map
    return enc1_is_enc0 and values["tied_token_embedding_weight"] and same_architecture and not two_asked


def _resolve_tied_encoder(values: dict[str, Any], given: Mapping[str, Any]) -> None:
    """``tied_encoder_weight=auto`` becomes True or False here (so what is saved is what was
    built). True: enc1 *is* enc0, so enc1's architecture settings left unset are enc0's
    (whatever ``enc1_network`` names), any set to something else is refused, and the token
    table is shared (``tied_token_embedding_weight`` is implied; saying False is refused)."""
    if values["tied_encoder_weight"] == AUTO:
        values["tied_encoder_weight"] = _same_kind_inputs(values, given)
    if not values["tied_encoder_weight"]:
        return
    if not _is_unset(given, "tied_token_embedding_weight") and not values["tied_token_embedding_weight"]:
        raise HyperparameterError(
            "tied_encoder_weight=True shares the whole encoder, token table included; "
            "it cannot be combined with tied_token_embedding_weight=False"
        )
    _inherit_from_enc0(values, given, TIED_ENCODER_SETTINGS)
    _require_enc1_as_enc0(
        values,
        TIED_ENCODER_SETTINGS,
        "tied_encoder_weight=True uses enc0 for both inputs",
        "or be left unset",
    )
    values["tied_token_embedding_weight"] = True


def _require_enc1_as_enc0(
    values: Mapping[str, Any], suffixes: tuple[str, ...], reason: str, remedy: str
) -> None:
    """Refuse an enc1 setting that differs from enc0's where ``reason`` makes them one thing."""
    for suffix in suffixes:
        if values[f"enc1_{suffix}"] != values[f"enc0_{suffix}"]:
            raise HyperparameterError(
                f"{reason}, so enc1_{suffix}={values[f'enc1_{suffix}']} must equal "
                f"enc0_{suffix}={values[f'enc0_{suffix}']} ({remedy})"
            )


# --- rules relating several hyperparameters, run in this order by parse_hyperparameters ----------


def _shared_projection_fits(hp: Hyperparameters) -> None:
    """``tied_encoder_projection`` shares one linear map, which needs two encoders built alike
    (their pooled features one width); with one encoder it is already shared."""
    if not hp.tied_encoder_projection:
        return
    if hp.tied_encoder_weight:
        raise HyperparameterError(
            "tied_encoder_projection=True shares the last linear map of two encoders; with "
            "tied_encoder_weight=True there is one encoder (set tied_encoder_weight=False for two)"
        )
    _require_enc1_as_enc0(
        hp,
        ("network", "token_embedding_dim", "layers", "cnn_filter_width"),
        "tied_encoder_projection=True shares one linear map between the two encoders",
        "or name enc1_network=enc0",
    )


def _tied_tables_match(hp: Hyperparameters) -> None:
    """One token table for both inputs needs one vocabulary size and one token dimension."""
    if hp.tied_token_embedding_weight and (
        hp.enc0_vocab_size != hp.enc1_vocab_size or hp.enc0_token_embedding_dim != hp.enc1_token_embedding_dim
    ):
        raise HyperparameterError(
            "tied_token_embedding_weight=True needs enc0_vocab_size == enc1_vocab_size and "
            "enc0_token_embedding_dim == enc1_token_embedding_dim, got "
            f"{hp.enc0_vocab_size}/{hp.enc1_vocab_size} and "
            f"{hp.enc0_token_embedding_dim}/{hp.enc1_token_embedding_dim}"
        )


def _sparse_optimizer_supported(hp: Hyperparameters) -> None:
    """row_sparse tables take sparse gradients, which rmsprop and adadelta cannot apply."""
    if hp.row_sparse and hp.optimizer not in SPARSE_OPTIMIZERS:
        raise HyperparameterError(
            f"optimizer={hp.optimizer} does not support token_embedding_storage_type=row_sparse; "
            f"use one of {', '.join(SPARSE_OPTIMIZERS)} or token_embedding_storage_type=dense"
        )


def _decay_has_a_scope(hp: Hyperparameters) -> None:
    """row_sparse tables take no weight decay (it would make their update dense), so decay
    confined to the token tables would decay nothing."""
    if hp.weight_decay_scope == "token_tables" and hp.row_sparse:
        raise HyperparameterError(
            "weight_decay_scope=token_tables decays nothing with token_embedding_storage_type=row_sparse "
            "(row-sparse tables take no weight decay); use weight_decay_scope=all or "
            "token_embedding_storage_type=dense"
        )


def _pretrained_needs_vocab(hp: Hyperparameters) -> None:
    """A pretrained file's rows are placed by their tokens' IDs, which only a vocabulary gives."""
    for enc in hp.encoders:
        if (
            enc.pretrained_embedding_file
            and not enc.vocab_file
            and not (enc.side == 1 and hp.tied_token_embedding_weight)
        ):
            raise HyperparameterError(
                f"{enc.key('pretrained_embedding_file')}={enc.pretrained_embedding_file} needs "
                f"{enc.key('vocab_file')} to map its tokens to IDs"
            )


def _one_table_one_set_of_files(hp: Hyperparameters) -> None:
    """With one token table (tied tables, or one encoder) enc0's files set it, so enc1 may name
    the same files or none; a file of its own would be a second vocabulary for the same rows."""
    if not hp.tied_token_embedding_weight:
        return
    named = tuple(suffix for suffix in ("vocab_file", "pretrained_embedding_file") if hp[f"enc1_{suffix}"])
    if hp.enc1_pretrained_embedding_file:
        named += ("freeze_pretrained_embedding",)
    implied = " (implied by tied_encoder_weight=True)" if hp.tied_encoder_weight else ""
    _require_enc1_as_enc0(
        hp,
        named,
        f"tied_token_embedding_weight=True{implied} shares one token table",
        "or leave enc1's files unset",
    )


CROSS_PARAMETER_RULES: tuple[Callable[[Hyperparameters], None], ...] = (
    _shared_projection_fits,
    _tied_tables_match,
    _sparse_optimizer_supported,
    _decay_has_a_scope,
    _pretrained_needs_vocab,
    _one_table_one_set_of_files,
)


def load_hyperparameters_file(path: str) -> dict[str, Any]:
    """Read a SageMaker-style hyperparameters.json (a flat JSON object)."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: hyperparameters file not found") from None
    with handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise HyperparameterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HyperparameterError(f"{path}: expected a JSON object of hyperparameters")
    return data


def describe_schema() -> str:
    """A table of every hyperparameter, for ``object2vec hyperparameters`` and the README."""
    rows = ["name | default | valid | description", "--- | --- | --- | ---"]
    for p in SCHEMA.values():
        default = "(required)" if p.required else ("enc0's" if p.default is None else _to_string(p.default))
        rows.append(f"`{p.name}` | {default} | {p.valid_range()} | {p.help}")
    return "\n".join(rows)
