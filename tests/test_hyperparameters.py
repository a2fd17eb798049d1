"""The hyperparameter schema against the documented SageMaker names, defaults and ranges.

The tables below are typed in from the documentation (not read from the schema), so a wrong
default or range in ``object2vec.hyperparameters`` fails here instead of being tested against
itself.
"""

from __future__ import annotations

import json
import math

import pytest

from object2vec.hyperparameters import (
    SCHEMA,
    HyperparameterError,
    Hyperparameters,
    describe_schema,
    load_hyperparameters_file,
    parse_hyperparameters,
)

REQUIRED = {"enc0_max_seq_len": "10", "enc0_vocab_size": "100"}

#: name -> (kind, default, low, high) for every numeric hyperparameter, from the documentation.
#: A default of None marks a required parameter (enc0) or one that defaults to enc0's (enc1).
NUMERIC = {
    "enc0_max_seq_len": ("int", None, 1, 5000),
    "enc1_max_seq_len": ("int", None, 1, 5000),
    "enc0_vocab_size": ("int", None, 2, 3_000_000),
    "enc1_vocab_size": ("int", None, 2, 3_000_000),
    "enc_dim": ("int", 4096, 4, 10000),
    "enc0_token_embedding_dim": ("int", 300, 2, 1000),
    "enc1_token_embedding_dim": ("int", 300, 2, 1000),
    "enc0_layers": ("int_or_auto", "auto", 1, 4),
    "enc1_layers": ("int_or_auto", "auto", 1, 4),
    "enc0_cnn_filter_width": ("int", 3, 1, 9),
    "enc1_cnn_filter_width": ("int", 3, 1, 9),
    "mlp_layers": ("int", 2, 0, 10),
    "mlp_dim": ("int", 512, 2, 10000),
    "num_classes": ("int", 2, 2, 30),
    "learning_rate": ("float", 0.0004, 1e-6, 1.0),
    "weight_decay": ("float", 0.0, 0.0, 10000.0),
    "dropout": ("float", 0.0, 0.0, 1.0),
    "epochs": ("int", 30, 1, 100),
    "mini_batch_size": ("int", 32, 1, 10000),
    "early_stopping_patience": ("int", 3, 1, 5),
    "early_stopping_tolerance": ("float", 0.01, 1e-6, 0.1),
    "negative_sampling_rate": ("int", 0, 0, 100),
    "bucket_width": ("int", 0, 0, 100),
}

#: name -> (default, allowed values) for every choice / boolean / file / list hyperparameter.
OTHER = {
    "enc0_network": ("hcnn", ("hcnn", "bilstm", "pooled_embedding")),
    "enc1_network": ("enc0", ("enc0", "hcnn", "bilstm", "pooled_embedding")),
    "enc0_freeze_pretrained_embedding": (True, (True, False)),
    "enc1_freeze_pretrained_embedding": (True, (True, False)),
    "enc0_pretrained_embedding_file": ("", None),
    "enc1_pretrained_embedding_file": ("", None),
    "enc0_vocab_file": ("", None),
    "enc1_vocab_file": ("", None),
    "comparator_list": (("hadamard", "concat", "abs_diff"), None),
    "mlp_activation": ("linear", ("tanh", "relu", "linear")),
    "output_layer": ("softmax", ("softmax", "mean_squared_error")),
    "optimizer": ("adam", ("adam", "adagrad", "sgd", "rmsprop", "adadelta")),
    "tied_token_embedding_weight": (False, (True, False)),
    "token_embedding_storage_type": ("dense", ("dense", "row_sparse")),
}

#: Hyperparameters beyond the reference (name -> (default, allowed values)). tied_encoder_weight
#: defaults to auto, which keeps the reference's two encoders except for inputs of one kind
#: (enc1_network=enc0 with a tied token table), tested below.
EXTENSIONS = {
    "tied_encoder_weight": ("auto", ("auto", True, False)),
    "tied_encoder_projection": (False, (True, False)),
    "weight_decay_scope": ("all", ("all", "token_tables")),
}


