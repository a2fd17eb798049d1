"""Bucketing: every record once per epoch, similar lengths per batch, same results either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from object2vec import Object2Vec
from object2vec.sample_data import latent_pairs
from object2vec.training.data import PairDataset, batch_order, iterate_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dataset(n: int = 300, seed: int = 0) -> PairDataset:
    records = latent_pairs(n, vocab0=40, vocab1=40, max_len0=30, max_len1=12, seed=seed)
    return PairDataset.from_records(records)


@pytest.mark.parametrize("width", [1, 3, 10])
def test_buckets_cover_every_record_once_within_width(width):
    data = dataset()
    len0, len1 = data.in0.lengths, data.in1.lengths
    batches = batch_order(len0, len1, 16, width, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(data)))
    assert all(len(b) <= 16 for b in batches)
    for b in batches:
        assert len0[b].max() - len0[b].min() < width and len1[b].max() - len1[b].min() < width


def test_bucketing_cuts_padding():
    data = dataset()

    def padded_tokens(width):
        return sum(
            b.in0.numel() + b.in1.numel()
            for b in iterate_batches(data, 16, shuffle=True, bucket_width=width, rng=np.random.default_rng(0))
        )

    real = int(data.in0.lengths.sum() + data.in1.lengths.sum())
    assert padded_tokens(2) < 0.6 * padded_tokens(0) and padded_tokens(1) == real


@pytest.mark.parametrize("network", ["pooled_embedding", "hcnn", "bilstm"])
def test_trained_model_scores_the_same_whatever_the_batch(network):
    data = dataset(200)
    model = Object2Vec(
        enc0_network=network,
        enc0_max_seq_len=30,
        enc1_max_seq_len=12,
        enc0_vocab_size=40,
        enc0_token_embedding_dim=8,
        enc_dim=8,
        mlp_layers=1,
        mlp_dim=8,
        epochs=1,
        bucket_width=3,
    )
    model.fit(data, seed=0, log=lambda _: None)
    in0 = [data.in0.get(i).tolist() for i in range(len(data))]
    in1 = [data.in1.get(i).tolist() for i in range(len(data))]
    together = model.predict(in0, in1)
    one_by_one = np.concatenate([model.predict([a], [b]) for a, b in zip(in0[:20], in1[:20])])
    assert np.allclose(together[:20], one_by_one, atol=1e-5)
    net = model.net.eval()
    with torch.inference_mode():
        for width in (0, 2):
            for batch in iterate_batches(
                data, 7, shuffle=True, bucket_width=width, rng=np.random.default_rng(1)
            ):
                scores = net.scores(batch.in0, batch.len0, batch.in1, batch.len1).numpy()
                rows = [
                    next(
                        i
                        for i in range(len(data))
                        if in0[i] == batch.in0[k, : batch.len0[k]].tolist()
                        and in1[i] == batch.in1[k, : batch.len1[k]].tolist()
                    )
                    for k in range(len(batch))
                ]
                assert np.allclose(scores, together[rows], atol=1e-5)
