#!/usr/bin/env bash
# The one command a session lent a GPU runs (README, "JAX-vs-Torch parity ... and the GPU parity suite"):
# first `bash scripts/device_wheels.sh` here, then on the device `bash scripts/device_check.sh` with
# carry [".whl"]. It installs the carried wheels, checks that torch and JAX both see the GPU, runs the
# CUDA parity tests and the GPU benchmark, and writes one log per stage and summary.txt to $OUT.
#
# Each stage runs under `timeout`, within an overall budget (DEVICE_CHECK_BUDGET_S): the device tool
# allows 10 minutes a command and 15 of device time in all. A failing stage is recorded and the next
# one runs; the exit status is 1 if any stage failed, 2 if nothing could run (bad STAGES, no GPU).
#
#   STAGES="tests bench"       which stages, of: smoke tests bench tf32 jax compile (default: all, this order)
#   DEVICE_CHECK_ALLOW_CPU=1   rehearsal on a machine without a GPU: same stages, device cpu, smallest sizes
#   ROUNDS, TESTS_WORKERS, TEST_TIMEOUT_S, <STAGE>_TASKS, <STAGE>_BATCHES, <STAGE>_VARIANTS (comma-separated),
#   <STAGE>_CAP_S              override a stage's settings (STAGE = BENCH, TF32, JAX, COMPILE, TESTS, SMOKE)
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_STAGES=(smoke tests bench tf32 jax compile)  # most wanted first: a budget cut drops the tail
read -r -a STAGES <<< "${STAGES:-${ALL_STAGES[*]}}"
for stage in "${STAGES[@]}"; do
    if [[ " ${ALL_STAGES[*]} " != *" $stage "* ]]; then
        echo "device_check: unknown stage '$stage'; stages are: ${ALL_STAGES[*]}" >&2
        exit 2
    fi
done

CPU=${DEVICE_CHECK_ALLOW_CPU:-0}
# Refuse before installing anything: without a GPU this run would spend its budget proving nothing.
if [[ $CPU != 1 ]] && ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "device_check: no GPU here (nvidia-smi -L lists none); DEVICE_CHECK_ALLOW_CPU=1 rehearses on the CPU" >&2
    exit 2
fi

OUT=${OUT:-$PWD/out/device_check}
SITE=${DEVICE_SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-510}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# JAX would otherwise take 75% of the GPU in each process (pytest workers, the benchmark beside torch).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# GPU stages get XLA's optimised pipeline (an empty XLA_FLAGS stops conftest's CPU setting); the CPU
# smoke stage keeps conftest's quicker compiles. A caller's own XLA_FLAGS wins in the GPU stages.
GPU_XLA_FLAGS=${XLA_FLAGS-}
unset XLA_FLAGS

if [[ $CPU == 1 ]]; then
    DEVICE=cpu; ROUNDS=${ROUNDS:-1}; TESTS_WORKERS=${TESTS_WORKERS:-2}; TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-300}
    ALL_TASKS=language; ALL_BATCHES=1; JAX_PEER_TASKS=language
    COMPILE_CAP_S=${COMPILE_CAP_S:-300}  # two cold Inductor compiles take ~50 s each on 2 cores
else
    DEVICE=cuda; ROUNDS=${ROUNDS:-5}; TESTS_WORKERS=${TESTS_WORKERS:-4}; TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-120}
    ALL_TASKS="language imagenet_learned imagenet_fourier imagenet_conv optical_flow video_autoencoding"
    ALL_BATCHES="1 8"
    JAX_PEER_TASKS="language imagenet_conv optical_flow"  # a jit compile each: the three kinds of input
fi

declare -A STATUS TOOK
FAILED=0

# run_stage NAME CAP_S COMMAND...: COMMAND under timeout, output to the terminal and $OUT/NAME.log.
run_stage() {
    local name=$1 cap=$2 left=$((BUDGET_S - SECONDS)) start=$SECONDS rc
    shift 2
    if ((left < 30)); then
        STATUS[$name]="SKIPPED (${left}s of the ${BUDGET_S}s budget left)"; FAILED=1; return
    fi
    ((cap > left)) && cap=$left
    echo "=== $name at ${SECONDS}s, cap ${cap}s: $*" | tee "$OUT/$name.log"
    timeout -k 15 "$cap" "$@" 2>&1 | tee -a "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    TOOK[$name]=$((SECONDS - start))
    if ((rc == 124 || rc == 137)); then
        STATUS[$name]="FAILED (timed out after ${cap}s)"
    elif ((rc != 0)); then
        STATUS[$name]="FAILED (exit $rc)"
    else
        STATUS[$name]=ok
    fi
}