#: Numeric hyperparameters beyond the reference: name -> (kind, default, low, high). The
#: schema and boundary tests run over NUMBERS, the reference's and these together.
NUMERIC_EXTENSIONS = {
    "weight_average_epochs": ("float", 0.25, 0.01, 100.0),
}
NUMBERS = {**NUMERIC, **NUMERIC_EXTENSIONS}


def parse(**values):
    return parse_hyperparameters({**REQUIRED, **values})


def number_forms(value: float) -> set[str]:
    """Ways a bound may be written in an error message (10000, 10000.0, 1e-06, 0.000001 ...)."""
    forms = {str(value), repr(value), f"{value:g}", repr(float(value))}
    if float(value).is_integer():
        forms.add(str(int(value)))
    return forms


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} missing from error message {message!r}"


def assert_names_range(message: str, low: float, high: float) -> None:
    assert any(f in message for f in number_forms(low)), f"low bound {low} missing from {message!r}"
    assert any(f in message for f in number_forms(high)), f"high bound {high} missing from {message!r}"


# --- the schema is the documented one ------------------------------------------------------


def test_schema_declares_exactly_the_documented_names():
    assert set(SCHEMA) == set(NUMBERS) | set(OTHER) | set(EXTENSIONS)


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_numeric_schema_matches_documentation(name):
    kind, default, low, high = NUMBERS[name]
    param = SCHEMA[name]
    assert (param.kind, param.low, param.high) == (kind, low, high)
    if default is not None:
        assert param.default == default
    assert param.required == (name in ("enc0_max_seq_len", "enc0_vocab_size"))


def test_every_numeric_schema_parameter_has_its_boundaries_tested():
    """The boundary tests below run over NUMBERS; the schema must declare no other number."""
    assert {n for n, p in SCHEMA.items() if p.kind in ("int", "float", "int_or_auto")} == set(NUMBERS)


def test_every_default():
    hp = parse_hyperparameters(REQUIRED)
    for name, (_, default, _, _) in NUMBERS.items():
        if default is not None:
            assert hp[name] == default, name
            assert type(hp[name]) is type(default), name
    for name, (default, _) in OTHER.items():
        if name == "enc1_network":
            continue  # resolved to enc0's network, tested below
        assert hp[name] == default, name
    assert all(SCHEMA[name].default == default for name, (default, _) in EXTENSIONS.items())
    assert hp.enc1_network == "hcnn"
    assert hp.tied_encoder_weight is False  # auto, resolved: the token tables are not tied
    assert hp.enc0_max_seq_len == 10 and hp.enc1_max_seq_len == 10
    assert hp.enc0_vocab_size == 100 and hp.enc1_vocab_size == 100


@pytest.mark.parametrize("missing", ["enc0_max_seq_len", "enc0_vocab_size"])
def test_required_parameters(missing):
    given = dict(REQUIRED)
    del given[missing]
    with pytest.raises(HyperparameterError) as err:
        parse_hyperparameters(given)
    assert_names(str(err.value), missing, "required")


# --- every range boundary ------------------------------------------------------------------


def outside(kind: str, low: float, high: float) -> tuple[float, float]:
    if kind == "float":
        return math.nextafter(low, -math.inf), math.nextafter(high, math.inf)
    return low - 1, high + 1


