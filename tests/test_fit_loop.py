"""The fit loop's parts, each checked for doing what its hyperparameter or documentation names:
the weight average (decay, warm-up, swap in and out, what it leaves out, and that the kept weights
are the average), the optimizer and learning rate built, the MLP's activation and sizes, all
epochs without a validation channel, and the regression head's start at the mean label.

Small networks and a few steps each: these are unit tests, not learning tests."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from object2vec import Object2Vec, load
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet
from object2vec.sample_data import latent_pairs
from object2vec.training.data import Batch, PairDataset, epoch_size, iterate_batches
from object2vec.training.fit import (
    EarlyStopping,
    WeightAverage,
    batch_loss,
    make_optimizers,
    objective,
    seed_everything,
    train_epoch,
    validation_loss,
)
from object2vec.training.sparse_adam import SparseRowAdam

pytestmark = pytest.mark.usefixtures("one_torch_thread")

fit_module = sys.modules[WeightAverage.__module__]  # object2vec.training.fit (the package exports fit())

SMALL = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": 1,
    "enc0_vocab_size": 50,
    "enc1_vocab_size": 60,
    "enc0_token_embedding_dim": 8,
    "enc_dim": 8,
    "mlp_layers": 1,
    "mlp_dim": 8,
    "mini_batch_size": 32,
    "learning_rate": 0.01,
}


def small_net(**overrides) -> tuple[Object2VecNet, object]:
    hp = parse_hyperparameters({**SMALL, **overrides})
    torch.manual_seed(0)
    return Object2VecNet(hp), hp


def pairs(n: int, task: str = "binary", seed: int = 1) -> PairDataset:
    return PairDataset.from_records(latent_pairs(n, latent_dim=2, seed=seed, task=task), task == "regression")


class StepRecorder:
    """Every optimizer step of a block: the optimizer, and (with ``net``) every parameter's value
    just before the first step and just after each step."""

    def __init__(self, net=None):
        self.net = net  # an Object2VecNet, or a callable returning it (the API builds its own)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.initial: list[torch.Tensor] | None = None
        self.after_steps: list[list[torch.Tensor]] = []

    def _params(self) -> list[torch.Tensor]:
        net = self.net() if callable(self.net) and not isinstance(self.net, nn.Module) else self.net
        return [p.detach().clone() for p in net.parameters()]

    def __enter__(self):
        def before(optimizer, args, kwargs):
            self.optimizers.append(optimizer)
            if self.net is not None and self.initial is None:
                self.initial = self._params()

        def after(optimizer, args, kwargs):
            if self.net is not None:
                self.after_steps.append(self._params())

        self.handles = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# --- the weight average -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps_per_epoch, decay",
    [(1, 0.99), (400, 0.99), (800, 1 - 1 / 200), (4000, 0.999), (10**7, 0.9999)],
)
def test_weight_average_spans_a_quarter_epoch_of_at_least_100_steps(steps_per_epoch, decay):
    net, hp = small_net()
    assert WeightAverage(net, hp, steps_per_epoch).decay == pytest.approx(decay, abs=1e-12)


def test_the_default_weight_average_span_is_the_quarter_epoch_it_always_was():
    """weight_average_epochs left at its default gives, bit for bit, the decay of the fixed
    quarter-epoch span that came before it, for every epoch length."""
    net, hp = small_net()
    for steps_per_epoch in [*range(0, 2000), 4000, 39_999, 40_000, 40_001, 10**6]:
        before = min(0.9999, 1.0 - 1.0 / max(100, 0.25 * steps_per_epoch))
        assert WeightAverage(net, hp, steps_per_epoch).decay == before, steps_per_epoch


@pytest.mark.parametrize(
    "epochs, steps_per_epoch, decay",
    [(3, 354, 1 - 1 / 1062), (3, 10, 0.99), (0.5, 1000, 1 - 1 / 500), (100, 4000, 0.9999)],
)
def test_weight_average_epochs_sets_the_span(epochs, steps_per_epoch, decay):
    """weight_average_epochs=3 averages over three epochs' steps (MovieLens (e): 3 x 354), still
    at least 100 steps and at most 10,000."""
    net, hp = small_net(weight_average_epochs=str(epochs))
    assert WeightAverage(net, hp, steps_per_epoch).decay == pytest.approx(decay, abs=1e-12)


def test_weight_average_follows_early_steps_closely_then_averages_slowly():
    """shadow <- d * shadow + (1 - d) * weights after each step, with d = min(decay, (1 + t) / (10 + t))
    at step t: the first steps are followed almost fully (d = 2/11 at step 1), later ones barely."""
    net, hp = small_net()
    average = WeightAverage(net, hp, steps_per_epoch=400)  # decay 0.99
    expected = [p.detach().clone() for p in average.params]
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 201):
        with torch.no_grad():
            for param in average.params:
                param.add_(torch.randn(param.shape, generator=generator))
        average.update()
        d = min(0.99, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, average.params)]
        if step in (1, 2, 50, 200):
            for shadow, value in zip(average.shadow, expected):
                torch.testing.assert_close(shadow, value, rtol=1e-5, atol=1e-5)
    assert average.steps == 200
    # after 200 steps of unit noise the average sits far from the last weights
    assert max((s - p.detach()).abs().max().item() for s, p in zip(average.shadow, average.params)) > 1.0


def test_applied_swaps_the_average_in_and_back_out_and_commit_keeps_it():
    net, hp = small_net()
    average = WeightAverage(net, hp, steps_per_epoch=10)
    with torch.no_grad():
        for param in average.params:
            param.add_(1.0)
    average.update()
    raw = [p.detach().clone() for p in average.params]
    averaged = [s.clone() for s in average.shadow]
    assert all(not torch.equal(r, a) for r, a in zip(raw, averaged))
    with average.applied():
        assert all(torch.equal(p, a) for p, a in zip(average.params, averaged))
    assert all(torch.equal(p, r) for p, r in zip(average.params, raw))  # training goes on from the raw
    assert all(torch.equal(s, a) for s, a in zip(average.shadow, averaged))
    with pytest.raises(RuntimeError), average.applied():  # restored even when evaluation fails
        raise RuntimeError("evaluation failed")
    assert all(torch.equal(p, r) for p, r in zip(average.params, raw))
    average.commit()
    assert all(torch.equal(p, a) for p, a in zip(average.params, averaged))


@pytest.mark.parametrize("tied", [False, True])
def test_weight_average_leaves_row_sparse_token_tables_out(tied):
    extra = (
        {"tied_token_embedding_weight": True, "enc1_vocab_size": 50, "tied_encoder_weight": False}
        if tied
        else {}
    )
    dense_net, dense_hp = small_net(**extra)
    every = {id(p) for p in dense_net.parameters()}
    assert {id(p) for p in WeightAverage(dense_net, dense_hp, 10).params} == every
    net, hp = small_net(token_embedding_storage_type="row_sparse", **extra)
    tables = {id(t.weight) for t in net.token_tables}
    assert len(tables) == (1 if tied else 2)
    averaged = {id(p) for p in WeightAverage(net, hp, 10).params}
    assert averaged == {id(p) for p in net.parameters()} - tables


def expected_average(initial, after_steps, steps_per_epoch: int, upto: int) -> list[torch.Tensor]:
    """The documented average, computed independently from the weights after each step."""
    decay = min(0.9999, 1 - 1 / max(100, 0.25 * steps_per_epoch))
    shadow = [t.clone() for t in initial]
    for step, weights in enumerate(after_steps[:upto], start=1):
        d = min(decay, (1 + step) / (10 + step))
        shadow = [torch.lerp(s, w, 1.0 - d) for s, w in zip(shadow, weights)]
    return shadow


@pytest.mark.parametrize("validation", [False, True])
def test_the_trained_and_saved_weights_are_the_average_not_the_last_step(validation, tmp_path):
    """Without validation the model keeps the average at the last step; with it, the average at
    the best epoch (which evaluation saw). Neither is the raw weights of any step."""
    train = pairs(320)  # 10 steps per epoch
    model = Object2Vec({**SMALL, "epochs": 3, "early_stopping_patience": 3})
    with StepRecorder(lambda: model.net) as steps:
        model.fit(train, pairs(200, seed=2) if validation else None, seed=0, log=lambda _: None)
    assert len(steps.after_steps) == 30
    kept_epoch = model.result.best_epoch if validation else 3
    expected = expected_average(steps.initial, steps.after_steps, 10, upto=10 * kept_epoch)
    model.save(tmp_path / "model")
    for net in (model.net, load(tmp_path / "model").net):
        for (name, value), average in zip(net.named_parameters(), expected):
            torch.testing.assert_close(value.detach(), average, rtol=1e-5, atol=1e-6, msg=name)
    distance = max((a - r).abs().max().item() for a, r in zip(expected, steps.after_steps[-1]))
    assert distance > 1e-3  # the average is not the last step's weights: the check above means something
    if validation:  # and the kept epoch's validation metrics were measured on that average
        assert (
            model.metrics["validation:accuracy"]
            == model.result.history[kept_epoch - 1]["validation:accuracy"]
        )


# --- optimizers ---------------------------------------------------------------------------------

DENSE_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adadelta": torch.optim.Adadelta,
}
#: With row_sparse token tables: (the dense parameters' optimizer, the tables' optimizer).
SPARSE_OPTIMIZERS = {
    "adam": (torch.optim.Adam, SparseRowAdam),  # SparseAdam's update on gathered rows
    "adagrad": (torch.optim.Adagrad, torch.optim.Adagrad),
    "sgd": (torch.optim.SGD, torch.optim.SGD),
}


def param_ids(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize("name", sorted(DENSE_OPTIMIZERS))
def test_each_optimizer_is_built_with_the_given_rate_and_weight_decay(name):
    net, hp = small_net(optimizer=name, learning_rate=0.0123, weight_decay=0.0456)
    (optimizer,) = make_optimizers(net, hp)
    assert type(optimizer) is DENSE_OPTIMIZERS[name]
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.0123, 0.0456)]
    assert sorted(param_ids(optimizer)) == sorted(id(p) for p in net.parameters())


@pytest.mark.parametrize("name", sorted(DENSE_OPTIMIZERS))
@pytest.mark.parametrize("tied", [False, True])
def test_weight_decay_scope_token_tables_decays_the_tables_alone(name, tied):
    extra = {"tied_token_embedding_weight": True, "enc1_vocab_size": 50} if tied else {}
    net, hp = small_net(
        optimizer=name, learning_rate=0.0123, weight_decay=0.0456, weight_decay_scope="token_tables", **extra
    )
    (optimizer,) = make_optimizers(net, hp)
    assert type(optimizer) is DENSE_OPTIMIZERS[name]
    tables = sorted(id(t.weight) for t in net.token_tables)
    assert len(tables) == (1 if tied else 2)
    decayed, free = optimizer.param_groups
    assert [(g["lr"], g["weight_decay"]) for g in (decayed, free)] == [(0.0123, 0.0456), (0.0123, 0)]
    others = sorted(id(p) for p in net.parameters() if id(p) not in tables)
    assert sorted(id(p) for p in decayed["params"]) == tables
    assert sorted(id(p) for p in free["params"]) == others


def test_weight_decay_scope_token_tables_shrinks_only_the_tables():
    """With no gradient from the loss, decay alone moves parameters: the tables shrink, the rest
    stays where it is."""
    net, hp = small_net(
        optimizer="sgd", learning_rate=0.1, weight_decay=0.5, weight_decay_scope="token_tables"
    )
    (optimizer,) = make_optimizers(net, hp)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for param in net.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    tables = {id(t.weight) for t in net.token_tables}
    for name, param in net.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if id(param) in tables else before[name]
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", sorted(SPARSE_OPTIMIZERS))
@pytest.mark.parametrize("tied", [False, True])
def test_row_sparse_tables_get_their_sparse_optimizer_without_weight_decay(name, tied):
    extra = (
        {"tied_token_embedding_weight": True, "enc1_vocab_size": 50, "tied_encoder_weight": False}
        if tied
        else {}
    )
    net, hp = small_net(
        optimizer=name,
        learning_rate=0.0123,
        weight_decay=0.0456,
        token_embedding_storage_type="row_sparse",
        **extra,
    )
    dense, sparse = make_optimizers(net, hp)
    assert (type(dense), type(sparse)) == SPARSE_OPTIMIZERS[name]
    assert [(g["lr"], g["weight_decay"]) for g in dense.param_groups] == [(0.0123, 0.0456)]
    assert [(g["lr"], g.get("weight_decay", 0)) for g in sparse.param_groups] == [(0.0123, 0)]
    tables = [id(t.weight) for t in net.token_tables]
    assert sorted(param_ids(sparse)) == sorted(tables)
    assert sorted(param_ids(dense)) == sorted(id(p) for p in net.parameters() if id(p) not in tables)


@pytest.mark.parametrize("name", sorted(DENSE_OPTIMIZERS))
def test_fit_steps_the_named_optimizer_once_per_mini_batch(name):
    train = pairs(100)
    model = Object2Vec(
        {**SMALL, "optimizer": name, "learning_rate": 0.0321, "mini_batch_size": 16, "epochs": 2}
    )
    with StepRecorder() as steps:
        model.fit(train, seed=0, log=lambda _: None)
    assert len(steps.optimizers) == 2 * math.ceil(100 / 16)  # epochs x mini-batches
    assert {type(o) for o in steps.optimizers} == {DENSE_OPTIMIZERS[name]}
    assert {g["lr"] for o in steps.optimizers for g in o.param_groups} == {0.0321}


# --- the network the hyperparameters describe ---------------------------------------------------

ACTIVATIONS = {
    "tanh": (nn.Tanh, torch.tanh),
    "relu": (nn.ReLU, torch.relu),
    "linear": (nn.Identity, lambda x: x),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_activation_builds_that_activation_after_every_hidden_layer(activation):
    module, function = ACTIVATIONS[activation]
    net, _ = small_net(mlp_layers=2, mlp_dim=6, mlp_activation=activation, comparator_list="hadamard")
    net.eval()
    linears = [m for m in net.mlp if isinstance(m, nn.Linear)]
    activations = [m for m in net.mlp if not isinstance(m, (nn.Linear, nn.Dropout))]
    assert len(linears) == 2 and [type(m) for m in activations] == [module, module]
    x = torch.randn(7, 8) * 3
    with torch.no_grad():
        torch.testing.assert_close(net.mlp(x), function(linears[1](function(linears[0](x)))))


def test_sizes_follow_their_hyperparameters():
    net, _ = small_net(
        enc0_token_embedding_dim=16,
        enc1_token_embedding_dim=8,
        enc1_network="pooled_embedding",
        enc_dim=12,
        mlp_layers=3,
        mlp_dim=20,
        num_classes=4,
        comparator_list="concat, hadamard",
    )
    assert net.encoder(0).embedding.weight.shape == (50, 16) and net.encoder(1).embedding.weight.shape == (
        60,
        8,
    )
    ids, lengths = torch.tensor([[3]]), torch.tensor([1])
    assert net.encode(0, ids, lengths).shape == net.encode(1, ids, lengths).shape == (1, 12)
    linears = [(m.in_features, m.out_features) for m in net.mlp if isinstance(m, nn.Linear)]
    assert linears == [(3 * 12, 20), (20, 20), (20, 20)]
    assert (net.head.in_features, net.head.out_features) == (20, 4)
    no_mlp, _ = small_net(mlp_layers=0, output_layer="mean_squared_error", comparator_list="abs_diff")
    assert not any(isinstance(m, nn.Linear) for m in no_mlp.mlp)
    assert (no_mlp.head.in_features, no_mlp.head.out_features) == (8, 1)


# --- epochs, early stopping and the regression head's start ------------------------------------


def test_without_validation_every_epoch_runs():
    """Early stopping watches the validation loss: without a validation channel all epochs run,
    however impatient the settings."""
    lines: list[str] = []
    model = Object2Vec(
        {**SMALL, "epochs": 4, "early_stopping_patience": 1, "early_stopping_tolerance": 0.1}
    ).fit(pairs(64), seed=0, log=lines.append)
    assert [h["epoch"] for h in model.result.history] == [1, 2, 3, 4]
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/4", "2/4", "3/4", "4/4"]
    assert model.result.best_epoch == 4 and not any("early stopping" in line for line in lines)
    assert model.metrics == {}


@pytest.mark.parametrize("output", ["mean_squared_error", "softmax"])
def test_a_regression_head_starts_at_the_mean_training_label(output):
    regression = output == "mean_squared_error"
    records = latent_pairs(96, latent_dim=2, seed=1, task="regression" if regression else "binary")
    if regression:
        for r in records:
            r["label"] += 5.0  # far from the zero a default bias starts at
    train = PairDataset.from_records(records, regression)
    model = Object2Vec({**SMALL, "output_layer": output, "epochs": 1})
    start = []  # the head's bias when the first optimizer step is about to change it

    def record(*_):
        if not start:
            start.append(model.net.head.bias.detach().clone())

    handle = register_optimizer_step_pre_hook(record)
    try:
        model.fit(train, seed=0, log=lambda _: None)
    finally:
        handle.remove()
    assert start
    if regression:
        assert start[0].item() == pytest.approx(float(np.mean(train.labels)), rel=1e-6)
        assert abs(start[0].item() - 5.0) < 0.5
    else:  # class logits keep their initialisation: a bias no larger than 1/sqrt(fan_in)
        assert start[0].abs().max().item() <= 1 / math.sqrt(model.net.head.in_features)


# --- seeds, losses, the ranking of epochs, early stopping ---------------------------------------


def test_seed_everything_seeds_torch_and_returns_a_seeded_generator():
    draws = []
    for seed in (5, 5, None, None):
        rng = seed_everything(seed)
        draws.append((torch.rand(3).tolist(), rng.random(3).tolist()))
    assert draws[0] == draws[1]  # the same seed, the same torch and numpy draws
    assert draws[2][1] != draws[3][1]  # no seed: a fresh generator each time
    assert draws[2][0] != draws[0][0] or draws[3][0] != draws[0][0]


def test_batch_loss_is_the_outputs_loss_on_the_true_lengths():
    """Multi-token inputs, so the lengths matter (padding positions hold junk IDs)."""
    net, hp = small_net(enc0_max_seq_len=4, enc1_max_seq_len=4)
    in0, in1 = torch.tensor([[3, 4, 9, 9], [5, 9, 9, 9]]), torch.tensor([[7, 8, 8, 8], [1, 2, 3, 8]])
    len0, len1 = torch.tensor([2, 1]), torch.tensor([1, 4])
    batch = Batch(in0, len0, in1, len1, torch.tensor([1, 0]))
    expected = F.cross_entropy(net(in0, len0, in1, len1), batch.labels)
    torch.testing.assert_close(batch_loss(net, batch, regression=False), expected)
    assert not torch.allclose(
        expected, F.cross_entropy(net(in0, torch.tensor([4, 4]), in1, len1), batch.labels)
    )
    regressor, _ = small_net(enc0_max_seq_len=4, enc1_max_seq_len=4, output_layer="mean_squared_error")
    values = Batch(in0, len0, in1, len1, torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(
        batch_loss(regressor, values, regression=True),
        F.mse_loss(regressor(in0, len0, in1, len1), values.labels),
    )


def test_validation_loss_and_the_objective_that_ranks_epochs():
    assert validation_loss({"mean_squared_error": 0.25}) == 0.25
    assert validation_loss({"accuracy": 0.9, "cross_entropy": 0.3}) == 0.3
    assert math.isnan(validation_loss({}))
    better, worse = {"accuracy": 0.9, "cross_entropy": 0.5}, {"accuracy": 0.8, "cross_entropy": 0.1}
    assert objective(better) < objective(worse)  # accuracy first ...
    assert objective({"accuracy": 0.9, "cross_entropy": 0.4}) < objective(better)  # ... ties: cross-entropy
    assert objective({"mean_squared_error": 0.2}) < objective({"mean_squared_error": 0.3})


def test_early_stopping_needs_an_improvement_of_tolerance_within_patience_epochs():
    net, _ = small_net()
    stopper = EarlyStopping(patience=2, tolerance=0.5)
    # loss 1.0 sets the reference; 0.5 is not *more* than 0.5 better; 0.25 is; then two stale epochs
    decisions = [
        stopper.update(epoch, {"mean_squared_error": loss}, net)
        for epoch, loss in enumerate([1.0, 0.5, 0.25, 0.0, 0.1], start=1)
    ]
    assert decisions == [False, False, False, False, True]
    assert stopper.best_epoch == 4  # the lowest loss, even though it was not a big enough improvement
    patient = EarlyStopping(patience=3, tolerance=0.5)
    assert [patient.update(e, {"mean_squared_error": 1.0}, net) for e in (1, 2, 3, 4)] == [
        False,
        False,
        False,
        True,
    ]


def test_early_stopping_keeps_the_first_of_equal_epochs_and_a_copy_of_its_weights():
    net, _ = small_net()
    stopper = EarlyStopping(patience=5, tolerance=0.001)
    metrics = {"accuracy": 0.75, "cross_entropy": 0.5}
    stopper.update(1, metrics, net)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.head.bias.add_(1.0)
    stopper.update(2, dict(metrics), net)  # as good, not better: the first stays the best
    assert stopper.best_epoch == 1
    assert all(torch.equal(stopper.best_state[k], kept[k]) for k in kept)


# --- one epoch ----------------------------------------------------------------------------------


class Recorder(nn.Module):
    """The network, recording the inputs of every batch it is asked about."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, in0, len0, in1, len1):
        self.batches.append((in0[:, 0].tolist(), len0.tolist()))
        return self.net(in0, len0, in1, len1)


