#!/usr/bin/env bash
# Build local base images for the container backend without any container registry:
#   bnmatrix-local/debian:bookworm   a Debian rootfs from debootstrap, imported with `docker import`
#   bnmatrix-local/python:X.Y        Debian's own Python (3.11 on bookworm) in a venv, or a copy
#                                    of an interpreter of this host (pyenv's versions/X.Y.*)
# and write image-map.yaml next to matrix.yaml so that python:X.Y-slim cells use them.
# Images that exist are reused; --rebuild builds them again.
#
# usage: docker/base/build.sh [--rebuild] [X.Y ...]        (default: 3.7 3.11)
# needs: root (debootstrap), a Docker daemon, debootstrap, and Debian's mirror (DEBIAN_MIRROR).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-bookworm}
debian_python=3.11   # the python3 of Debian bookworm
base=bnmatrix-local/debian:$suite
map_file=${IMAGE_MAP_FILE:-$repo/image-map.yaml}
rebuild=0
versions=()
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    [0-9].[0-9]*) versions+=("$arg") ;;
    *) echo "build.sh: unknown argument '$arg' (expected --rebuild or a Python version like 3.7)" >&2; exit 2 ;;
  esac
done
[ ${#versions[@]} -gt 0 ] || versions=(3.7 3.11)

exists() { docker image inspect "$1" >/dev/null 2>&1 && [ "$rebuild" = 0 ]; }
# The classic builder: Debian's docker client has BuildKit, the one some machines ship lacks buildx.
build() { DOCKER_BUILDKIT=0 docker build --quiet "$@" 2>"$work/build.err" || { cat "$work/build.err" >&2; return 1; }; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if exists "$base"; then
  echo "reusing $base"
else
  echo "debootstrap $suite from $mirror ..."
  # Shared libraries a copied CPython links against, and what pip needs to reach an index.
  libs=ca-certificates,libssl3,libffi8,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libreadline8,libncursesw6,libgdbm6,libuuid1,libexpat1
  debootstrap --variant=minbase --include="$libs" "$suite" "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # A proxy's CA that this host trusts must be trusted inside too.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/"; fi
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL org.bnmatrix.tool=bnmatrix' \
    - "$base" >/dev/null
  rm -rf "$work/rootfs"
  echo "built $base"
fi

for version in "${versions[@]}"; do
  image=bnmatrix-local/python:$version
  if exists "$image"; then echo "reusing $image"; continue; fi
  context="$work/python-$version"
  mkdir -p "$context"
  if [ "$version" = "$debian_python" ]; then
    cat > "$context/Dockerfile" <<DOCKERFILE
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:\$PATH
LABEL org.bnmatrix.tool=bnmatrix org.bnmatrix.python="Debian's python3 $version"
DOCKERFILE
  else
    pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    source_dir=$(ls -d "$pyenv_root/versions/$version".* 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$source_dir" ] || [ ! -x "$source_dir/bin/python$version" ]; then
      echo "build.sh: no Python $version to copy (looked for $pyenv_root/versions/$version.*)" >&2
      exit 1
    fi
    # Copy the interpreter without its installed packages (pip is reinstalled with ensurepip).
    mkdir -p "$context/python"
    tar -C "$source_dir" --exclude="./lib/python$version/site-packages/*" --exclude='__pycache__' -c . \
      | tar -C "$context/python" -x
    cat > "$context/Dockerfile" <<DOCKERFILE
FROM $base
COPY python /opt/python
# pyenv builds CPython with --enable-shared: the interpreter needs its own lib/.
ENV LD_LIBRARY_PATH=/opt/python/lib PATH=/opt/python/bin:\$PATH
RUN ln -sf python$version /opt/python/bin/python3 && ln -sf python$version /opt/python/bin/python \\
 && python3 -m ensurepip --default-pip >/dev/null && python3 -c "import ssl, sqlite3, ctypes, venv"
LABEL org.bnmatrix.tool=bnmatrix org.bnmatrix.python="copy of $(basename "$source_dir") from the build host"
DOCKERFILE
  fi
  build -t "$image" "$context" >/dev/null
  docker run --rm "$image" python3 -c "import sys; print('built $image:', sys.version.split()[0])"
done

{
  echo "# Written by docker/base/build.sh: matrix images -> local images built without a registry."
  echo "# bnmatrix reads this file next to matrix.yaml; --image-map FROM=TO overrides an entry."
  for version in $(docker images bnmatrix-local/python --format '{{.Tag}}' | sort -V); do
    echo "python:$version-slim: bnmatrix-local/python:$version"
  done
} > "$map_file"
echo "wrote $map_file"
