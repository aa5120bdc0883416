#!/usr/bin/env bash
# One command that checks revvit's CUDA claims on one GPU, in under 8 minutes.
#
#   tools/gpu_check.sh prepare       (here, with the package registry) fetch into .whl/ (git-ignored) the
#                                    wheels the GPU machine lacks: fvcore, iopath, yacs, av, termcolor,
#                                    for its Python 3.12 / x86-64 (fvcore and iopath are sdist-only on PyPI:
#                                    built here as pure-Python wheels)
#   tools/gpu_check.sh run OUTDIR    (on the GPU machine, no network) install .whl/ into a temporary
#                                    directory with --no-index, print the GPU, driver, torch and CUDA, run
#                                    the parts below each under its own timeout, write OUTDIR/gpu_check.md,
#                                    OUTDIR/gpu_check.json and OUTDIR/gpu_check_logs.tar.gz (every log and
#                                    raw result; three files, within what the device tool brings back)
#
# Through the device tool (docs/BENCHMARKS.md, "Measured on a GPU"):
#   run(command="tools/gpu_check.sh run $OUT", carry=[".whl"], timeout_s=600)
#
# Budget of each part on one H200 (seconds; each part is killed at its budget, so the sum bounds the whole):
#   setup      25  install the wheels, versions of GPU, driver, torch, CUDA, cuDNN
#   cpu        40  the CPU suite's quick subset (CUDA hidden: the CPU tests must pass on a GPU machine)
#   cuda      100  pytest -m cuda tests/cuda tests/datasets/device (every cuda-marked test)
#   demo       55  tools/run_net.py on the digits demo, NUM_GPUS 1, bf16, DEMO_EPOCHS epochs
#   predict    20  tools/predict.py with the demo's checkpoint on the demo's test images
#   table     152  the paper's memory table in GPU memory: ViT-S, ViT-B, ViT-L, MViT-B, reversible vs twin,
#                  at 224x224, batches TABLE_BATCHES; 38 s for each of fp32/bf16 x fused/math attention
#   time       50  step time reversible vs twin, bf16, CUDA events: Rev-ViT-B (batch 64), Rev-MViT-B (32), 25 s each
#   loader     33  images per CPU second one data-loader worker produces, worker pipeline and AUG.ON_DEVICE
#                  (ViT-S/B, MViT-B, Kinetics recipes; 21 s on an idle 2-core EPYC)
#   report      5  assemble gpu_check.md / .json (python -m revvit.benchmarks.gpu_check)
#   total     480  (= 8 minutes)
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHL="$REPO/.whl"
PY=${PYTHON:-python3}
# Versions known to work with revvit (the CPU suite's environment); one of each, or pip refuses the install.
BINARY_WHEELS="av==18.1.0 yacs==0.1.8 termcolor==3.3.0"
SOURCE_WHEELS="fvcore==0.1.5.post20221221 iopath==0.1.10"
DEMO_EPOCHS=${DEMO_EPOCHS:-5}
TABLE_BATCHES=${TABLE_BATCHES:-"8 16"}

usage() {
    echo "usage: tools/gpu_check.sh prepare | run OUTDIR   (see the header of $0)" >&2
    exit 2
}

