#!/usr/bin/env bash
# Worker pod start, cold (the worker compiles the component) against warm (it
# loads the machine code the orchestrator shared through the store), side by
# side in one run. On the test cluster of scripts/cluster (started here).
#
#   bench/pod-start.sh [ROUNDS]      # default 5 rounds, alternating cold and warm
#
# A DeepEcho run (2 models x 3 datasets, data from the store) is run on worker
# pods with a fixed ENGINE_ARTIFACT_KEY; then the worker image is started with
# `engine worker` on that finished run, with and without the key: it fetches
# the run, its data tree (3.4 MB) and its component, logs `ready_ms`, finds
# every shard done and exits. Printed: the worker's own ready time and the
# container's whole life, median and range of each.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds=${1:-5}
gateway=${CLUSTER_POD_GATEWAY:-10.88.0.1}

cargo build --quiet -p engine --bins
bash scripts/build-plugins >/dev/null
scripts/cluster/build-control-plane >/dev/null
scripts/cluster/up >/dev/null
ENGINE_BIN=target/debug/engine scripts/cluster/podman-setup >/dev/null
scripts/cluster/node-agent >/dev/null

venv=target/venv-test
[[ -x $venv/bin/moto_server ]] || { echo "run scripts/test once first (it makes $venv)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 0.0.0.0 -p "$port" >/dev/null 2>&1 &
moto=$!
work=$(mktemp -d)
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL=http://$gateway:$port AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
for _ in $(seq 50); do (exec 3<>"/dev/tcp/$gateway/$port") 2>/dev/null && break; sleep 0.2; done
"$venv/bin/python" -c "import boto3; boto3.client('s3').create_bucket(Bucket='pod-start')"

key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/config.toml" <<EOF
[run]
function = "deepecho.benchmark.run_benchmark"
data = "$root/plugins/deepecho/data"
seed = $RANDOM
[run.args]
datasets = ["BasicMotions", "ArrowHead", "Tecator"]
models = ["RealDataBaseline", "UniformBaseline"]
metrics = ["rf_detection_score"]
max_entities = 20
[cluster]
backend = "kubernetes"
workers = { minimum = 1, maximum = 3 }
store = "s3://pod-start/store"
namespace = "engine"
[cluster.worker_config]
image = "localhost/engine:dev"
resources = { cpu = "500m", memory = "512Mi" }
[output]
path = "$work/results.csv"
EOF
ENGINE_ARTIFACT_KEY=$key KUBECONFIG=target/cluster/engine.kubeconfig RUST_LOG=info \
  target/debug/engine run "$work/config.toml" --plugins target/plugins 2>"$work/run.log" >/dev/null
run=$(grep -o 'starting run=[0-9a-f]*' "$work/run.log" | head -1 | cut -d= -f2)
echo "run $run on worker pods: $(tail -1 "$work/run.log")"

one() { # one MODE: "ready_ms container_ms"
  local extra=() t0 t1 ready
  [[ $1 == warm ]] && extra=(-e "ENGINE_ARTIFACT_KEY=$key")
  t0=$(date +%s%N)
  ready=$(podman run --rm -e AWS_ENDPOINT_URL -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION \
    -e RUST_LOG=info "${extra[@]}" localhost/engine:dev worker --store s3://pod-start/store --run "$run" 2>&1 |
    grep -o 'component=[A-Za-z]* ready_ms=[0-9]*')
  t1=$(date +%s%N)
  case $1:$ready in
    cold:component=Compiled*|warm:component=Precompiled*) ;;
    *) echo "the $1 start logged '$ready'" >&2; exit 1 ;;
  esac
  echo "${ready##*=} $(((t1 - t0) / 1000000))"
}
declare -A ready life
for ((i = 0; i < rounds; i++)); do
  for mode in cold warm; do
    read -r r l < <(one $mode)
    ready[$mode]+="$r " life[$mode]+="$l "
  done
done
stats() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ a[NR] = $1 } END { printf "%d [%d-%d]", a[int((NR + 1) / 2)], a[1], a[NR] }'; }
printf '%-28s %-20s %-20s %s\n' "worker start ($rounds rounds)" "cold (compiles)" "warm (precompiled)" "cold/warm"
for what in ready life; do
  declare -n m=$what
  c=$(stats "${m[cold]}") w=$(stats "${m[warm]}")
  ratio=$(awk -v c="${c%% *}" -v w="${w%% *}" 'BEGIN { printf "%.1fx", c / w }')
  label=$([[ $what == ready ]] && echo "ready_ms (worker's log)" || echo "container ms (podman run)")
  printf '%-28s %-20s %-20s %s\n' "$label" "$c" "$w" "$ratio"
done