def own_network(name: str) -> dict[str, str]:
    """enc1's network named, so an enc1 setting may differ from enc0's (under the default
    ``enc1_network=enc0`` it must equal it)."""
    return {"enc1_network": "hcnn"} if name.startswith("enc1_") else {}


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_boundaries_are_valid(name):
    kind, _, low, high = NUMBERS[name]
    for bound in (low, high):
        for raw in (bound, str(bound)):
            hp = parse(**own_network(name), **{name: raw})
            assert hp[name] == bound, (name, raw)
            assert type(hp[name]) is (float if kind == "float" else int)


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("side", ["below", "above"])
def test_just_outside_the_range_is_refused(name, side):
    kind, _, low, high = NUMBERS[name]
    value = outside(kind, low, high)[side == "above"]
    for raw in (value, repr(value)):
        with pytest.raises(HyperparameterError) as err:
            parse(**{name: raw})
        message = str(err.value)
        assert_names(message, name, repr(value) if kind == "float" else str(value))
        assert_names_range(message, low, high)


# --- string forms as in a SageMaker hyperparameters.json ------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("True", True),
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("false", False),
        (True, True),
        (False, False),
    ],
)
def test_boolean_strings(raw, expected):
    assert parse(tied_token_embedding_weight=raw).tied_token_embedding_weight is expected
    assert parse(enc1_freeze_pretrained_embedding=raw).enc1_freeze_pretrained_embedding is expected


@pytest.mark.parametrize(
    "raw, expected",
    [("0.001", 0.001), ("1e-3", 0.001), ("1E-3", 0.001), (" 0.5 ", 0.5), ("1", 1.0), (0.02, 0.02), (1, 1.0)],
)
def test_float_strings(raw, expected):
    assert parse(learning_rate=raw).learning_rate == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("raw, expected", [("64", 64), (" 64 ", 64), (64, 64), (64.0, 64)])
def test_int_strings(raw, expected):
    value = parse(enc_dim=raw).enc_dim
    assert value == expected and type(value) is int


@pytest.mark.parametrize("raw, expected", [("auto", "auto"), ("AUTO", "auto"), ("2", 2), (3, 3)])
def test_layers_auto_or_int(raw, expected):
    assert parse(enc0_layers=raw).enc0_layers == expected


@pytest.mark.parametrize(
    "name, raw",
    [
        ("enc_dim", "abc"),
        ("enc_dim", "64.5"),
        ("enc_dim", 64.5),
        ("enc_dim", True),
        ("enc_dim", "1e999"),
        ("enc_dim", [64]),
        ("epochs", "ten"),
        ("learning_rate", "fast"),
        ("learning_rate", "nan"),
        ("learning_rate", "inf"),
        ("learning_rate", float("nan")),
        ("learning_rate", True),
        ("dropout", "1e999"),
        ("enc0_layers", "automatic"),
        ("enc0_layers", "0"),
        ("enc0_layers", "5"),
        ("tied_token_embedding_weight", "yes please"),
        ("tied_token_embedding_weight", "2"),
        ("tied_encoder_weight", "sometimes"),
        ("tied_encoder_weight", "2"),
        ("optimizer", "momentum"),
        ("output_layer", "sigmoid"),
        ("mlp_activation", "gelu"),
        ("enc0_network", "enc0"),
        ("enc0_network", "transformer"),
        ("enc1_network", "lstm"),
        ("token_embedding_storage_type", "sparse"),
        ("comparator_list", "hadamard, dot"),
        ("comparator_list", ",,"),
    ],
)
def test_bad_values_name_key_value_and_range(name, raw):
    with pytest.raises(HyperparameterError) as err:
        parse(**{name: raw})
    message = str(err.value)
    assert_names(message, name, repr(raw) if not isinstance(raw, str) else raw, "valid")
    param = SCHEMA[name]
    if param.kind in ("int", "float", "int_or_auto"):
        assert_names_range(message, param.low, param.high)
    for choice in param.choices:
        assert choice in message


def test_huge_integer_is_a_hyperparameter_error_not_a_crash():
    with pytest.raises(HyperparameterError):
        parse(weight_decay=10**400)


# --- unknown and internal keys -------------------------------------------------------------


