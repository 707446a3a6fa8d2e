#!/usr/bin/env bash
# The GPU measurements of bench/README.md, as run on a lent H100/H200 machine whose python3
# has torch and pytorch-lightning but not Hydra: the wheels in .whl/ and the Fashion-MNIST
# archives in .bench-data/ travel with the working tree (see bench/README.md). With a copy of
# an earlier tree in .base/ (git archive <commit> | tar -x -C .base), its default loop is timed
# in the same invocation, for a before/after ratio on the same machine.
# Each step runs under its own timeout and writes its log to $OUT as it goes.
# To fit a short lease: BATCH_SIZES="128" (default "128 1024"), LOOPS="graph vaelab", DEFAULT_RUNS=0 skips the two
# 3-epoch train.py runs, QUALITY=1 adds the quality protocol (about 4 minutes on an H200),
# run before the epoch timings so that a lease that runs out loses the timings first.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
SITE=""
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  SITE=/tmp/site:
fi
export PYTHONPATH=$SITE$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)" | tee -a "$OUT/gpu.txt"
# Issue 25 only (ISSUE25=1 bash bench/gpu_run.sh; it skips the tests below, which a plain call runs): the
# papers' Fashion-MNIST table, 3 seeds stacked, each to its early stop, scored at k = 5000 on all 10,000 test
# images (bench/paper.py). One experiment per call, each may need most of a 10-minute call:
# EXPERIMENT=fashion_vae_paper (default), then EXPERIMENT=fashion_vampprior_paper.
# $OUT/paper.md, paper_curves.png and paper_runs/ (the runs' records: copy them to bench/paper_runs/).
if [ "${ISSUE25:-0}" = 1 ]; then
  # The fit is capped (FIT, default 7 min) so that the scoring fits the call: a run that the cap stops says so.
  timeout 570 python3 bench/quality.py --paper --seeds 1 2 3 --experiments "${EXPERIMENT:-fashion_vae_paper}" \
    --max-time "${FIT:-00:00:07:00}" --out "$OUT/paper.md" 2>&1 | tee "$OUT/paper.log"
  exit 0
