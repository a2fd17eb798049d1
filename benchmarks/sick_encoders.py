"""One encoder or two on SICK: the experiments behind the README's "Why two encoders fail".

The reference settings of ``sick.py --reference-settings`` (entailment), with one change to the
network or the data per variant, and a per-epoch diagnosis printed after each training epoch:

* ``train_acc``: accuracy on the training pairs (eval mode, the raw weights);
* ``trial_acc``: the trial accuracy that early stopping sees (the averaged weights);
* ``agree``: mean cosine similarity of enc0(s) and enc1(s) over the trial sentences s, the
  same sentence through both encoders (1 while the two encoders compute the same function);
* ``self_diff``: mean |enc0(s) - enc1(s)| relative to mean |enc0(s)| (0 when they agree).

Variants (``--variant``):

* ``separate``: the reference's two encoders (enc1 starts as a copy of enc0 through the tied
  token table, then trains apart); ``tied``: one shared encoder (``tied_encoder_weight=True``);
* ``independent``: two encoders, enc1 started from its own random draw (no copy of enc0);
* ``share_body``: two encoders sharing everything but the final linear map to ``enc_dim``;
* ``share_project``: two encoders sharing only that final linear map (and the token table);
* ``hypothesis_only`` / ``premise_only``: the other sentence replaced by ``<unk>`` (what one
  side alone predicts);
* ``split_after_one_epoch``: one shared encoder for the first epoch, then two (enc1 a copy of
  the trained enc0, its own weights from then on; optimizer and early stopping start afresh);
* ``sentence_ids``: every distinct sentence replaced by one ID (an ID table, as for users and
  movies): what memorising which sentence is which can reach, with nothing about words.

``--trace-steps K`` instead follows the first epoch step by step (the fit loop's batches,
optimizer and loss, without weight averaging), printing ``agree`` every K steps.

    python benchmarks/sick_encoders.py [../shared/data/sick] --encoder bilstm --variant separate
        [--seed 0] [--set name=value ...] [--trace-steps 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from overrides import add_set_option, parse_overrides
from sick import hyperparameters, pairs, read_sick

from object2vec.columns import SequenceColumn
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.text import build_vocab, encode
from object2vec.training import PairDataset, build_network, fit, seed_everything
from object2vec.training.data import iterate_batches
from object2vec.training.fit import batch_loss, evaluate, make_optimizers

VARIANTS = (
    "separate",
    "tied",
    "independent",
    "share_body",
    "share_project",
    "hypothesis_only",
    "premise_only",
    "sentence_ids",
    "split_after_one_epoch",
)


def network_settings(variant: str) -> dict[str, str]:
    return {"tied_encoder_weight": "True" if variant == "tied" else "False"}


def share(net, variant: str, seed: int) -> None:
    """Rewire enc1 for the variants that differ from the two ordinary networks."""
    first, second = net.encoders[0], net.encoders[1] if len(net.encoders) > 1 else None
    if variant == "independent":
        torch.manual_seed(seed + 1000)
        for module in second.modules():
            if module is not second.embedding and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    elif variant == "share_body":
        for name, _ in list(second.named_children()):
            if name not in ("project", "embedding"):
                setattr(second, name, getattr(first, name))
    elif variant == "share_project":
        second.project = first.project


def split_after_one_epoch(hp, train: PairDataset, trial: PairDataset, seed: int, log):
    """Train one shared encoder for an epoch, then return the two-encoder network started from it."""
    shared_hp = hp.replace(tied_encoder_weight=True, epochs=1)
    seed_everything(seed)
    shared, _ = build_network(shared_hp, None, print)
    fit(shared, shared_hp, train, trial, seed=seed, log=log, progress=False)
    net, _ = build_network(hp, None, print)
    state = shared.state_dict()
    state.update(
        {"encoders.1." + k[len("encoders.0.") :]: v for k, v in state.items() if k.startswith("encoders.0.")}
    )
    net.load_state_dict(state)
    return net


def sentence_id_pairs(rows: list[dict], ids: dict[str, int], task: str) -> PairDataset:
    data = pairs(rows, {"<unk>": 1}, task, swap=False)  # labels only
    column = lambda key: SequenceColumn.from_lists([[ids[r[key]]] for r in rows])  # noqa: E731
    return PairDataset(column("sentence_A"), column("sentence_B"), data.labels, task)


def one_side(data: PairDataset, keep: int) -> PairDataset:
    blank = SequenceColumn.from_lists([[1]] * len(data))
    return PairDataset(
        data.in0 if keep == 0 else blank, data.in1 if keep == 1 else blank, data.labels, data.source
    )


def datasets(variant: str, train_rows, trial_rows, vocab: dict, task: str) -> tuple[PairDataset, PairDataset]:
    if variant == "sentence_ids":
        sentences = sorted({r[k] for r in train_rows + trial_rows for k in ("sentence_A", "sentence_B")})
        ids = {s: i + 2 for i, s in enumerate(sentences)}  # 0 padding, 1 unused
        return sentence_id_pairs(train_rows, ids, task), sentence_id_pairs(trial_rows, ids, task)
    train, trial = pairs(train_rows, vocab, task, swap=False), pairs(trial_rows, vocab, task, swap=False)
    if variant in ("hypothesis_only", "premise_only"):
        keep = 1 if variant == "hypothesis_only" else 0
        return one_side(train, keep), one_side(trial, keep)
    return train, trial


@torch.no_grad()
def agreement(net, sentences: SequenceColumn) -> tuple[float, float]:
    """Mean cosine of enc0(s) and enc1(s), and mean |enc0(s) - enc1(s)| / mean |enc0(s)|."""
    was_training = net.training
    net.eval()
    ids, lengths = sentences.padded(np.arange(len(sentences)))
    a, b = net.encode(0, ids, lengths), net.encode(1, ids, lengths)
    net.train(was_training)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
    return cosine, ((a - b).abs().mean() / a.abs().mean()).item()


def trace_first_epoch(net, hp, train: PairDataset, sentences: SequenceColumn, seed: int, every: int) -> None:
    """One epoch as the fit loop runs it, with ``agree`` every ``every`` steps."""
    rng = seed_everything(seed)
    optimizers = make_optimizers(net, hp)
    net.train()
    print(f"step 0 agree={agreement(net, sentences)[0]:.3f}", flush=True)
    losses = []
    for step, batch in enumerate(iterate_batches(train, hp.mini_batch_size, shuffle=True, rng=rng), start=1):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = batch_loss(net, batch, net.regression)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
        if step % every == 0:
            cosine, diff = agreement(net, sentences)
            print(
                f"step {step} train_loss(last {every})={np.mean(losses[-every:]):.4f} agree={cosine:.3f} "
                f"self_diff={diff:.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", nargs="?", default=str(Path(__file__).resolve().parents[1] / ".." / "shared/data/sick")
    )
    parser.add_argument("--encoder", default="bilstm")
    parser.add_argument("--variant", choices=VARIANTS, default="separate")
    parser.add_argument("--task", default="entailment", choices=("entailment", "relatedness"))
    parser.add_argument("--seed", type=int, default=0)
    add_set_option(parser)
    parser.add_argument("--trace-steps", type=int, default=0, help="follow the first epoch, every K steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_rows = read_sick(Path(args.data) / "sick_train.tsv")
    trial_rows = read_sick(Path(args.data) / "sick_trial.tsv")
    vocab = build_vocab(t for r in train_rows for t in (r["sentence_A"], r["sentence_B"]))
    train, trial = datasets(args.variant, train_rows, trial_rows, vocab, args.task)
    settings = hyperparameters(
        args.encoder,
        args.task,
        len(vocab),
        True,
        False,
        {**network_settings(args.variant), **parse_overrides(args.set)},
    )
    if args.variant == "sentence_ids":
        vocab_size = (
            int(
                max(
                    train.in0.tokens.max(),
                    train.in1.tokens.max(),
                    trial.in0.tokens.max(),
                    trial.in1.tokens.max(),
                )
            )
            + 1
        )
        settings.update(
            {
                "enc0_network": "pooled_embedding",
                "enc0_max_seq_len": "1",
                "enc1_max_seq_len": "1",
                "enc0_vocab_size": str(vocab_size),
            }
        )
    hp = parse_hyperparameters(settings)
    sentences = SequenceColumn.from_lists(
        [encode(r[k], vocab) for r in trial_rows for k in ("sentence_A", "sentence_B")]
    )
    seed_everything(args.seed)  # as Object2Vec.fit: the initial weights depend on the seed
    net, _ = build_network(hp, None, print)
    share(net, args.variant, args.seed)
    if args.variant == "split_after_one_epoch":
        net = split_after_one_epoch(hp, train, trial, args.seed, print)
        hp = hp.replace(epochs=hp.epochs - 1)
    print(
        f"variant {args.variant}, encoder {args.encoder}, seed {args.seed}, "
        f"{sum(p.numel() for p in net.parameters())} parameters",
        flush=True,
    )
    if args.trace_steps:
        trace_first_epoch(net, hp, train, sentences, args.seed, args.trace_steps)
        return

    epoch: dict[str, str] = {}

    def diagnose(line: str) -> None:
        """fit logs ``epoch N/M ...`` then one ``channel:metric=value`` line per metric; the
        epoch's last one (``validation:cross_entropy``) prints the diagnosis."""
        name, _, value = line.partition("=")
        if line.startswith("epoch ") and "/" in line.split()[1]:
            epoch.update(number=line.split()[1])
        elif "number" in epoch and name in ("train:loss", "validation:accuracy"):
            epoch[name] = value
        elif "number" in epoch and name == "validation:cross_entropy":
            train_acc = evaluate(net, train, torch.device("cpu")).get("accuracy", float("nan"))
            agree = agreement(net, sentences) if args.variant != "sentence_ids" else (float("nan"),) * 2
            print(
                f"{epoch.pop('number')} train_loss={epoch.pop('train:loss')} train_acc={train_acc:.3f} "
                f"trial_acc={epoch.pop('validation:accuracy')} agree={agree[0]:.3f} self_diff={agree[1]:.3f}",
                flush=True,
            )
        elif "number" not in epoch:
            print(line, flush=True)

    result = fit(net, hp, train, trial, seed=args.seed, log=diagnose, progress=False)
    print(
        f"RESULT variant={args.variant} encoder={args.encoder} seed={args.seed} "
        f"{' '.join(f'{k}={v:.4f}' for k, v in result.metrics.items())} best_epoch={result.best_epoch}"
    )


if __name__ == "__main__":
    main()
