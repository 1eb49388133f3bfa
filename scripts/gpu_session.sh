#!/usr/bin/env bash
# Every GPU measurement the open issues ask for (6: benchmark; 3: WRN-16-4 run; 5: ResNet-50 step;
# 8: batch-size sweep), in parts that each fit one 10-minute command of a lent GPU machine.
#
# Here (with network), once:   bash scripts/gpu_session.sh prepare
#   fetches the pure-Python wheels the GPU image lacks (ml_collections, tensorboardX) into .whl/ and
#   copies the CIFAR-10 tarball into .device/ (both git-ignored; name them in the call's carry).
# There, from the repository root, one part per call, most important first (minutes are the
# parts' own time limits). A lease is 15 minutes of device time all told, the machine's start
# (a minute or two) included, and none starts with less than 4 left: so run `issue6` first, in
# one call with timeout_s=600; the minutes it leaves hold at most one short part more.
#   bash scripts/gpu_session.sh issue6     # issue 6 in one call: @priority rows (JAX, profiled),
#                                          #   the PyTorch reference, CUDA graphs around loops (<= 9)
#   bash scripts/gpu_session.sh bench      # issue 6: WRN-1000-2/100-2 and WRN-16-4 rows (<= 9.5)
#   bash scripts/gpu_session.sh train      # WRN-16-4 BN and SkipInit, batch 256, 15 epochs (<= 9.5)
#   bash scripts/gpu_session.sh variants   # WRN-28-10 rows, scan unroll / k / remat, CUDA graphs (<= 9.5)
#   bash scripts/gpu_session.sh imagenet   # ResNet-50/101-V2 train step, batch 256 (<= 7)
#   bash scripts/gpu_session.sh sweep      # WRN-16-4 batch-size sweep, reduced budget (<= 9.5;
#                                          #   run it again to finish the grid: runs resume)
#   bash scripts/gpu_session.sh torch      # the PyTorch WRN reference on the same GPU (<= 8.5)
# Results go to $OUT/<part>/ (at most 8 files each: the device tool's limit); copy them into
# results/ with the command and the GPU name. The benchmark rewrites its files after every row,
# so a part cut short by its limit keeps what it measured.
# Without $OUT (a GPU machine of your own) results go to results/gpu_session/. DRY_RUN=1 runs
# every part at toy sizes (CPU, minutes), into /tmp/gpu_session_dry: a check of the script.
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS="prepare|issue6|bench|train|variants|imagenet|sweep|torch"
part=${1:?"usage: bash scripts/gpu_session.sh $PARTS"}
# A dry run never writes into results/.
[ "${DRY_RUN:-0}" = 1 ] && OUT=${OUT:-/tmp/gpu_session_dry/out}
OUT=${OUT:-results/gpu_session}
CIFAR=${CIFAR:-.device/cifar10-jpeg.tar.gz}
dest="$OUT/$part"
# Rows run at the config defaults: since issue 15 that is bfloat16 branches around a float32
# residual stream (model.residual_dtype); @priority and @variants add bfloat16-stream rows
# (residual_dtype=bfloat16, the layout before) so that its cost is measured next to them.
BENCH_ROWS=@deep,@wrn16 WIDE_ROWS=@wide VARIANT_ROWS=@variants IMAGENET_ROWS=@imagenet
PRIORITY_ROWS=@priority TORCH_QUICK="--rows=100-2:128,16-4:512,1000-2:128,16-4:1024 --min_time_s=1.5"
CMDBUF_ROWS=100-2:batchnorm:128:bfloat16,100-2:skipinit:128:bfloat16,16-4:batchnorm:64:bfloat16,1000-2:batchnorm:128:bfloat16
TRAIN="16-4,batch_size=256,epochs=15" SWEEP="epochs=3,lr_exps=-3:0,batch_exps=6:10" TORCH_ROWS=""
SCRATCH=/tmp/gpu_session
if [ "${DRY_RUN:-0}" = 1 ]; then
  BENCH_ROWS=10-1:batchnorm:16:float32:ghost_batch_size=8 WIDE_ROWS=10-2:skipinit:16:float32
  VARIANT_ROWS=10-1:skipinit:16:float32:scan_unroll=2 CMDBUF_ROWS=10-1:skipinit:16:float32
  IMAGENET_ROWS=r14:batchnorm:8:float32:width=0.125+image_size=64+ghost_batch_size=8
  TORCH_ROWS="--rows=10-1:8 --min_time_s=0.1" TORCH_QUICK=$TORCH_ROWS
  PRIORITY_ROWS=10-1:batchnorm:16:float32:ghost_batch_size=8,10-1:skipinit:16:float32
  TRAIN="10-1,batch_size=256,epochs=0.02,eval_batch_size=2000"
  SWEEP="epochs=0.01,lr_exps=-2:-1,batch_exps=6:7,depth=10,width=1"
  SCRATCH=/tmp/gpu_session_dry
fi
SHOW="^\||error|exception|traceback|MISS|met |targets"  # what the console shows of a log

setup() {
  mkdir -p "$dest"
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  fi
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
  python3 -c "import jax, flax, optax, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" || exit 1
}

# The part's exit status: 1 when any step failed or was cut by its time limit (what such a step
# measured before it stopped is kept all the same).
failed=0
check() {  # check NAME RC [LOG]
  case $2 in
    0) ;;
    124|137) echo "$1: cut by its time limit (what it finished is kept)"; failed=1 ;;
    *) echo "$1: failed with status $2 (see ${3:-$dest/$part.log})"; failed=1 ;;
  esac
}