fi
# Issue 24 only (ISSUE24=1 bash bench/gpu_run.sh; it skips the tests below): a first GPU look at the β study,
# STUDY=dsprites_beta (default) or dsprites_tcvae, all its jobs stacked, the fit capped at FIT (default 6 min);
# then MIG and the FactorVAE score at the protocol's sizes for the seed-0 jobs, compare.md and the sweep summary.
# $OUT/study/: compare.md with its charts, summary.*, each job's metrics.json, csv and evals/ (no checkpoints).
if [ "${ISSUE24:-0}" = 1 ]; then
  STUDY_DIR=/tmp/study
  timeout 420 python3 train.py -m experiment="${STUDY:-dsprites_beta}" hydra/launcher=stacked logger=csv \
    trainer.max_time="${FIT:-00:00:06:00}" hydra.sweep.dir=$STUDY_DIR 2>&1 | tail -30 > "$OUT/study_train.log"
  for job in $(ls -d $STUDY_DIR/*seed0* 2>/dev/null); do
    timeout 150 python3 eval.py ckpt_path="$job/checkpoints/last.ckpt" 'eval.disentanglement_metrics=[mig,factor_vae]' \
      eval.k=100 eval.max_images=2000 2>&1 | tail -5 >> "$OUT/study_eval.log"
  done
  timeout 60 python3 -m vaelab.reports.compare $STUDY_DIR --out $STUDY_DIR/compare >> "$OUT/study_eval.log" 2>&1
  timeout 60 python3 -m vaelab.reports.summary $STUDY_DIR > /dev/null 2>&1
  (cd $STUDY_DIR && find . -name '*.json' -o -name '*.csv' -o -name '*.md' -o -name '*.png' | grep -v checkpoints \
    | tar -cf - -T - | (mkdir -p "$OUT/study" && tar -xf - -C "$OUT/study"))
  exit 0
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_training_step.py tests/test_objectives.py tests/test_likelihoods.py tests/test_api.py tests/test_tcvae.py tests/test_vampprior.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15
timeout 240 python3 bench/check_graph.py 2>&1 | grep -v "^\s*$" | tee "$OUT/check_graph.log"
# Issue 13 only (ISSUE13=1 bash bench/gpu_run.sh; about 5 minutes on an H200): a default epoch against
# its training batches, whole commands against a bare Lightning script, and a 16-job sweep of 10-epoch
# jobs with joblib (8 workers) against .base (183e01c). .whl must then also hold hydra-joblib-launcher
# and joblib; the loggers are CSV only (the lent machine has no wandb).
if [ "${ISSUE13:-0}" = 1 ]; then
  timeout 200 python3 bench/bench_epoch.py --batch-sizes 128 --epochs 3 --loops graph vaelab-default \
    --vaelab-args logger=csv 2>&1 | tee "$OUT/bench_default_epoch.log"
  timeout 240 python3 bench/bench_run.py --rounds 1 --only import-torch bare-lightning default-1 default-10 \
    --out "$OUT/run_times.md" 2>&1 | tee "$OUT/bench_run.log"
  timeout 300 python3 bench/bench_sweep.py --jobs 16 --epochs 10 --launchers joblib --n-jobs 8 \
    $([ -d .base ] && echo --base .base) 2>&1 | tee "$OUT/bench_sweep.log"
  exit 0
fi
# Issue 14 only (ISSUE14=1 bash bench/gpu_run.sh; about 5 minutes on an H200): its 32-job β × seed grid of
# 10-epoch runs stacked, with joblib (8 workers), and one at a time (4 of its jobs: jobs/hour compare).
if [ "${ISSUE14:-0}" = 1 ]; then
  timeout 540 python3 bench/bench_sweep.py --jobs 32 --epochs 10 --betas 0.25 0.5 1 2 4 8 16 32 \
    --launchers stacked joblib basic --n-jobs 8 --basic-jobs 4 2>&1 | tee "$OUT/bench_stacked.log"
  exit 0
fi
BATCH_SIZES=${BATCH_SIZES:-128 1024}
LOOPS=${LOOPS:-plain graph vaelab vaelab-eager}
# A full default run (validation, checkpoints, panels, test) with and without the graph.
[ "${DEFAULT_RUNS:-1}" = 1 ] && for graph in true false; do
  timeout 180 python3 train.py data=fashion_mnist data.system_dir="$PWD/.bench-data" data.data_dir=/tmp/gpu-data logger=csv \
    trainer.max_epochs=3 trainer.enable_progress_bar=false model.cuda_graph=$graph \
    hydra.run.dir="$OUT/train_graph_$graph" >"$OUT/train_graph_$graph.log" 2>&1
  echo "cuda_graph=$graph: exit $? $(grep -o '"test/loss": [0-9.]*' "$OUT/train_graph_$graph/metrics.json" 2>/dev/null) $(grep -o 'training step: .*' "$OUT/train_graph_$graph.log" | head -1)" | tee -a "$OUT/train_default.log"
done
rm -rf "$OUT"/train_graph_*/checkpoints "$OUT"/train_graph_*/images  # only the logs come back
# The quality protocol on the GPU (QUALITY=1 bash bench/gpu_run.sh): about 4 minutes on an H200.
if [ "${QUALITY:-0}" = 1 ]; then
  timeout 540 python3 bench/quality.py --out "$OUT/quality.md" 2>&1 | tee "$OUT/quality.log"
fi
timeout 420 python3 bench/bench_epoch.py --batch-sizes $BATCH_SIZES --epochs 2 --loops $LOOPS "$@" 2>&1 | tee "$OUT/bench_gpu.log"
if [ -d .base ]; then
  PYTHONPATH=$SITE$PWD/.base/src timeout 300 python3 .base/bench/bench_epoch.py --batch-sizes $BATCH_SIZES --epochs 2 \
    --loops $(echo $LOOPS | tr " " "\n" | grep -xE "graph|vaelab" | tr "\n" " ") "$@" 2>&1 | tee "$OUT/bench_gpu_base.log"
fi
