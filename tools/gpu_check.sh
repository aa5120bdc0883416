#!/usr/bin/env bash
# One command that checks revvit's CUDA claims on one GPU, in under 8 minutes, and its rehearsal on a CPU.
#
#   tools/gpu_check.sh prepare          (here, with the package registry) fetch into .whl/ (git-ignored) the
#                                       wheels the GPU machine lacks: fvcore, iopath, yacs, av, termcolor,
#                                       for its Python 3.12 / x86-64 (fvcore and iopath are sdist-only on PyPI:
#                                       built here as pure-Python wheels)
#   tools/gpu_check.sh run OUTDIR       (on the GPU machine, no network) install .whl/ into a temporary
#                                       directory with --no-index, print the GPU, driver, torch and CUDA, run
#                                       the parts below each under its own timeout, write OUTDIR/gpu_check.md,
#                                       OUTDIR/gpu_check.json and OUTDIR/gpu_check_logs.tar.gz (every log and
#                                       raw result; three small files, easy to copy back)
#   tools/gpu_check.sh rehearse OUTDIR  (any machine, no GPU, no wheels: the current environment) the same
#                                       parts through the same code at tiny sizes on the CPU, the same report,
#                                       which says it is a CPU rehearsal; CI runs it, so every part of the GPU
#                                       run has run before the GPU sees it. 2 CPU minutes (4 to 5 minutes of
#                                       wall time on 2 cores shared with other work at load 11 to 13).
#   tools/gpu_check.sh plan run|rehearse  print each part's budget and command, run nothing
#
# The exit status is 1 when a part failed or timed out or the report is missing, else 0. GPU_CHECK_PARTS
# (names separated by spaces, e.g. "setup demo predict") runs only those parts; the others are reported
# as skipped. The report runs last and always: after a failed or killed part, and when the whole check is
# stopped (SIGTERM, SIGINT: the running part is stopped first and reported as such).
#
# On the GPU machine, from the repository root with .whl/ copied along: tools/gpu_check.sh run OUTDIR
# (docs/BENCHMARKS.md, "Measured on a GPU").
#
# Budget of each part on one GPU (seconds; each part gets SIGTERM at its budget and SIGKILL KILL_S=2 s
# later, so budget + 2 bounds it). Start-up: the CPU seconds (user + system, all threads) a part spends
# before its first GPU work (imports, config, model builds, test collection), measured on this project's
# 2-core CPU machine; CPU seconds, unlike wall seconds, barely move with other users' load (it was 12 to 14
# then). Every budget is at least 3x its start-up:
#   part        budget  start-up  what
#   setup         15     1.8      install the wheels, versions of GPU, driver, torch, CUDA, cuDNN
#   cpu           35     5.7      the CPU suite's quick subset (CUDA hidden: the CPU tests must pass on a GPU machine),
#                                 20 s at most per test
#   cuda          80     5.8      pytest -m cuda tests/cuda tests/datasets/device (every
#                                 cuda-marked test), 30 s at most per test
#   demo          45     5.7      tools/run_net.py on the digits demo, NUM_GPUS 1, bf16, DEMO_EPOCHS epochs (start-up:
#                                 imports and model 4.4, the digits' JPEGs 1.3)
#   predict       20     4.3      tools/predict.py, NUM_GPUS 1, with the demo's checkpoint on the demo's 360 test images
#   table x4   4x32      6.8      the paper's memory table in GPU memory: ViT-S, ViT-B, MViT-B, ViT-L, reversible
#                                 vs twin, at 224x224, batches TABLE_BATCHES, budget: the GPU's free memory less
#                                 1 GiB (--budget auto); one part each for fp32/bf16 x fused/math attention. Every
#                                 point builds its model on the CPU first (ViT-L: 7.0 CPU s here), so ViT-L comes
#                                 last: a part cut at its budget keeps the points before it (saved after each)
#   time x2    2x34     11.2      step time reversible vs twin, bf16, CUDA events: Rev-ViT-B (batch 64), Rev-MViT-B
#                                 (32; 10.6 s start-up)
#   loader        26     4.3      images per CPU second one data-loader worker produces, worker pipeline and
#                                 AUG.ON_DEVICE (ViT-S/B, MViT-B, Kinetics recipes; 21 s on an idle 2-core EPYC)
#   parts       417 = 15 + 35 + 80 + 45 + 20 + 128 + 68 + 26
#   kill         24 = 12 parts x KILL_S
#   report       30   assemble gpu_check.md / .json (no torch: 0.1 s here) and the tar of logs, after every part;
#                     a hang guard of REPORT_S=20 s on the report, 10 s on the tar
#   total       471 <= 480 (8 minutes)
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHL="$REPO/.whl"
PY=${PYTHON:-python3}
# Versions known to work with revvit (the CPU suite's environment); one of each, or pip refuses the install.
BINARY_WHEELS="av==18.1.0 yacs==0.1.8 termcolor==3.3.0"
SOURCE_WHEELS="fvcore==0.1.5.post20221221 iopath==0.1.10"
DEMO_EPOCHS=${DEMO_EPOCHS:-5}
TABLE_BATCHES=${TABLE_BATCHES:-"8 16"}
KILL_S=2
REPORT_S=20
# The rehearsal's tiny model: 2 blocks of width 32 on 32x32 images (tests/benchmarks use the same).
TINY="MVIT.EMBED_DIM 32 MVIT.NUM_HEADS 2 MVIT.DEPTH 2 DATA.TRAIN_CROP_SIZE 32 DATA.TEST_CROP_SIZE 32 MODEL.NUM_CLASSES 10"