def test_underscore_keys_are_accepted_and_ignored():
    hp = parse(_kvstore="dist_sync", _num_gpus="auto", _num_kv_servers="auto", _anything="x")
    assert not any(name.startswith("_") for name in hp)
    assert hp == parse_hyperparameters(REQUIRED)


@pytest.mark.parametrize("key", ["enc_dims", "learningrate", "kvstore", "Enc_dim"])
def test_unknown_key_names_key_and_value(key):
    with pytest.raises(HyperparameterError) as err:
        parse(**{key: "123"})
    assert_names(str(err.value), key, "123")
    assert "enc_dim" in str(err.value)  # the valid names are listed


def test_errors_are_value_errors():
    assert issubclass(HyperparameterError, ValueError)


# --- enc1 defaults and enc1_network=enc0 ---------------------------------------------------


def test_enc1_sizes_default_to_enc0s():
    hp = parse_hyperparameters({"enc0_max_seq_len": "7", "enc0_vocab_size": "99"})
    assert (hp.enc1_max_seq_len, hp.enc1_vocab_size) == (7, 99)
    hp = parse_hyperparameters(
        {"enc0_max_seq_len": "7", "enc0_vocab_size": "99", "enc1_max_seq_len": "3", "enc1_vocab_size": "5"}
    )
    assert (hp.enc0_max_seq_len, hp.enc0_vocab_size, hp.enc1_max_seq_len, hp.enc1_vocab_size) == (7, 99, 3, 5)


def test_enc1_network_enc0_copies_enc0_architecture_and_settings():
    hp = parse(
        enc0_network="bilstm", enc0_token_embedding_dim="64", enc0_layers="2", enc0_cnn_filter_width="5"
    )
    assert hp.enc1_network == "bilstm"
    assert (hp.enc1_token_embedding_dim, hp.enc1_layers, hp.enc1_cnn_filter_width) == (64, 2, 5)
    explicit = parse(
        enc0_network="bilstm",
        enc1_network="enc0",
        enc0_token_embedding_dim="64",
        enc0_layers="2",
        enc0_cnn_filter_width="5",
    )
    assert explicit == hp
    assert hp.encoder(1).network == "bilstm"


@pytest.mark.parametrize("network", [{}, {"enc1_network": "enc0"}])
@pytest.mark.parametrize(
    "conflict, named",
    [
        ({"enc0_token_embedding_dim": "64", "enc1_token_embedding_dim": "8"}, "enc1_token_embedding_dim=8"),
        ({"enc0_layers": "2", "enc1_layers": "3"}, "enc1_layers=3"),
        ({"enc1_layers": "1"}, "enc1_layers=1"),  # enc0's is auto
        ({"enc1_cnn_filter_width": "5"}, "enc1_cnn_filter_width=5"),
    ],
)
def test_enc1_network_enc0_refuses_enc1_settings_that_contradict_enc0s(network, conflict, named):
    """The reference: enc1 then takes enc0's network "including the hyperparameter values", so
    a different enc1 value would be ignored; it is refused instead (the rule until now let it
    win silently)."""
    with pytest.raises(HyperparameterError) as err:
        parse(enc0_network="hcnn", **network, **conflict)
    assert_names(str(err.value), "enc1_network=enc0", named, "enc1_network=hcnn")
    assert ("(the default)" in str(err.value)) == (not network)


def test_enc1_network_enc0_accepts_enc1_settings_equal_to_enc0s():
    hp = parse(
        enc0_network="bilstm",
        enc1_network="enc0",
        enc0_token_embedding_dim="64",
        enc1_token_embedding_dim="64",
        enc1_layers="auto",
    )
    assert (hp.enc1_network, hp.enc1_token_embedding_dim, hp.enc1_layers) == ("bilstm", 64, "auto")


