#!/usr/bin/env bash
# Download into .whl/ the wheels the lent GPU machine lacks, for scripts/device_check.sh to install there
# (carry: [".whl"]). Run here, where PyPI is reachable; the device machine reaches nothing.
#
# The device's Python 3.12 (torch 2.11 cu130, jax 0.11.2 with its CUDA plugin, transformers 5.17, pytest with
# pytest-timeout and pytest-xdist) has no Haiku: dm-haiku (constraints.txt's pin) and jmp (its mixed-precision
# dependency) travel. tabulate, which haiku imports at import time, is on the device's package list but travels
# too: 40 KiB against a wasted device start should that list be stale. huggingface_hub stays at the device's
# 1.33: the CUDA tests and the benchmark never reach the zoo downloader, 2.4 would need httpx2 as well, and
# transformers 5.17 asks for hub < 2. All are pure-Python wheels; the platform flags only keep pip from
# choosing anything built for this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(dm-haiku==0.0.17 jmp==0.0.4 tabulate==0.10.0)
LIMIT_MIB=48  # the tool carries 64 MiB in all: the tree (~13 MiB) plus these

rm -rf .whl && mkdir .whl  # exactly this list: a stale wheel would be installed too
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"

ls -l .whl
wheels_kib=$(du -sk .whl | cut -f1)
tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
echo "wheels: $wheels_kib KiB; tree sent to the device: $((tree_kib / 1024)) MiB;" \
     "together $(((wheels_kib + tree_kib) / 1024)) MiB of the 64 MiB the device tool carries"
if (( wheels_kib + tree_kib > LIMIT_MIB * 1024 )); then
    echo "device_wheels: more than $LIMIT_MIB MiB to carry; the device tool takes 64 MiB in all" >&2
    exit 1
fi