usage() {
    echo "usage: tools/gpu_check.sh prepare | run OUTDIR | rehearse OUTDIR | plan run|rehearse   (see the header of $0)" >&2
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
    echo "copy .whl/ along with the repository to the GPU machine, then: tools/gpu_check.sh run OUTDIR"
}

record() {  # record NAME RC SECONDS BUDGET NOTE: one row of parts.tsv, the report's list of parts
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$WORK/parts.tsv"
}

selected() {
    [ -z "${GPU_CHECK_PARTS:-}" ] || [[ " $GPU_CHECK_PARTS " == *" $1 "* ]]
}

# part NAME BUDGET_S COMMAND...: run one part under its own timeout, log to $WORK/NAME.log, record rc and time.
# The part runs in the background and is waited for, so that a SIGTERM to this script is handled at once
# (finish stops the part, then reports) instead of after the part.
part() {
    local name=$1 budget=$2
    shift 2
    if [ -n "$PLAN" ]; then
        printf '%s\t%s\t%s\n' "$name" "$budget" "$*"
        return 0
    fi
    if ! selected "$name"; then
        record "$name" skip 0 "$budget" "not in GPU_CHECK_PARTS"
        return 0
    fi
    local t0=$SECONDS rc
    echo "== $name (budget ${budget} s)"
    timeout -k "$KILL_S" "$budget" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    PART_PID=$! PART_NAME=$name PART_T0=$t0 PART_BUDGET=$budget
    wait "$PART_PID"
    rc=$?
    PART_PID=
    record "$name" "$rc" "$((SECONDS - t0))" "$budget"
    echo "   rc $rc, $((SECONDS - t0)) s; last lines:"
    tail -n 3 "$WORK/$name.log" | sed 's/^/   | /'
    return 0
}

skip() {  # skip NAME REASON: a part this mode cannot run, with the reason the report gives
    if [ -n "$PLAN" ]; then
        printf '%s\tskip\t%s\n' "$1" "$2"
    else
        record "$1" skip 0 0 "$2"
    fi
}

