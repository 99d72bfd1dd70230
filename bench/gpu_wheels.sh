#!/usr/bin/env bash
# Download the Python packages the GPU machine lacks into .whl/ (git-ignored), for the device tool's `carry`.
#
# The GPU machine's image has Python 3.12, torch 2.11, pytest, hypothesis, numpy, scipy, pandas,
# xarray, matplotlib, h5py, networkx, tqdm, opt-einsum, einops, torch-geometric and numpyro, and
# nothing can be fetched there. It lacks Pyro, ArviZ (with two small dependencies) and torchgfn
# (the GFlowNet benchmark's anchor, with its own). Pure-Python wheels are platform-free; tensordict
# and orjson are binary, fetched for CPython 3.12 on manylinux x86_64. The posteriordb references are
# copied in too. Then: bench/gpu_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip download -q --no-deps -d .whl pyro-ppl pyro-api "arviz>=0.17,<1.0" xarray-einstats h5netcdf platformdirs \
    torchgfn==2.4.1 dill pyvers linear-attention-transformer axial-positional-embedding colt5-attention \
    hyper-connections linformer local-attention product-key-memory
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl tensordict orjson
# the posteriordb references: ../shared beside the checkout does not travel to the device machine
pdb="${PPL_POSTERIORDB:-../shared/posteriordb}"
if [ -d "$pdb" ]; then rm -rf .whl/posteriordb && cp -r "$pdb" .whl/posteriordb; else echo "no posteriordb folder at $pdb"; fi
du -sh .whl