def test_a_named_enc1_network_keeps_enc1_values_given_explicitly():
    hp = parse(
        enc0_network="pooled_embedding",
        enc1_network="pooled_embedding",
        enc0_token_embedding_dim="64",
        enc1_token_embedding_dim="8",
    )
    assert (hp.enc1_network, hp.enc0_token_embedding_dim, hp.enc1_token_embedding_dim) == (
        "pooled_embedding",
        64,
        8,
    )


def test_enc1_network_can_differ():
    hp = parse(enc0_network="pooled_embedding", enc1_network="bilstm")
    assert (hp.enc0_network, hp.enc1_network) == ("pooled_embedding", "bilstm")


def test_tied_encoder_weight_shares_enc0_and_implies_a_tied_table():
    hp = parse(enc0_network="bilstm", tied_encoder_weight="True", enc1_max_seq_len="4")
    assert hp.tied_encoder_weight is True and hp.tied_token_embedding_weight is True
    assert (hp.enc1_network, hp.enc1_max_seq_len) == ("bilstm", 4)  # in1 may still be truncated shorter
    assert parse().tied_encoder_weight is False


def test_tied_encoder_weight_gives_enc1_enc0s_unset_settings_whatever_enc1_network_says():
    hp = parse(
        enc0_network="hcnn",
        enc1_network="hcnn",
        enc0_token_embedding_dim="64",
        enc0_layers="2",
        tied_encoder_weight="True",
    )
    assert (hp.enc1_token_embedding_dim, hp.enc1_layers) == (64, 2)
    assert (
        parse(
            enc0_network="pooled_embedding",
            enc1_network="pooled_embedding",
            enc0_cnn_filter_width="5",
            tied_encoder_weight="True",
        ).enc1_cnn_filter_width
        == 5
    )


@pytest.mark.parametrize(
    "conflict, named",
    [
        ({"enc1_network": "pooled_embedding"}, "enc1_network=pooled_embedding"),
        ({"enc1_vocab_size": "7"}, "enc1_vocab_size=7"),
        ({"enc1_token_embedding_dim": "8"}, "enc1_token_embedding_dim=8"),
        ({"enc0_layers": "1", "enc1_layers": "2"}, "enc1_layers=2"),
        ({"tied_token_embedding_weight": "False"}, "tied_token_embedding_weight=False"),
    ],
)
def test_tied_encoder_weight_refuses_a_different_enc1(conflict, named):
    with pytest.raises(HyperparameterError) as err:
        parse(tied_encoder_weight="True", **conflict)
    assert_names(str(err.value), "tied_encoder_weight=True", named)


@pytest.mark.parametrize(
    "given, tied",
    [
        ({"tied_token_embedding_weight": "true"}, True),  # enc1_network unset: enc0, its default
        ({"tied_token_embedding_weight": "true", "enc1_network": "enc0"}, True),
        (
            {"tied_token_embedding_weight": "true", "enc1_network": " enc0 ", "tied_encoder_weight": "AUTO"},
            True,
        ),
        ({"tied_token_embedding_weight": "true", "enc1_network": "enc0", "enc1_max_seq_len": "4"}, True),
        ({}, False),  # separate token tables
        ({"tied_token_embedding_weight": "false"}, False),
        (
            {"tied_token_embedding_weight": "true", "enc1_network": "hcnn"},
            False,
        ),  # named: as a saved model says
        (
            {
                "tied_token_embedding_weight": "true",
                "enc0_network": "bilstm",
                "enc1_network": "pooled_embedding",
            },
            False,
        ),
        (
            {"tied_token_embedding_weight": "true", "tied_encoder_weight": "False"},
            False,
        ),  # the reference's two
        ({"tied_encoder_weight": "True"}, True),
    ],
)
def test_tied_encoder_weight_auto_is_one_encoder_for_inputs_of_one_kind(given, tied):
    hp = parse(**given)
    assert hp.tied_encoder_weight is tied
    assert hp.to_strings()["tied_encoder_weight"] == str(tied)  # saved resolved, never "auto"
    assert parse_hyperparameters(hp.to_strings()).tied_encoder_weight is tied  # and read back the same