def test_train_epoch_returns_the_mean_loss_over_samples_and_their_count():
    """No optimizer: the weights stay put, so the epoch's sample-weighted mean loss is the loss
    over the whole set, whatever the batches were."""
    for output, task in (("softmax", "binary"), ("mean_squared_error", "regression")):
        net, hp = small_net(output_layer=output)
        data = pairs(70, task=task)  # batches of 32, 32, 6
        loss, seen = train_epoch(net, [], data, hp, np.random.default_rng(0), "cpu")
        batch = next(iterate_batches(data, 70))
        expected = batch_loss(net, batch, net.regression).item()
        assert seen == 70 and loss == pytest.approx(expected, rel=1e-5)
        one, count = train_epoch(net, [], data.subset(np.array([4])), hp, np.random.default_rng(0), "cpu")
        assert count == 1 and one == pytest.approx(
            batch_loss(net, next(iterate_batches(data.subset(np.array([4])), 1)), net.regression).item(),
            rel=1e-5,
        )


def test_train_epoch_shuffles_with_the_given_generator_and_stops_at_max_batches():
    net, hp = small_net()
    data = PairDataset.from_sequences([[i] for i in range(1, 49)], [[1]] * 48, [0, 1] * 24)
    orders = []
    for seed in (0, 0, 1):
        model = Recorder(net)
        train_epoch(net, [], data, hp, np.random.default_rng(seed), "cpu", model=model)
        orders.append([token for ids, _ in model.batches for token in ids])
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == list(range(1, 49)) and orders[0] != list(range(1, 49))
    model = Recorder(net)
    assert (
        train_epoch(net, [], data, hp, np.random.default_rng(0), "cpu", model=model, max_batches=1)[1] == 32
    )
    assert len(model.batches) == 1


