#!/usr/bin/env bash
# Download the wheels a GPU machine without network needs to run the GPU check (scripts/gpu_check.sh), for
# Python 3.12 on manylinux x86-64, into .whl/ (ignored by git). Run it on a machine that reaches the package
# index, from the repository root, after `make install`: each package is pinned to the version installed in
# .venv, the versions the test suite ran with.
#
# Only what such a machine lacks is fetched: it is expected to bring PyTorch, torchvision, numpy, pillow,
# safetensors, timm, huggingface_hub, peft, httpx, anyio, click, nvidia-ml-py and other common packages (override the list
# with WHEELS="name ..."). gpu_check.sh installs whatever lies in .whl/ into a folder of its own before it runs.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
WHEELS=${WHEELS:-"open_clip_torch ftfy wcwidth fastapi starlette uvicorn python-multipart sse-starlette celery kombu
  billiard vine amqp click-didyoumean click-repl click-plugins prompt_toolkit redis sqlalchemy greenlet alembic mako
  pydantic pydantic_core pydantic-settings python-dotenv annotated-types typing-inspection psycopg psycopg-binary"}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$DEST"
specs=()
for name in $WHEELS; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
    echo "$name is not installed in $PY: run make install first" >&2; exit 1; }
  specs+=("$name==$version")
done
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
for spec in "${specs[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "$spec"
done
echo "$(ls "$DEST" | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1))"