setup() {
    shopt -s nullglob
    local wheels=(.whl/*.whl)
    if ((${#wheels[@]})); then
        echo "installing ${wheels[*]} into $SITE"
        # Pure-Python wheels unpack as installed: the fallback where this Python has no pip.
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}" || for w in "${wheels[@]}"; do "$PYTHON" -m zipfile -e "$w" "$SITE" || return 1; done
    else
        echo "no .whl/*.whl (run scripts/device_wheels.sh and carry .whl): using what this Python has"
    fi
    command -v nvidia-smi > /dev/null && nvidia-smi
    "$PYTHON" - <<'EOF'
import os, sys
import numpy, torch, jax, jaxlib, haiku
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), jax {jax.__version__}, "
      f"jaxlib {jaxlib.__version__}, haiku {haiku.__version__}, numpy {numpy.__version__}")
for name in ("transformers", "huggingface_hub", "pytest_timeout", "xdist"):
    try:
        print(f"{name} {getattr(__import__(name), '__version__', 'present')}")
    except ImportError:
        print(f"{name} not installed")
print("jax.devices():", jax.devices())
problems = []
if torch.cuda.is_available():
    print("torch sees", torch.cuda.get_device_name(0))
else:
    problems.append("torch.cuda.is_available() is False")
try:
    jax.devices("gpu")
except RuntimeError as exc:
    problems.append(f"JAX has no GPU backend ({exc})")
if problems and os.environ.get("DEVICE_CHECK_ALLOW_CPU") == "1":
    print("rehearsal (DEVICE_CHECK_ALLOW_CPU=1), going on although: " + "; ".join(problems))
elif problems:
    sys.exit("device_check: " + "; ".join(problems))
EOF
}

# bench_stage NAME TF32 VARIANTS CAP_S TASKS BATCHES: bench_forward.py; <NAME>_VARIANTS, _CAP_S ... override.
bench_stage() {
    local name=$1 tf32=$2 upper=${1^^} variants tasks batches bad
    local variants_var=${upper}_VARIANTS cap_var=${upper}_CAP_S tasks_var=${upper}_TASKS batches_var=${upper}_BATCHES
    IFS=, read -r -a variants <<< "${!variants_var:-$3}"
    read -r -a tasks <<< "${!tasks_var:-$5}"
    read -r -a batches <<< "${!batches_var:-$6}"
    run_stage "$name" "${!cap_var:-$4}" env XLA_FLAGS="$GPU_XLA_FLAGS" "$PYTHON" benchmarks/bench_forward.py \
        --device "$DEVICE" --tf32 "$tf32" --rounds "$ROUNDS" --tasks "${tasks[@]}" --batch-sizes "${batches[@]}" \
        --variants "${variants[@]}"
    # The benchmark reports a variant that fails (or a peer that is missing) and goes on; here that is a failure.
    bad=$(grep -cE ': failed: |jax jit fp32 error|: not installed' "$OUT/$name.log")
    if ((bad)) && [[ ${STATUS[$name]} == ok ]]; then
        STATUS[$name]="FAILED ($bad variant(s) failed or missing: see $name.log)"
    fi
}

stage_smoke() {  # the environment on the CPU alone (JAX reference vs DeepMind's outputs, one CPU parity check)
    run_stage smoke "${SMOKE_CAP_S:-90}" env JAX_PLATFORMS=cpu "$PYTHON" -m pytest -p no:cacheprovider -q \
        parity_tests/test_jax_reference_golden.py::test_reproduces_golden_outputs \
        "parity_tests/test_parity_language.py::test_language_parity[cpu-golden]" \
        "parity_tests/test_precision_budgets.py::test_bfloat16_within_budget[cpu-language-cast]"
}

stage_tests() {
    local require=1 options=()
    [[ $CPU == 1 ]] && require=0  # rehearsal: the CUDA variants must collect and skip
    # Options of plugins the device lists; left out rather than failing the stage on an unknown option.
    ((TESTS_WORKERS > 1)) && "$PYTHON" -c "import xdist" 2> /dev/null && options+=(-n "$TESTS_WORKERS")
    "$PYTHON" -c "import pytest_timeout" 2> /dev/null && options+=(--timeout="$TEST_TIMEOUT_S")
    run_stage tests "${TESTS_CAP_S:-240}" env PERCEIVER_REQUIRE_CUDA=$require XLA_FLAGS="$GPU_XLA_FLAGS" \
        "$PYTHON" -m pytest -m "cuda and not slow" parity_tests -p no:cacheprovider -v -rfEs --durations=15 \
        "${options[@]}"
}

EAGER="ours fp32,ours bf16 autocast,ours bf16 weights,ours fp16 autocast,transformers fp32,transformers bf16 autocast"
stage_bench() { bench_stage bench off "$EAGER" 150 "$ALL_TASKS" "$ALL_BATCHES"; }
stage_tf32() { bench_stage tf32 on "ours fp32,transformers fp32" 90 "$ALL_TASKS" "$ALL_BATCHES"; }
stage_jax() { bench_stage jax off "ours fp32,jax jit fp32" 120 "$JAX_PEER_TASKS" 1; }
stage_compile() {  # two Inductor compiles of the language model: the costliest minutes, so last
    bench_stage compile off "ours fp32,ours compiled,ours bf16 weights,ours bf16 compiled frozen" 150 language 1
}

echo "=== setup at ${SECONDS}s"
setup 2>&1 | tee "$OUT/setup.log"
if ((PIPESTATUS[0])); then
    echo "device_check: setup failed (see setup.log); nothing else ran" | tee "$OUT/summary.txt"
    exit 1
fi

for stage in "${STAGES[@]}"; do
    "stage_$stage"
    [[ ${STATUS[$stage]} != ok ]] && FAILED=1
done

{
    echo "device_check summary: device $DEVICE, ${SECONDS}s of a ${BUDGET_S}s budget, logs in $OUT"
    for stage in "${STAGES[@]}"; do
        printf '%-8s %5ss  %s\n' "$stage" "${TOOK[$stage]:--}" "${STATUS[$stage]}"
    done
    if [[ -n ${TOOK[tests]:-} ]]; then  # pytest's closing line, or where a timeout stopped it
        last=$(grep -E '^=+ .*(passed|failed|skipped|error).* in ' "$OUT/tests.log" | tail -n 1)
        echo "tests: ${last:-no closing line; $(grep -c ' PASSED' "$OUT/tests.log") passed, $(grep -c ' FAILED' "$OUT/tests.log") failed so far}"
    fi
} | tee "$OUT/summary.txt"
exit "$FAILED"
