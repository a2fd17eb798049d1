"""The built-in default job: train on the bundled sample, save, reload, embed and score, then
serve the model over HTTP and send it the reference's two kinds of request.

``object2vec quickstart`` runs it; it is also the README's first command, so a new user sees the
whole cycle in under a minute on a laptop CPU.
"""

from __future__ import annotations

import urllib.request
from importlib import resources
from pathlib import Path

from .api import Object2Vec, load
from .runtime import Logger
from .serving import server
from .serving.settings import ServeSettings

#: A user/item "likes" task (100 users, 200 items): in0 = [user id], in1 = [item id], label 1 = likes.
SAMPLE_HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "1",
    "enc0_vocab_size": "101",
    "enc1_max_seq_len": "1",
    "enc1_vocab_size": "201",
    "enc0_token_embedding_dim": "32",
    "enc_dim": "64",
    "mlp_layers": "1",
    "mlp_dim": "64",
    "mlp_activation": "relu",
    "output_layer": "softmax",
    "num_classes": "2",
    "optimizer": "adam",
    "learning_rate": "0.003",
    "mini_batch_size": "64",
    "epochs": "15",
    "early_stopping_patience": "3",
    "early_stopping_tolerance": "0.001",
    "weight_decay": "0.00001",
}


def sample_path(name: str) -> Path:
    return Path(str(resources.files("object2vec") / "sample_data" / name))


def run(model_dir: str | Path = "quickstart-model", seed: int = 0, log: Logger = print) -> dict:
    """Train, save, reload and use the sample model; returns the validation metrics."""
    log(f"training on the bundled sample ({sample_path('train.jsonl')})")
    model = Object2Vec(SAMPLE_HYPERPARAMETERS).fit(
        sample_path("train.jsonl"), validation=sample_path("validation.jsonl"), seed=seed, log=log
    )
    saved = model.save(model_dir)
    log(f"saved the model to {saved}/")
    reloaded = load(saved)
    items = reloaded.embed(in1=[[1], [2], [3]])
    log(f"item embeddings: shape {items.shape}, first values {[round(float(v), 4) for v in items[0, :4]]}")
    scores = reloaded.predict(in0=[[1], [2]], in1=[[1], [2]])
    log(f"pair scores (P(dislike), P(like)): {[[round(float(v), 4) for v in row] for row in scores]}")
    serve_examples(saved, log)
    return model.metrics


#: The reference's two request kinds, with the sample model's IDs (users 1..100, items 1..200).
EXAMPLE_REQUESTS = [
    (
        "item embeddings",
        "application/json; infer_max_seqlens=1,1",
        "application/json",
        b'{"instances": [{"in1": [1]}, {"in1": [2]}]}',
    ),
    (
        "pair scores",
        "application/jsonlines",
        "application/jsonlines",
        b'{"in0": [1], "in1": [1]}\n{"in0": [2], "in1": [2]}\n',
    ),
]


def serve_examples(model_dir: str | Path, log: Logger = print, shown: int = 160) -> None:
    """Serve the saved model on a free loopback port (as ``object2vec serve`` does), send the
    example requests a SageMaker client would, print the answers, and stop."""
    with server.running(server.load_app(ServeSettings(str(model_dir)))) as url:
        log(f"serving {model_dir} at {url} (object2vec serve --model-dir {model_dir})")
        for title, content_type, accept, body in EXAMPLE_REQUESTS:
            request = urllib.request.Request(
                f"{url}/invocations", data=body, headers={"Content-Type": content_type, "Accept": accept}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.read().decode().strip().replace("\n", " | ")
            log(
                f"{title}: POST /invocations ({content_type}) -> {response.status} "
                f"{answer if len(answer) <= shown else answer[:shown] + ' ...'}"
            )