prepare() {
    mkdir -p "$WHL" || exit 1
    rm -f "$WHL"/*.whl
    # The GPU machine's interpreter: CPython 3.12 on x86-64 (the device README's platform list).
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" $BINARY_WHEELS || exit 1
    "$PY" -m pip wheel -q --no-deps --no-binary=fvcore,iopath -w "$WHL" $SOURCE_WHEELS || exit 1
    local bad
    bad=$(cd "$WHL" && ls *.whl | grep -v -e '-py3-none-any\.whl$' -e '-cp312-cp312-manylinux' -e '-cp3[0-9]*-abi3-manylinux' || true)
    if [ -n "$bad" ]; then
        echo "gpu_check prepare: wheels that Python 3.12 / x86-64 cannot install: $bad" >&2
        exit 1
    fi
    echo "gpu_check prepare: $(ls "$WHL"/*.whl | wc -l) wheels, $(du -sh "$WHL" | cut -f1) in $WHL:"
    (cd "$WHL" && ls -1 *.whl | sed 's/^/  /')
    echo "carry it: run(command=\"tools/gpu_check.sh run \$OUT\", carry=[\".whl\"])"
}

# part NAME BUDGET_S COMMAND...: run one part under its own timeout, log to $WORK/NAME.log, record rc and time.
part() {
    local name=$1 budget=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (budget ${budget} s)"
    timeout -k 5 "$budget" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$budget" >>"$WORK/parts.tsv"
    echo "   rc $rc, $((SECONDS - t0)) s; last lines:"
    tail -n 3 "$WORK/$name.log" | sed 's/^/   | /'
    return 0
}

run() {
    local outdir=$1
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "gpu_check run: needs a CUDA GPU, and torch sees none on this machine; run it on the GPU machine (prepare runs here)." >&2
        exit 1
    fi
    if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
        echo "gpu_check run: no wheels in $WHL; run 'tools/gpu_check.sh prepare' where pip works and carry .whl." >&2
        exit 1
    fi
    mkdir -p "$outdir" || exit 1
    outdir=$(cd "$outdir" && pwd)
    WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
    local site="$WORK/site"
    : >"$WORK/parts.tsv"
    cd "$REPO" || exit 1
    export PYTHONPATH="$REPO:$site" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

    part setup 25 bash -c "'$PY' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --root-user-action=ignore \
        --target '$site' '$WHL'/*.whl && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        && '$PY' -m revvit.benchmarks.gpu_check versions '$WORK/versions.json'"
    cat "$WORK/setup.log"

    part cpu 40 env CUDA_VISIBLE_DEVICES= "$PY" -m pytest -q --junitxml "$WORK/cpu.xml" \
        tests/models/test_reversible.py tests/models/test_mixed_precision.py tests/engine/test_train_step.py \
        tests/config tests/solver
    part cuda 100 "$PY" -m pytest -q -m cuda --junitxml "$WORK/cuda.xml" tests/cuda tests/datasets/device

    part demo 55 "$PY" tools/run_net.py --cfg configs/Demo/REV_VIT_DIGITS.yaml NUM_GPUS 1 TRAIN.MIXED_PRECISION True \
        TRAIN.MIXED_PRECISION_DTYPE bfloat16 SOLVER.MAX_EPOCH "$DEMO_EPOCHS" TRAIN.EVAL_PERIOD "$DEMO_EPOCHS" \
        TRAIN.CHECKPOINT_PERIOD "$DEMO_EPOCHS" \
        DATA_LOADER.NUM_WORKERS 8 OUTPUT_DIR "$WORK/demo" DATA.DEMO_CACHE_DIR "$WORK/cache"
    local ckpt test_dir
    ckpt=$(ls -1 "$WORK"/demo/checkpoints/*.pyth 2>/dev/null | tail -n 1)
    test_dir=$(ls -d "$WORK"/cache/demo/digits-*/test 2>/dev/null | head -n 1)
    part predict 20 "$PY" tools/predict.py --cfg configs/Demo/REV_VIT_DIGITS.yaml --checkpoint "${ckpt:-missing}" \
        --topk 1 --output "$WORK/predict.json" "${test_dir:-missing}"

    local p a
    for p in fp32 bf16; do
        for a in fused math; do
            part "table_${p}_${a}" 38 "$PY" tools/benchmark.py table --device cuda --precision "$p" --attention "$a" \
                --models ViT-S ViT-B ViT-L MViT-B --ways reversible non_reversible --repeats 1 --batches $TABLE_BATCHES \
                --budget 139GiB --out "$WORK/table_${p}_${a}.json"
        done
    done
    part time_vit_b 25 "$PY" tools/benchmark.py time --device cuda --precision bf16 --cfg configs/ImageNet/REV_VIT_B.yaml \
        --order reversible non_reversible --batch-size 64 --rounds 10 --warmup 3 --out "$WORK/time_vit_b.json"
    part time_mvit_b 25 "$PY" tools/benchmark.py time --device cuda --precision bf16 \
        --cfg configs/ImageNet/REV_MVIT_B_16_CONV.yaml --order reversible non_reversible --batch-size 32 --rounds 10 \
        --warmup 3 --out "$WORK/time_mvit_b.json"
    part loader 33 "$PY" tools/benchmark_data.py --videos 1 --seconds 3 --clips 2 --images 32 --batch-size 0 --no-short-gop \
        --work-dir "$WORK/media" --out "$WORK/data.json"

    part report 5 "$PY" -m revvit.benchmarks.gpu_check report "$WORK" "$outdir"
    tar -czf "$outdir/gpu_check_logs.tar.gz" -C "$WORK" --exclude site --exclude cache --exclude media \
        --exclude '*.pyth' . 2>/dev/null
    cat "$WORK/report.log"
    echo "gpu_check run: wrote $outdir/gpu_check.md, gpu_check.json, gpu_check_logs.tar.gz"
    cat "$outdir/gpu_check.md" 2>/dev/null
}

case "${1:-}" in
    prepare) [ $# -eq 1 ] || usage; prepare ;;
    run) [ $# -eq 2 ] || usage; run "$2" ;;
    *) usage ;;
esac
