#!/usr/bin/env bash
# Runs `lmcor train|sample ...` on every worker of a Cloud TPU VM slice as one jax.distributed job.
#
#   launch/tpu.sh --tpu=NAME --zone=ZONE [--project=P] \
#       [--create --accelerator_type=v4-32 [--version=tpu-ubuntu2204-base]] [--setup] \
#       [--workdir=lmcor] [--lmcor_cmd=.venv/bin/lmcor] [--env=K=V ...] \
#       [--dry_run [--num_workers=N] [--coordinator_ip=IP]] [--] train --gin_file=... [lmcor flags]
#
# --create   creates the TPU VM slice (gcloud compute tpus tpu-vm create).
# --setup    copies this checkout (git HEAD) to every worker (--worker=all), builds the venv
#            there and adds the TPU build of the pinned jax.
# Then each worker I gets, over its own `ssh --worker=I`, the same coordinator (worker 0's
# internal IP, port 8476) and JAX_PROCESS_ID=I; lmcor.cli.distributed.initialize() reads them.
# (JAX would also detect all of this from the TPU metadata; setting it explicitly makes the run
# exactly what --dry_run prints.) --dry_run prints every gcloud command instead of running it;
# the worker count and IP then come from --num_workers/--coordinator_ip, not from gcloud.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PY="${LMCOR_PYTHON:-python3}"
TPU="" ZONE="" PROJECT="" CREATE=0 SETUP=0 DRY=0 TYPE="" VERSION="tpu-ubuntu2204-base"
WORKDIR="lmcor" LMCOR_CMD=".venv/bin/lmcor" NUM_WORKERS=1 COORD_IP="WORKER0_IP"
ENVS=()

die() { echo "launch/tpu.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --) shift; break ;;
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --create) CREATE=1 ;;
    --setup) SETUP=1 ;;
    --dry_run) DRY=1 ;;
    --accelerator_type=*) TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --lmcor_cmd=*) LMCOR_CMD="${1#*=}" ;;
    --env=*) ENVS+=("${1#*=}") ;;
    --num_workers=*) NUM_WORKERS="${1#*=}" ;;
    --coordinator_ip=*) COORD_IP="${1#*=}" ;;
    *) die "unknown flag $1 (flags for lmcor go after the command name or after --)" ;;
  esac
  shift
done
[[ -n "$TPU" && -n "$ZONE" ]] || die "--tpu=NAME and --zone=ZONE are required"
[[ $# -gt 0 ]] || die "no lmcor command given (e.g. train --gin_file=...)"
[[ $CREATE == 0 || -n "$TYPE" ]] || die "--create needs --accelerator_type (e.g. v4-32)"

GC=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

step() {  # runs a command, or prints it (shell-quoted) under --dry_run
  if [[ $DRY == 1 ]]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

if [[ $CREATE == 1 ]]; then
  echo "# create the slice"
  step "${GC[@]}" create "$TPU" "${WHERE[@]}" --accelerator-type="$TYPE" --version="$VERSION"
fi

if [[ $SETUP == 1 ]]; then
  JAX_PIN="$(grep -i '^jax==' "$REPO/constraints.txt" | head -n1 | cut -d= -f3)"
  W="$(printf '%q' "$WORKDIR")"
  REMOTE="mkdir -p $W && tar -xzf lmcor.tgz -C $W && cd $W && bash scripts/setup_venv.sh"
  REMOTE+=" && .venv/bin/python -m pip install 'jax[tpu]==${JAX_PIN}'"
  echo "# copy the checkout to every worker and build its venv"
  step git -C "$REPO" archive --format=tar.gz -o /tmp/lmcor.tgz HEAD
  step "${GC[@]}" scp /tmp/lmcor.tgz "$TPU:lmcor.tgz" --worker=all "${WHERE[@]}"
  step "${GC[@]}" ssh "$TPU" "${WHERE[@]}" --worker=all --command="$REMOTE"
fi

if [[ $DRY == 0 ]]; then
  # Worker order in networkEndpoints is the worker index, so the first IP is worker 0.
  IPS="$("${GC[@]}" describe "$TPU" "${WHERE[@]}" --format='value(networkEndpoints[].ipAddress)')"
  read -r -a IP_LIST <<< "${IPS//[;,]/ }"
  [[ ${#IP_LIST[@]} -gt 0 ]] || die "gcloud describe listed no worker IPs for $TPU"
  NUM_WORKERS="${#IP_LIST[@]}" COORD_IP="${IP_LIST[0]}"
fi

HELPER=("$PY" "$HERE/dry_run.py" tpu --tpu="$TPU" --zone="$ZONE" --workdir="$WORKDIR"
        --lmcor_cmd="$LMCOR_CMD" --num_workers="$NUM_WORKERS" --coordinator_ip="$COORD_IP")
[[ -n "$PROJECT" ]] && HELPER+=(--project="$PROJECT")
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do HELPER+=(--env="$kv"); done

if [[ $DRY == 1 ]]; then
  echo "# run on every worker, in parallel"
  exec "${HELPER[@]}" -- "$@"
fi
exec "${HELPER[@]}" --exec -- "$@"