# benchmark SECONDS TAG ARGS...: scripts/benchmark.py with --profile into $dest, bounded.
benchmark() {
  local seconds=$1 tag=$2
  shift 2
  timeout -k 10 "$seconds" python3 scripts/benchmark.py --profile --min_time_s=1.5 \
    --out_dir="$dest" ${tag:+--tag=$tag} "$@" 2>&1 | tee -a "$dest/$part.log" \
    | grep -iE "$SHOW"
  check "benchmark${tag:+ $tag}" "${PIPESTATUS[0]}"
}

# torch_benchmark SECONDS ARGS...: the PyTorch reference into $dest, bounded.
torch_benchmark() {
  local seconds=$1
  shift
  timeout -k 10 "$seconds" python3 scripts/benchmark_torch.py "$@" --out_dir="$dest" 2>&1 \
    | tee -a "$dest/$part.log" | grep -iE "$SHOW"
  check "benchmark_torch" "${PIPESTATUS[0]}"
}

# train NAME ARG SECONDS: trains a config in a scratch dir (a later call resumes it) and keeps its
# status, metrics and log in $dest; a run refused for its config copies nothing stale.
train() {
  local name=$1 arg=$2 workdir=$SCRATCH/$1
  timeout -k 15 "$3" python3 scripts/train.py --config="configs/cifar10_wrn.py:$arg" \
    --workdir="$workdir" 2>&1 | tee "$dest/$name.log" | grep -iE "epoch .* step|accuracy|error|final status"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 2 ]; then
    echo "$name: refused (see $dest/$name.log); remove $workdir to start it afresh"
    failed=1
    return
  fi
  check "$name" "$rc" "$dest/$name.log"
  cp "$workdir/status.json" "$dest/${name}_status.json" 2>/dev/null
  cp "$workdir/metrics.jsonl" "$dest/${name}_metrics.jsonl" 2>/dev/null
}

case $part in
  prepare)
    mkdir -p .whl .device
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl \
      ml_collections==1.1.0 tensorboardX==2.6.5
    [ -f "$CIFAR" ] || cp ../shared/data/cifar10-jpeg.tar.gz "$CIFAR"
    echo "carry: [\".whl\", \".device\"]  ($(du -shc .whl .device | tail -1 | cut -f1) in all; the limit is 64 MiB)"
    ;;
  issue6)
    # Each step bounded so that the whole part ends within 9 minutes; every benchmark writes its
    # files after each row, so a step cut short keeps what it measured. 7 files under $dest.
    setup
    benchmark 330 "" --rows="$PRIORITY_ROWS"
    torch_benchmark 110 $TORCH_QUICK
    XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
      benchmark 80 cmdbuf --rows="$CMDBUF_ROWS"
    ls "$dest"
    ;;
  bench)
    setup
    benchmark 560 "" --rows="$BENCH_ROWS"
    ;;
  variants)
    setup
    benchmark 150 wide --rows="$WIDE_ROWS"
    benchmark 250 variants --rows="$VARIANT_ROWS"
    # CUDA graphs around whole while loops, so a scanned stage is one launch. An XLA flag: an
    # unknown one stops the process, which is why it runs in a process of its own.
    XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
      benchmark 150 cmdbuf --rows="$CMDBUF_ROWS"
    ;;
  imagenet)
    setup
    benchmark 400 imagenet --rows="$IMAGENET_ROWS"
    ;;
  train)
    setup
    [ -f "$CIFAR" ] || { echo "error: $CIFAR is missing: run 'prepare' here and carry .device"; exit 2; }
    common="$TRAIN,source=folder,path=$CIFAR,cache_dir=$SCRATCH/cache"
    common+=",schedule=cosine,warmup_epochs=1,nesterov=true,dtype=bfloat16,log_every_steps=196"
    train wrn16-4_bn_b256_e15 "$common,lr=0.2" 260
    train wrn16-4_skipinit_b256_e15 "$common,normalizer=skipinit,lr=0.1" 260
    ;;
  sweep)
    setup
    [ -f "$CIFAR" ] || { echo "error: $CIFAR is missing: run 'prepare' here and carry .device"; exit 2; }
    # 4 runs share the GPU (each process allocates on demand); a re-run resumes the grid.
    timeout -k 20 480 python3 scripts/sweep.py --executor=gpus --gpus=0,0,0,0 \
      --sweep="configs/sweeps/batch_size.py:$SWEEP,seeds=1,data.source=folder,data.path=$PWD/$CIFAR,data.cache_dir=$SCRATCH/cache,model.dtype=bfloat16" \
      --sweep_dir="$SCRATCH/sweep" 2>&1 | tee "$dest/sweep.log" | grep -iE "\] gpu|error"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 2 ]; then
      echo "sweep refused (see $dest/sweep.log); no tables written"
      exit 2
    fi
    check sweep "$rc" "$dest/sweep.log"
    # No figures: the GPU image has no matplotlib. The run directories come back as one tarball,
    # without checkpoints and TensorBoard events: `tar xzf sweep_runs.tgz` here, then make_tables
    # --sweep_dir=sweep draws them.
    python3 scripts/make_tables.py --sweep_dir="$SCRATCH/sweep" --out_dir="$SCRATCH/tables" \
      --nofigures
    check make_tables "$?"
    cp "$SCRATCH"/tables/*.md "$SCRATCH"/tables/*.csv "$dest/" 2>/dev/null
    tar czf "$dest/sweep_runs.tgz" --exclude=checkpoints --exclude=tensorboard -C "$SCRATCH" sweep
    check "tar of the run directories" "$?"
    ls "$dest"
    ;;
  torch)
    setup
    torch_benchmark 500 $TORCH_ROWS
    ;;
  *)
    echo "error: unknown part '$part': $PARTS" >&2
    exit 2 ;;
esac
exit $failed