def test_train_epoch_makes_the_negatives_and_buckets_its_hyperparameters_ask_for():
    net, hp = small_net(enc0_max_seq_len=30, negative_sampling_rate=2, bucket_width=3)
    records = latent_pairs(60, max_len0=30, latent_dim=2, seed=1)
    data = PairDataset.from_records(records)
    model = Recorder(net)
    _, seen = train_epoch(net, [], data, hp, np.random.default_rng(0), "cpu", model=model)
    assert seen == epoch_size(data, 2) == 60 + 2 * int((data.labels != 0).sum())
    assert all(max(lengths) - min(lengths) < 3 for _, lengths in model.batches)


# --- what fit reports ---------------------------------------------------------------------------


def test_fit_reports_each_epoch_the_best_one_and_the_final_metrics(monkeypatch):
    sized = []

    class SizedAverage(WeightAverage):
        def __init__(self, net, hp, steps_per_epoch):
            sized.append(steps_per_epoch)
            super().__init__(net, hp, steps_per_epoch)

    monkeypatch.setattr(fit_module, "WeightAverage", SizedAverage)
    lines: list[str] = []
    train, validation, test = pairs(64), pairs(40, seed=2), pairs(30, seed=3)
    model = Object2Vec({**SMALL, "epochs": 2, "negative_sampling_rate": 1, "mini_batch_size": 16})
    started = time.perf_counter()
    model.fit(train, validation, test, seed=0, log=lines.append)
    wall = time.perf_counter() - started
    result, samples = model.result, epoch_size(train, 1)
    assert sized == [math.ceil(samples / 16)]  # the average spans the epoch's steps, negatives included
    assert [set(h) for h in result.history] == [
        {"epoch", "train:loss", "samples_per_second", "validation:accuracy", "validation:cross_entropy"}
    ] * 2
    for record in result.history:
        assert record["train:loss"] > 0 and record["samples_per_second"] >= samples / wall
    assert 0 < result.seconds <= wall
    assert result.samples_per_second == pytest.approx(2 * samples / result.seconds, rel=1e-9)
    starts = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(starts) == 2
    for start, record in zip(starts, result.history):  # a compact line, then one line per metric
        assert (
            lines[start] == f"epoch {record['epoch']}/2 samples_per_second={record['samples_per_second']:.6g}"
        )
        following = dict(line.split("=") for line in lines[start + 1 : start + 4])
        assert list(following) == ["train:loss", "validation:accuracy", "validation:cross_entropy"]
        assert float(following["train:loss"]) == pytest.approx(record["train:loss"], rel=1e-5)
    assert f"restored the best epoch ({result.best_epoch})" in lines
    assert set(model.metrics) == {
        f"{c}:{m}" for c in ("validation", "test") for m in ("accuracy", "cross_entropy")
    }
    assert lines[-4:] == [f"{name}={value:.6g}" for name, value in model.metrics.items()]


