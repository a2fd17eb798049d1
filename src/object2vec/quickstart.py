"""The built-in default job: train on the bundled sample, save, reload, embed and score.

``object2vec quickstart`` runs it; it is also the README's first command, so a new user sees the
whole cycle in under a minute on a laptop CPU.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .api import Object2Vec, load
from .training import Logger

#: A user/item "likes" task (100 users, 200 items): in0 = [user id], in1 = [item id], label 1 = likes.
SAMPLE_HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding", "enc0_max_seq_len": "1", "enc0_vocab_size": "101",
    "enc1_max_seq_len": "1", "enc1_vocab_size": "201", "enc0_token_embedding_dim": "32",
    "enc_dim": "64", "mlp_layers": "1", "mlp_dim": "64", "mlp_activation": "relu",
    "output_layer": "softmax", "num_classes": "2", "optimizer": "adam", "learning_rate": "0.003",
    "mini_batch_size": "64", "epochs": "15", "early_stopping_patience": "3",
    "early_stopping_tolerance": "0.001", "weight_decay": "0.00001",
}


def sample_path(name: str) -> Path:
    return Path(str(resources.files("object2vec") / "sample_data" / name))


def run(model_dir: str | Path = "quickstart-model", seed: int = 0, log: Logger = print) -> dict:
    """Train, save, reload and use the sample model; returns the validation metrics."""
    log(f"training on the bundled sample ({sample_path('train.jsonl')})")
    model = Object2Vec(SAMPLE_HYPERPARAMETERS).fit(
        sample_path("train.jsonl"), validation=sample_path("validation.jsonl"), seed=seed, log=log)
    saved = model.save(model_dir)
    log(f"saved the model to {saved}/")
    reloaded = load(saved)
    items = reloaded.embed(in1=[[1], [2], [3]])
    log(f"item embeddings: shape {items.shape}, first values {[round(float(v), 4) for v in items[0, :4]]}")
    scores = reloaded.predict(in0=[[1], [2]], in1=[[1], [2]])
    log(f"pair scores (P(dislike), P(like)): {[[round(float(v), 4) for v in row] for row in scores]}")
    return model.metrics
