#!/usr/bin/env bash
# Build the object2vec image and run it as SageMaker runs a bring-your-own container, on this
# machine only (not CI): `train` against an /opt/ml directory, `serve` answered by boto3's
# sagemaker-runtime client (as an endpoint and as a batch transform), and a two-instance training
# job as two containers. Every container runs with --network host and binds or calls loopback only.
#
#   benchmarks/container.sh [--base IMAGE] [--image NAME] [--keep]
#
# Needs: a running docker daemon; python3 with boto3 on the host (the client side). The base
# image is `--base`, else object2vec-base:bookworm, made here when missing: Debian bookworm
# (minbase, python3, pip, venv, ca-certificates) by debootstrap (root, deb.debian.org), with a
# venv first on PATH so that docker/Dockerfile's `pip` and `python` work unchanged. torch comes
# from a wheel index served on 127.0.0.1 (the wheel `pip download` finds for the version
# pyproject.toml pins), the other dependencies from PyPI (through this machine's HTTPS egress,
# whose certificate authorities from /usr/local/share/ca-certificates the base image trusts). With a registry none of this is needed:
# `docker build -f docker/Dockerfile -t object2vec:cpu .` as the README says.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BASE="object2vec-base:bookworm"
IMAGE="object2vec:cpu"
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --image) IMAGE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--base IMAGE] [--image NAME] [--keep]" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d /tmp/object2vec-container.XXXXXX)"
CONTAINERS=()
INDEX_PID=""
cleanup() {
  for name in "${CONTAINERS[@]}"; do docker rm -f "$name" >/dev/null 2>&1 || true; done
  [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# docker run with the host's network (so every port is loopback's) and a name to clean up
run() { local name="$1"; shift; CONTAINERS+=("$name"); docker run --name "$name" --network host "$@"; }

make_base() {
  step "base image $BASE: debootstrap bookworm minbase + python3, pip, venv"
  local rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  tar -C "$rootfs" -c . | docker import - "$BASE-raw" >/dev/null
  rm -rf "$rootfs"
  # This machine's own certificate authorities (its HTTPS egress is re-signed by one) join the
  # image's, for pip's downloads from PyPI during the build; pip is pointed at the system bundle.
  run base-venv -v /usr/local/share/ca-certificates:/host-ca:ro "$BASE-raw" sh -c \
    'cp /host-ca/*.crt /usr/local/share/ca-certificates/ 2>/dev/null; update-ca-certificates >/dev/null &&
     python3 -m venv /opt/venv'
  docker commit --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' base-venv "$BASE" >/dev/null
  docker rm base-venv >/dev/null && docker rmi "$BASE-raw" >/dev/null
}

build_image() {
  local version port
  version="$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' "$REPO/pyproject.toml")"
  step "torch $version wheel index on 127.0.0.1"
  mkdir -p "$WORK/index/torch"
  pip download "torch==$version" --no-deps --only-binary=:all: -d "$WORK/index/torch" | tail -1
  port="$(free_port)"
  python3 -m http.server --bind 127.0.0.1 "$port" --directory "$WORK/index" >"$WORK/index.log" 2>&1 &
  INDEX_PID=$!
  step "docker build -f docker/Dockerfile --build-arg PYTHON_IMAGE=$BASE (torch from 127.0.0.1:$port)"
  local started=$SECONDS
  docker build --force-rm --network host -f "$REPO/docker/Dockerfile" --build-arg "PYTHON_IMAGE=$BASE" \
    --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/" -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 ||
    { tail -30 "$WORK/build.log"; exit 1; }
  grep -o "object2vec on torch .*" "$WORK/build.log" | head -1
  echo "built $IMAGE in $((SECONDS - started)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
  kill "$INDEX_PID" && INDEX_PID=""
}

# A training job's /opt/ml: hyperparameters.json, and train/validation/test channels.
make_ml_root() {
  local root="$1"; shift
  mkdir -p "$root/input/config"
  cat >"$root/input/config/hyperparameters.json" <<'JSON'
{"enc0_network": "pooled_embedding", "enc0_max_seq_len": "1", "enc0_vocab_size": "50",
 "enc1_vocab_size": "60", "enc0_token_embedding_dim": "16", "enc_dim": "16", "mlp_layers": "1",
 "mlp_dim": "32", "mlp_activation": "relu", "learning_rate": "0.01", "epochs": "8",
 "mini_batch_size": "32", "_kvstore": "device", "_num_gpus": "auto"}
JSON
  docker run --rm --network host -v "$root:/opt/ml" "$IMAGE" python3 -c '
from object2vec.sample_data import latent_pairs, write_jsonl
records = latent_pairs(1200, latent_dim=2, seed=3)
write_jsonl(records[:1000], "/opt/ml/input/data/train/part-0.jsonl")
write_jsonl(records[1000:1100], "/opt/ml/input/data/validation/validation.jsonl")
write_jsonl(records[1100:], "/opt/ml/input/data/test/test.jsonl")'
}

train_job() {
  step "docker run IMAGE train (one instance, /opt/ml from $WORK/ml)"
  make_ml_root "$WORK/ml"
  local started=$SECONDS
  CONTAINERS+=(train)  # registered here: the pipeline below runs `docker run` in a subshell
  docker run --name train --network host -v "$WORK/ml:/opt/ml" "$IMAGE" train --seed 0 2>&1 | tee "$WORK/train.log"
  echo "trained in $((SECONDS - started)) s; $WORK/ml/model: $(ls "$WORK/ml/model" | tr '\n' ' ')"
  python3 - "$WORK/train.log" <<'PY'
import re, sys
log = open(sys.argv[1]).read()
# the README's metric_definitions
for name in ("train:loss", "validation:accuracy", "validation:cross_entropy", "test:accuracy"):
    values = re.findall(rf"^{name}=(\S+)", log, re.M)
    print(f"metric_definitions regex ^{name}=(\\S+): {len(values)} values {values}")
PY
}

serve_and_invoke() {
  step "docker run IMAGE serve: model.tar.gz in /opt/ml/model, as a batch transform with max_payload=20, 2 at a time"
  mkdir -p "$WORK/hosting/model"
  docker run --rm --network host -v "$WORK/ml/model:/trained:ro" -v "$WORK/hosting:/opt/ml" "$IMAGE" \
    python3 -c 'from object2vec import artifact; print(artifact.archive("/trained", "/opt/ml/model/model.tar.gz"))'
  local port started=$SECONDS
  port="$(free_port)"
  run serve -d -v "$WORK/hosting:/opt/ml:ro" -e "SAGEMAKER_BIND_TO_PORT=$port" -e SAGEMAKER_BATCH=true \
    -e SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=2 -e SAGEMAKER_MAX_PAYLOAD_IN_MB=20 "$IMAGE" serve --host 127.0.0.1 >/dev/null
  until curl -sf "http://127.0.0.1:$port/ping" >/dev/null; do
    [ "$(docker inspect -f '{{.State.Running}}' serve)" = true ] || { docker logs serve; exit 1; }
    [ $((SECONDS - started)) -lt 180 ] || { echo "serve did not answer /ping in 180 s"; docker logs serve; exit 1; }
    sleep 0.5
  done
  echo "/ping answered $((SECONDS - started)) s after docker run"
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1 \
    python3 - "http://127.0.0.1:$port" <<'PY'
import json, sys, time, urllib.request
import boto3

url = sys.argv[1]
print("GET /execution-parameters:", urllib.request.urlopen(f"{url}/execution-parameters").read().decode())
runtime = boto3.client("sagemaker-runtime", endpoint_url=url)
lines = b'{"in0": [1], "in1": [2]}\n{"in0": [3], "in1": [4]}\n'
for accept in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
    answer = runtime.invoke_endpoint(EndpointName="o2v", Body=lines, ContentType="application/jsonlines", **accept)
    body = answer["Body"].read().decode().strip().replace("\n", r"\n")
    print(f"JSON Lines in, Accept {accept.get('Accept', '(none)')}: {answer['ContentType']} {body[:110]}")
answer = runtime.invoke_endpoint(
    EndpointName="o2v", Body=json.dumps({"instances": [{"in1": [7]}]}), ContentType="application/json"
)
print(f"JSON in, Accept (none): {answer['ContentType']} {answer['Body'].read().decode()[:90]}...")
line = json.dumps({"in0": [7] * 330, "in1": [5]}).encode() + b"\n"
batch = line * (10 * 1024 * 1024 // len(line) + 1)
started = time.perf_counter()
answer = runtime.invoke_endpoint(EndpointName="o2v", Body=batch, ContentType="application/jsonlines")
out, sent = answer["Body"].read().splitlines(), batch.count(b"\n")
print(
    f"a {len(batch) / 2**20:.1f} MB mini-batch of {sent} lines, no Accept: {answer['ContentType']}, "
    f"{len(out)} answer lines, the first {out[0][:60].decode()}..., in {time.perf_counter() - started:.1f} s"
)
PY
  started=$SECONDS
  docker stop serve >/dev/null
  echo "docker stop: exit status $(docker inspect -f '{{.State.ExitCode}}' serve) after $((SECONDS - started)) s"
  docker logs serve 2>&1 | grep -E "^serving|Application startup complete|Shutting down|Finished server" || true
}

two_hosts() {
  step "a two-instance training job: two containers, resourceconfig.json hosts algo-1, algo-2 (algo-1 -> 127.0.0.1)"
  local port started=$SECONDS
  port="$(free_port)"
  for host in algo-1 algo-2; do
    make_ml_root "$WORK/$host"
    echo "{\"current_host\": \"$host\", \"hosts\": [\"algo-1\", \"algo-2\"]}" >"$WORK/$host/input/config/resourceconfig.json"
    run "$host" -d -v "$WORK/$host:/opt/ml" -e OBJECT2VEC_MASTER_ADDR=127.0.0.1 -e "OBJECT2VEC_MASTER_PORT=$port" \
      -e GLOO_SOCKET_IFNAME=lo -e OMP_NUM_THREADS=1 "$IMAGE" \
      train --seed 0 epochs=16 learning_rate=0.02 early_stopping_patience=5 >/dev/null
  done
  for host in algo-1 algo-2; do
    echo "$host: exit status $(docker wait "$host")"
  done
  echo "both done in $((SECONDS - started)) s"
  for host in algo-1 algo-2; do
    echo "--- $host log (first line, last lines)"
    docker logs "$host" 2>&1 | head -1
    docker logs "$host" 2>&1 | sed -n '/^early stopping\|^restored/,$p'
  done
  echo "algo-1 model: $(ls "$WORK/algo-1/model" 2>/dev/null | tr '\n' ' ')"
  echo "algo-2 model: $(ls "$WORK/algo-2/model" 2>/dev/null | tr '\n' ' ' || true)(none expected)"
  docker run --rm --network host -v "$WORK/algo-1:/opt/ml:ro" "$IMAGE" python3 -c '
import json, numpy as np, object2vec
model = object2vec.load("/opt/ml/model")
records = [json.loads(line) for line in open("/opt/ml/input/data/test/test.jsonl")]
scores = model.predict([r["in0"] for r in records], [r["in1"] for r in records])
accuracy = float(np.mean(scores.argmax(1) == np.array([r["label"] for r in records])))
print(f"the model algo-1 wrote, loaded again: test accuracy {accuracy:.2f} on {len(records)} pairs")'
}

step "docker $(docker version -f '{{.Server.Version}}'), image $IMAGE from base $BASE"
docker image inspect "$BASE" >/dev/null 2>&1 || make_base
build_image
train_job
serve_and_invoke
two_hosts
step "done"