# The parts, for MODE run (GPU) or rehearse (CPU, tiny sizes). Where a tool takes --device cpu, the
# rehearsal runs the GPU run's command on the CPU; what cannot run without a GPU is skipped with its reason.
parts() {
    local mode=$1 device gpus demo_opts demo_epochs workers tiny="" time_sizes batches b_vit b_mvit
    local cpu_tests="tests/models/test_reversible.py tests/models/test_mixed_precision.py tests/engine/test_train_step.py tests/config tests/solver"
    if [ "$mode" = run ]; then
        device=cuda gpus=1 demo_epochs=$DEMO_EPOCHS workers=8 batches=$TABLE_BATCHES b_vit=64 b_mvit=32
        demo_opts="TRAIN.MIXED_PRECISION True TRAIN.MIXED_PRECISION_DTYPE bfloat16"
        time_sizes="--rounds 10 --warmup 3"
        part setup 15 bash -c "'$PY' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --root-user-action=ignore \
            --target '$WORK/site' '$WHL'/*.whl && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
            && '$PY' -m revvit.benchmarks.gpu_check versions '$WORK/versions.json'"
        [ -n "$PLAN" ] || cat "$WORK/setup.log"
    else
        # The quick subset's quickest directory (the full suite runs in CI before the rehearsal), fp32 on
        # the CPU, one epoch, tiny models, two points per table, two rounds per timing.
        device=cpu gpus=0 demo_epochs=1 workers=1 batches="1 2" b_vit=2 b_mvit=2 tiny="--opts $TINY"
        cpu_tests="tests/config"
        demo_opts="SOLVER.WARMUP_EPOCHS 0.5"  # the recipe's warm-up is 1 epoch: it must end before the last epoch
        time_sizes="--rounds 2 --warmup 1"
        part setup 60 "$PY" -m revvit.benchmarks.gpu_check versions "$WORK/versions.json"
        skip wheels "the rehearsal uses this environment's packages; nvidia-smi: no GPU"
    fi

    part cpu "$([ "$mode" = run ] && echo 35 || echo 90)" env CUDA_VISIBLE_DEVICES= "$PY" -m pytest -v -p no:cacheprovider \
        --timeout 20 --junitxml "$WORK/cpu.xml" $cpu_tests
    # On a CPU every test here skips (cuda-marked): collecting them still imports each file.
    part cuda "$([ "$mode" = run ] && echo 80 || echo 60)" "$PY" -m pytest -v -p no:cacheprovider -m cuda --timeout 30 \
        --junitxml "$WORK/cuda.xml" tests/cuda tests/datasets/device

    part demo "$([ "$mode" = run ] && echo 45 || echo 90)" "$PY" tools/run_net.py --cfg configs/Demo/REV_VIT_DIGITS.yaml \
        NUM_GPUS "$gpus" $demo_opts SOLVER.MAX_EPOCH "$demo_epochs" TRAIN.EVAL_PERIOD "$demo_epochs" \
        TRAIN.CHECKPOINT_PERIOD "$demo_epochs" DATA_LOADER.NUM_WORKERS "$workers" OUTPUT_DIR "$WORK/demo" \
        DATA.DEMO_CACHE_DIR "$WORK/cache"
    local ckpt test_dir
    ckpt=$(ls -1 "$WORK"/demo/checkpoints/*.pyth 2>/dev/null | tail -n 1)
    test_dir=$(ls -d "$WORK"/cache/demo/digits-*/test 2>/dev/null | head -n 1)
    # The rehearsal's CPU classifies one class folder (36 images, not 360: about 50 CPU ms each here).
    [ "$mode" = run ] || [ -z "$test_dir" ] || test_dir=$test_dir/0
    part predict "$([ "$mode" = run ] && echo 20 || echo 60)" "$PY" tools/predict.py --cfg configs/Demo/REV_VIT_DIGITS.yaml \
        --checkpoint "${ckpt:-missing}" --topk 1 --output "$WORK/predict.json" "${test_dir:-missing}" --opts NUM_GPUS "$gpus"

    # The rehearsal measures each point in a fresh process (the CPU's resident set), about 8 s each on 2 cores:
    # ViT-S alone (the tiny overrides fit the ViTs' single stage, not MViT-B's four), both ways in fp32 math
    # (the column the report compares with the paper), the reversible way in the other three.
    local p a models="ViT-S ViT-B MViT-B ViT-L" ways
    [ "$mode" = run ] || models="ViT-S"
    for p in fp32 bf16; do
        for a in fused math; do
            ways="reversible non_reversible"
            [ "$mode" = run ] || [ "$p$a" = fp32math ] || ways=reversible
            part "table_${p}_${a}" "$([ "$mode" = run ] && echo 32 || echo 90)" "$PY" tools/benchmark.py table \
                --device "$device" --precision "$p" --attention "$a" --models $models --ways $ways \
                --repeats 1 --batches $batches --budget auto $tiny --out "$WORK/table_${p}_${a}.json"
        done
    done
    part time_vit_b "$([ "$mode" = run ] && echo 34 || echo 60)" "$PY" tools/benchmark.py time --device "$device" \
        --precision bf16 --cfg configs/ImageNet/REV_VIT_B.yaml --order reversible non_reversible --batch-size "$b_vit" \
        $time_sizes $tiny --out "$WORK/time_vit_b.json"
    # MViT-B at its own sizes: 32x32 crops make its 16 blocks cheap enough for a CPU rehearsal.
    [ "$mode" = run ] || tiny="--opts DATA.TRAIN_CROP_SIZE 32 DATA.TEST_CROP_SIZE 32 MODEL.NUM_CLASSES 10"
    part time_mvit_b "$([ "$mode" = run ] && echo 34 || echo 60)" "$PY" tools/benchmark.py time --device "$device" \
        --precision bf16 --cfg configs/ImageNet/REV_MVIT_B_16_CONV.yaml --order reversible non_reversible \
        --batch-size "$b_mvit" $time_sizes $tiny --out "$WORK/time_mvit_b.json"
    if [ "$mode" = run ]; then
        part loader 26 "$PY" tools/benchmark_data.py --videos 1 --seconds 3 --clips 2 --images 32 --batch-size 0 \
            --no-short-gop --work-dir "$WORK/media" --out "$WORK/data.json"
    else
        part loader 90 "$PY" tools/benchmark_data.py --videos 1 --seconds 3 --clips 1 --images 4 --batch-size 0 \
            --device-batch 16 --no-short-gop --work-dir "$WORK/media" --out "$WORK/data.json"
    fi
}