@pytest.mark.parametrize(
    "conflict, named",
    [
        ({"enc1_layers": "2"}, "enc1_layers=2"),
        ({"enc1_token_embedding_dim": "16"}, "enc1_token_embedding_dim=16"),
    ],
)
def test_tied_encoder_weight_auto_leaves_enc1_network_enc0s_refusals_in_place(conflict, named):
    """auto is resolved after enc1_network=enc0's own rule, so an enc1 built otherwise is refused
    by that rule, as without a tied table, and never quietly given a second encoder."""
    with pytest.raises(HyperparameterError) as err:
        parse(tied_token_embedding_weight="true", **conflict)
    assert_names(str(err.value), "enc1_network=enc0", named)


def test_tied_encoder_projection_keeps_two_encoders_of_one_architecture():
    """Asked for with a tied table and enc1_network=enc0, it means two encoders (auto resolves
    False); one encoder, or two built differently, cannot share one linear map."""
    hp = parse(tied_token_embedding_weight="true", tied_encoder_projection="true", enc0_network="bilstm")
    assert (hp.tied_encoder_weight, hp.tied_encoder_projection, hp.enc1_network) == (False, True, "bilstm")
    assert parse(tied_encoder_projection="true").tied_encoder_projection is True  # own tables: fine
    for conflict, named in (
        ({"tied_encoder_weight": "True"}, "tied_encoder_weight=True"),
        ({"enc1_network": "pooled_embedding"}, "enc1_network=pooled_embedding"),
        ({"enc1_network": "hcnn", "enc1_layers": "2"}, "enc1_layers=2"),
        ({"enc1_network": "hcnn", "enc1_token_embedding_dim": "8"}, "enc1_token_embedding_dim=8"),
    ):
        with pytest.raises(HyperparameterError) as err:
            parse(tied_encoder_projection="true", **conflict)
        assert_names(str(err.value), "tied_encoder_projection=True", named)


def test_a_saved_model_of_two_encoders_reads_back_as_two_encoders():
    """What the code before auto saved for the reference's two encoders with a tied table: the
    key as "False", or (before tied_encoder_weight existed) no key; enc1_network is a network
    name either way (enc0 is resolved before saving), so auto gives back two encoders."""
    saved = parse(tied_token_embedding_weight="true", tied_encoder_weight="False").to_strings()
    assert (saved["tied_encoder_weight"], saved["enc1_network"]) == ("False", "hcnn")
    assert parse_hyperparameters(saved).tied_encoder_weight is False
    del saved["tied_encoder_weight"]
    assert parse_hyperparameters(saved).tied_encoder_weight is False


# --- comparator_list and file names --------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("hadamard, concat, abs_diff", ("hadamard", "concat", "abs_diff")),
        ("abs_diff,hadamard", ("abs_diff", "hadamard")),
        (" concat ", ("concat",)),
        ("hadamard", ("hadamard",)),
        (["concat", "abs_diff"], ("concat", "abs_diff")),
    ],
)
def test_comparator_list_keeps_the_given_order(raw, expected):
    assert parse(comparator_list=raw).comparator_list == expected


@pytest.mark.parametrize("name", ["glove.840B.300d.txt", "vocab_0.json", "VOCAB", ""])
def test_file_names_of_allowed_characters(name):
    # enc1 names its vocabulary too: a pretrained file alone breaks another rule (it needs one)
    hp = parse(enc0_vocab_file=name, enc1_vocab_file=name, enc1_pretrained_embedding_file=name)
    assert hp.enc0_vocab_file == hp.enc1_pretrained_embedding_file == name


@pytest.mark.parametrize(
    "name", ["../vocab.json", "dir/vocab.json", "my vocab.json", "vocab-1.json", "/abs.txt", "vocab$.json"]
)
def test_file_names_outside_the_character_rule_are_refused(name):
    for key in ("enc0_vocab_file", "enc1_pretrained_embedding_file"):
        with pytest.raises(HyperparameterError) as err:
            parse(**{key: name})
        assert_names(str(err.value), key, name, "A-Za-z0-9._")