def test_fit_stops_early_when_the_validation_loss_stalls():
    lines: list[str] = []
    hp = {
        **SMALL,
        "epochs": 6,
        "learning_rate": 1e-6,
        "early_stopping_patience": 1,
        "early_stopping_tolerance": 0.1,
    }
    model = Object2Vec(hp).fit(pairs(64), pairs(40, seed=2), seed=0, log=lines.append)
    assert (
        len(model.result.history) == 2
        and "early stopping after epoch 2: no improvement of 0.1 in 1 epochs" in lines
    )


def test_the_same_seed_gives_the_same_weights():
    runs = []
    for _ in range(2):
        model = Object2Vec({**SMALL, "epochs": 1, "dropout": 0.3, "negative_sampling_rate": 1}).fit(
            pairs(64), seed=11, log=lambda _: None
        )
        runs.append(model.net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize(
    "progress, terminal, shown",
    [(True, False, True), (False, True, False), (None, True, True), (None, False, False)],
)
def test_the_progress_bar_follows_the_setting_else_the_terminal(
    capsys, monkeypatch, progress, terminal, shown
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    bars, make_bar = [], fit_module._progress
    monkeypatch.setattr(fit_module, "_progress", lambda *args: bars.append(make_bar(*args)) or bars[-1])
    model = Object2Vec({**SMALL, "epochs": 1, "mini_batch_size": 16}).fit(
        pairs(64), seed=0, log=lambda _: None, progress=progress
    )
    err = capsys.readouterr().err
    if shown:
        assert "epoch 1/1" in err
        assert (bars[0].total, bars[0].n) == (64, 64)  # the bar counted every sample of the epoch
        assert bars[0].postfix == f"loss={model.result.history[0]['train:loss']:.4f}"  # the epoch's mean loss
    else:
        assert bars == [None] and err == ""
