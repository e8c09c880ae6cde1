#!/usr/bin/env bash
# Build the medens image (`make image`): a local Debian bookworm base made with mmdebstrap (or any
# base, IMAGE_BASE=python:3.11-slim), every Python package from a wheelhouse built on this
# machine from requirements.lock and mounted into the build, which runs without network.
#
#   scripts/image.sh [cpu|cuda]    env: IMAGE_NAME (localhost/medens), IMAGE_TAG (the package version),
#                                  IMAGE_BASE (local | an image reference), PYTHON (the .venv's python)
# Writes build/image.json: the reference, variant, base, build seconds and size.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/containers.sh
source scripts/containers.sh
containers_setup "$root"

variant="${1:-cpu}"
case "$variant" in cpu) suffix="" ;; cuda) suffix="-cuda" ;; *) echo "variant must be cpu or cuda" >&2; exit 2 ;; esac
PYTHON="${PYTHON:-.venv/bin/python}"
version="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
IMAGE_NAME="${IMAGE_NAME:-localhost/medens}"
IMAGE_TAG="${IMAGE_TAG:-$version}"
IMAGE_BASE="${IMAGE_BASE:-local}"
ref="$IMAGE_NAME:$IMAGE_TAG$suffix"
start=$(date +%s)

if [ "$IMAGE_BASE" = local ]; then
  base="localhost/medens-base:bookworm"
  if ! "$CONTAINER_ENGINE" image exists "$base" 2>/dev/null; then
    echo "== base image $base (mmdebstrap bookworm, python3 + python3-venv, from this machine's apt sources)"
    mkdir -p build/base
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm build/base/bookworm.tar
    "$CONTAINER_ENGINE" import --change 'CMD ["python3"]' build/base/bookworm.tar "$base" >/dev/null
    rm -f build/base/bookworm.tar
  fi
else
  base="$IMAGE_BASE"
fi

deps_digest="$(image_deps_digest "$variant" "$base")"
image_space_check "$deps_digest" || exit 1

echo "== wheelhouse build/wheelhouse (requirements.lock; torch and torchvision as the lock pins them)"
mapfile -t deps < <("$PYTHON" -c 'import tomllib
for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]: print(d.replace(" ", ""))')
"$PYTHON" -m pip wheel --quiet -w build/wheelhouse -c requirements.lock pip setuptools "${deps[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true

echo "== $CONTAINER_ENGINE build $ref (VARIANT=$variant, base $base, no network)"
"$CONTAINER_ENGINE" build --network none -v "$root/build/wheelhouse:/wheels:ro" \
  --build-arg "PYTHON_IMAGE=$base" --build-arg "VARIANT=$variant" \
  --build-arg "PIP_SOURCE=--no-index --find-links /wheels" --label "org.medens.deps=$deps_digest" \
  -t "$ref" -f Dockerfile .
# the previous build of this tag is now a dangling image of several GB: drop it
"$CONTAINER_ENGINE" image prune -f >/dev/null 2>&1 || true
seconds=$(( $(date +%s) - start ))
size=$("$CONTAINER_ENGINE" image inspect --format '{{.Size}}' "$ref")
printf '{"image": "%s", "variant": "%s", "base": "%s", "build_seconds": %d, "size_bytes": %d}\n' \
  "$ref" "$variant" "$base" "$seconds" "$size" > build/image.json
echo "built $ref in ${seconds} s: $(( size / 1000000 )) MB (build/image.json)"