# --- the parsed object ---------------------------------------------------------------------


#: Non-default values of every kind that together are a valid configuration (tied token tables
#: would need equal vocabulary sizes, so they stay untied here).
NON_DEFAULT = {
    **REQUIRED,
    "enc1_max_seq_len": "3",
    "enc1_vocab_size": "20",
    "enc0_network": "pooled_embedding",
    "enc1_network": "pooled_embedding",
    "enc0_token_embedding_dim": "16",
    "enc1_token_embedding_dim": "12",
    "enc0_layers": "2",
    "comparator_list": "abs_diff, hadamard",
    "mlp_layers": "0",
    "learning_rate": "1e-6",
    "dropout": "0.25",
    "bucket_width": "7",
    "enc1_freeze_pretrained_embedding": "False",
    "token_embedding_storage_type": "row_sparse",
    "optimizer": "sgd",
    "enc0_vocab_file": "vocab.json",
}


def test_string_map_round_trip():
    """hyperparameters.json of a saved model is the to_strings() map: it must parse back equal."""
    hp = parse_hyperparameters(NON_DEFAULT)
    strings = hp.to_strings()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in strings.items())
    assert parse_hyperparameters(strings) == hp
    assert parse_hyperparameters(json.loads(hp.to_json())) == hp
    default = parse_hyperparameters(REQUIRED)
    assert parse_hyperparameters(default.to_strings()) == default


def test_immutable_and_replace_revalidates():
    hp = parse_hyperparameters(REQUIRED)
    assert isinstance(hp, Hyperparameters)
    with pytest.raises(AttributeError):
        hp.enc_dim = 8
    assert hp.replace(enc_dim=8).enc_dim == 8 and hp.enc_dim == 4096
    with pytest.raises(HyperparameterError):
        hp.replace(enc_dim=2)


def test_encoder_view():
    hp = parse_hyperparameters(NON_DEFAULT)
    enc1 = hp.encoder(1)
    assert enc1.max_seq_len == 3 and enc1.vocab_size == 20 and enc1.token_embedding_dim == 12
    assert enc1.side == 1 and enc1.key("vocab_size") == "enc1_vocab_size"


def test_load_sagemaker_hyperparameters_file(tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({**NON_DEFAULT, "_kvstore": "device", "_num_gpus": "auto"}))
    assert parse_hyperparameters(load_hyperparameters_file(str(path))) == parse_hyperparameters(NON_DEFAULT)


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"enc_dim"'])
def test_bad_hyperparameters_file(tmp_path, body):
    path = tmp_path / "hp.json"
    path.write_text(body)
    with pytest.raises(HyperparameterError) as err:
        load_hyperparameters_file(str(path))
    assert str(path) in str(err.value)


def test_describe_schema_lists_every_parameter_with_default():
    table = describe_schema()
    lines = {line.split("|")[0].strip().strip("`"): line for line in table.splitlines()}
    for name in SCHEMA:
        assert name in lines
    assert "4096" in lines["enc_dim"] and "10000" in lines["enc_dim"]
    assert "(required)" in lines["enc0_vocab_size"]
    assert "0.0004" in lines["learning_rate"]


def test_weight_decay_scope_token_tables_is_refused_with_row_sparse_tables():
    """row_sparse tables take no weight decay, so decay confined to them would decay nothing."""
    assert parse(weight_decay_scope="token_tables").weight_decay_scope == "token_tables"
    with pytest.raises(HyperparameterError) as err:
        parse(weight_decay_scope="token_tables", token_embedding_storage_type="row_sparse")
    assert_names(str(err.value), "weight_decay_scope=token_tables", "row_sparse")
