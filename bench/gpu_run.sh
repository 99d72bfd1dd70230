#!/usr/bin/env bash
# The GPU checks of issues #3 (MCMC), #4 (SMC) and #6 (GFN), on the device machine, one stage per call.
#
#   here, once:     bash bench/gpu_wheels.sh
#   device tool:    run(command="bash bench/gpu_run.sh tests", carry=[".whl"], timeout_s=600)
#                   ... then the stages mcmc, memory, smc, gfn (each well under the 10-minute limit)
#
# Stages: tests  - the CUDA tests (-m gpu), then the whole suite under the machine's torch 2.11;
#         mcmc   - NUTS ess/s at 1..8192 chains on CUDA, and NumPyro's on the same machine (bench_mcmc.py);
#         memory - peak GPU memory of 1024..8192 chains (bench_mcmc.py --memory);
#         smc    - particle filter steps/s at 1e3..1e7 particles on CUDA (bench_smc.py --big);
#         gfn    - GFlowNet iterations/s at batch 16..4096 on CUDA, ours against torchgfn (bench_gfn.py --sweep).
# Results and logs go to $OUT (the device tool brings them back).
set -u
stage=${1:-tests}
OUT=${OUT:-/tmp/ppl_gpu_out}
mkdir -p "$OUT" bench/results
site="$PWD/.whl/site"
if [ -d .whl ] && [ ! -d "$site" ]; then  # carried wheels into a local folder; the image's torch stays as it is
    python3 -m pip install -q --no-deps --no-index --target "$site" .whl/*.whl 2>&1 | tail -3
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
[ -d .whl/posteriordb ] && export PPL_POSTERIORDB="$PWD/.whl/posteriordb"  # carried by gpu_wheels.sh
python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
case "$stage" in
tests)
    python3 -m pytest -q -p no:cacheprovider -m gpu -rs 2>&1 | tee "$OUT/tests_gpu.log" | tail -15
    timeout 420 python3 -m pytest -q -p no:cacheprovider -x 2>&1 | tee "$OUT/tests_all.log" | tail -15 ;;
mcmc)
    timeout 570 python3 bench/bench_mcmc.py --device cuda --chains 1 64 1024 8192 --skip-pyro \
        --compile auto --models logistic_regression --out bench/results/mcmc_cuda.json 2>&1 \
        | tee "$OUT/bench_mcmc.log" | tail -20
    cp bench/results/mcmc_cuda.json "$OUT/" 2>/dev/null ;;
memory)
    timeout 570 python3 bench/bench_mcmc.py --device cuda --memory 1024 2048 4096 8192 2>&1 | tail -5
    cp bench/results/mcmc_memory_cuda.json "$OUT/" 2>/dev/null ;;
smc)
    timeout 570 python3 bench/bench_smc.py --device cuda --big --out bench/results/smc_cuda.json 2>&1 \
        | tee "$OUT/bench_smc.log" | tail -20
    cp bench/results/smc_cuda.json "$OUT/" 2>/dev/null ;;
gfn)
    timeout 570 python3 bench/bench_gfn.py --device cuda --sweep 16 64 256 1024 4096 2>&1 \
        | tee "$OUT/bench_gfn.log" | grep -E "^sweep|Error" | tail -20
    cp bench/results/gfn_sweep_cuda.json "$OUT/" 2>/dev/null ;;
*)
    echo "unknown stage $stage (tests, mcmc, memory, smc, gfn)"; exit 2 ;;
esac
