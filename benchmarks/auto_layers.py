"""``encX_layers=auto``: our depth rule against the one a secondary source gives the reference.

Ours (``object2vec.nn.encoders.auto_layers``): hcnn, the fewest layers whose receptive field
covers ``max_seq_len`` (3 layers up to 15 tokens, 4 beyond); bilstm, 1 layer up to 64 tokens
and 2 beyond. The secondary source: 4 layers for hcnn and 1 for bilstm, always. The two differ
only for hcnn on inputs of at most 15 tokens and bilstm on inputs longer than 64, so this runs
SICK entailment (``benchmarks/sick.py``'s settings, one shared encoder, seed 0) exactly there:
hcnn with ``enc0_max_seq_len`` 15 and bilstm with ``enc0_max_seq_len`` 80, each with ``auto``
and with the other rule's depth.

    python benchmarks/auto_layers.py [../shared/data/sick] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sick  # noqa: E402

from object2vec.nn.encoders import auto_layers  # noqa: E402
from object2vec.text import build_vocab  # noqa: E402

#: (encoder, max_seq_len, the secondary source's depth)
CASES = (("hcnn", 15, 4), ("bilstm", 80, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/sick")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_rows = sick.read_sick(Path(args.data) / "sick_train.tsv")
    trial_rows = sick.read_sick(Path(args.data) / "sick_trial.tsv")
    vocab = build_vocab(t for r in train_rows for t in (r["sentence_A"], r["sentence_B"]))
    print("| encoder | enc0_max_seq_len | layers | rule | trial accuracy | train s |")
    print("|---|---:|---:|---|---:|---:|")
    for encoder, max_len, theirs in CASES:
        ours = auto_layers(encoder, max_len, int(sick.PER_ENCODER[encoder].get("enc0_cnn_filter_width", 3)))
        sick.COMMON["enc0_max_seq_len"] = str(max_len)
        for layers, rule in ((ours, "ours (auto)"), (theirs, "secondary source")):
            sick.PER_ENCODER[encoder]["enc0_layers"] = "auto" if rule.startswith("ours") else str(layers)
            model, seconds, _ = sick.train(encoder, "entailment", vocab, train_rows, trial_rows, args.seed)
            accuracy = model.metrics["validation:accuracy"]
            print(
                f"| {encoder} | {max_len} | {layers} | {rule} | {accuracy:.3f} | {seconds:.0f} |", flush=True
            )


if __name__ == "__main__":
    main()