# finish: stop the running part (if the check itself was stopped), then the report and the tar of logs.
# Runs once, on every exit of check.
finish() {
    [ -n "${FINISHED:-}" ] && return
    FINISHED=1
    trap - TERM INT HUP
    if [ -n "${PART_PID:-}" ]; then
        kill -TERM "$PART_PID" 2>/dev/null  # timeout passes it on to the part, and kills it KILL_S s later
        wait "$PART_PID"
        record "$PART_NAME" stopped "$((SECONDS - PART_T0))" "$PART_BUDGET" "the whole check was stopped during this part"
        echo "   $PART_NAME stopped: the whole check was stopped"
    fi
    echo "== report"
    timeout -k "$KILL_S" "$REPORT_S" "$PY" -m revvit.benchmarks.gpu_check report "$WORK" "$OUTDIR" >"$WORK/report.log" 2>&1
    cat "$WORK/report.log"
    timeout 10 tar -czf "$OUTDIR/gpu_check_logs.tar.gz" -C "$WORK" --exclude site --exclude cache --exclude media \
        --exclude '*.pyth' . 2>/dev/null
    if [ -s "$OUTDIR/gpu_check.md" ]; then
        cat "$OUTDIR/gpu_check.md"
        echo "gpu_check $MODE: wrote $OUTDIR/gpu_check.md, gpu_check.json, gpu_check_logs.tar.gz"
    else
        echo "gpu_check $MODE: no report was written; see $WORK/report.log" >&2
        STATUS=${STATUS:-1}
    fi
    if awk -F'\t' '$2 != "0" && $2 != "skip" {bad = 1} END {exit !bad}' "$WORK/parts.tsv"; then
        echo "gpu_check $MODE: some parts failed, timed out or were stopped (see the report's Parts)" >&2
        STATUS=${STATUS:-1}
    fi
    [ "$MODE" = rehearse ] && rm -rf "$WORK"  # its logs are in the tar
    exit "${STATUS:-0}"
}

check() {
    MODE=$1 OUTDIR=$2 PLAN=
    if [ "$MODE" = run ]; then
        if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            echo "gpu_check run: needs a CUDA GPU, and torch sees none on this machine; run it on the GPU machine (prepare runs here)." >&2
            exit 1
        fi
        if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
            echo "gpu_check run: no wheels in $WHL; run 'tools/gpu_check.sh prepare' where pip works and copy .whl/ along." >&2
            exit 1
        fi
    fi
    mkdir -p "$OUTDIR" || exit 1
    OUTDIR=$(cd "$OUTDIR" && pwd)
    rm -f "$OUTDIR/gpu_check.md" "$OUTDIR/gpu_check.json" "$OUTDIR/gpu_check_logs.tar.gz"
    WORK=$(mktemp -d /tmp/gpu_check.XXXXXX) || exit 1
    : >"$WORK/parts.tsv"
    printf '{"mode": "%s"}\n' "$MODE" >"$WORK/mode.json"
    cd "$REPO" || exit 1
    export PYTHONPATH="$REPO:$WORK/site" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
    trap finish EXIT
    trap 'STATUS=143; exit 143' TERM INT HUP
    parts "$MODE"
    exit 0  # finish writes the report and sets the status
}

case "${1:-}" in
    prepare) [ $# -eq 1 ] || usage; prepare ;;
    run | rehearse) [ $# -eq 2 ] || usage; check "$1" "$2" ;;
    plan) [ $# -eq 2 ] && [[ "$2" == run || "$2" == rehearse ]] || usage; PLAN=1 WORK=/nonexistent parts "$2" ;;
    *) usage ;;
esac
