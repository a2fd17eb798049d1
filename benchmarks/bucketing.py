"""What ``bucket_width`` saves on variable-length inputs: padding fraction and time per epoch.

Synthetic pairs whose in0 and in1 lengths are uniform in ``[5, 200]`` tokens (the spread of
sentence/document data). For ``bucket_width`` 0 (off) and 10, and for hcnn and bilstm, it prints
the share of padded positions in the mini-batches, one training epoch's wall time and one
inference pass's wall time (same model, same records).

    python benchmarks/bucketing.py [--records 2000] [--encoders hcnn,bilstm] [--widths 0,10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from object2vec import Object2Vec
from object2vec.sample_data import latent_pairs
from object2vec.training.data import PairDataset, batch_order, iterate_batches


def variable_length_pairs(
    n: int, min_len: int, max_len: int, in1_max_len: int, vocab: int, seed: int
) -> PairDataset:
    """Learnable pairs (latent dot-product labels); in0 lengths uniform in ``[min_len, max_len]``,
    in1 lengths in ``[min(min_len, in1_max_len), in1_max_len]``."""
    records = latent_pairs(n, vocab0=vocab, vocab1=vocab, max_len0=max_len, max_len1=in1_max_len, seed=seed)
    rng = np.random.default_rng(seed + 1)

    def lengthen(seq: list[int], shortest: int) -> list[int]:
        return seq + rng.integers(1, vocab, size=max(0, shortest - len(seq))).tolist()

    in0 = [lengthen(r["in0"], min_len) for r in records]
    in1 = [lengthen(r["in1"], min(min_len, in1_max_len)) for r in records]
    return PairDataset.from_sequences(in0, in1, [r["label"] for r in records])


def padding_fraction(data: PairDataset, batch_size: int, bucket_width: int, seed: int) -> tuple[float, int]:
    """Padded positions / all positions over one shuffled epoch's batches (in0 and in1
    together), and the number of batches (buckets split batches, so there can be more)."""
    lengths0, lengths1 = data.in0.lengths, data.in1.lengths
    batches = batch_order(lengths0, lengths1, batch_size, bucket_width, np.random.default_rng(seed))
    padded = real = 0
    for positions in batches:
        for lengths in (lengths0[positions], lengths1[positions]):
            padded += int(lengths.max()) * len(lengths)
            real += int(lengths.sum())
    return 1 - real / padded, len(batches)


@torch.inference_mode()
def inference_seconds(model: Object2Vec, data: PairDataset, batch_size: int, bucket_width: int) -> float:
    net = model.net.eval()
    started = time.perf_counter()
    for batch in iterate_batches(data, batch_size, bucket_width=bucket_width):
        net.scores(batch.in0, batch.len0, batch.in1, batch.len1)
    return time.perf_counter() - started


def measure(network: str, bucket_width: int, data: PairDataset, args) -> dict:
    model = Object2Vec(
        enc0_network=network,
        enc1_network="enc0",
        enc0_max_seq_len=args.max_len,
        enc0_vocab_size=args.vocab,
        enc0_token_embedding_dim=args.dim,
        enc_dim=args.dim,
        mlp_layers=1,
        mlp_dim=args.dim,
        epochs=args.epochs,
        mini_batch_size=args.batch,
        bucket_width=bucket_width,
        learning_rate=0.003,
    )
    model.fit(data, seed=0, log=lambda *_: None, progress=False)
    padding, batches = padding_fraction(data, args.batch, bucket_width, seed=0)
    return {
        "network": network,
        "bucket_width": bucket_width,
        "padding": padding,
        "batches": batches,
        "train_epoch_s": model.result.seconds / len(model.result.history),
        "train_samples_s": model.result.samples_per_second,
        "infer_s": inference_seconds(model, data, args.batch, bucket_width),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--min-len", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument(
        "--in1-max-lens",
        default="200,5",
        help="one run per value: in1 as long as in0 (both vary) or short (a label/query)",
    )
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--encoders", default="hcnn,bilstm")
    parser.add_argument("--widths", default="0,10")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.records} pairs, in0 lengths {args.min_len}..{args.max_len}, dim {args.dim}, "
        f"batch {args.batch}, {args.threads} thread(s)"
    )
    print(
        "| in1 lengths | encoder | bucket_width | batches | padding | train s/epoch | train samples/s "
        "| inference s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for in1_max in (int(n) for n in args.in1_max_lens.split(",")):
        data = variable_length_pairs(args.records, args.min_len, args.max_len, in1_max, args.vocab, seed=0)
        for network in args.encoders.split(","):
            for width in (int(w) for w in args.widths.split(",")):
                r = measure(network, width, data, args)
                print(
                    f"| {min(args.min_len, in1_max)}..{in1_max} | {network} | {width} | {r['batches']} | "
                    f"{r['padding']:.1%} | {r['train_epoch_s']:.1f} | {r['train_samples_s']:.0f} | "
                    f"{r['infer_s']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
