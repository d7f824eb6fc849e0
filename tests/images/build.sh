#!/usr/bin/env bash
# Build the local container images that the molecule scenarios and the fleet benchmark use.
#
# No registry is reachable from the test machines, so the images come from debootstrap and
# `docker import`, from Debian's packages only. Idempotent: an image whose recipe label
# matches this script's recipe is kept; otherwise it is (re)built.
#
#   tests/images/build.sh            build what is missing
#   tests/images/build.sh --force    rebuild
#
# Images:
#   gpulab-mps/debian-systemd:bookworm   systemd as PID 1, python3 (venv, packaging: what ansible.builtin.pip needs), dbus, procps: a GPU host
#                                        without its GPU (molecule adds the stand-ins in prepare)
#
# Environment: DEBIAN_MIRROR (default: the first Debian URI of this machine's apt sources, else
# debootstrap's own default), DEBIAN_SUITE (bookworm), IMAGE_PREFIX (gpulab-mps).
set -euo pipefail

SUITE="${DEBIAN_SUITE:-bookworm}"
PREFIX="${IMAGE_PREFIX:-gpulab-mps}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (start dockerd: see .ci/run)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"

mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$( { grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}';
           grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } \
         | grep -E '/debian/?$' | head -n1 || true)
  echo "${uri}"
}

# build NAME PACKAGES: one image from a minbase debootstrap plus PACKAGES.
build() {
  local name="$1" packages="$2"
  local recipe; recipe=$(printf '%s|%s|%s' "$SUITE" "$packages" "3" | sha256sum | cut -c1-16)
  local have; have=$(docker image inspect --format '{{ index .Config.Labels "gpulab.recipe" }}' "$name" 2>/dev/null || true)
  if [[ $FORCE -eq 0 && "$have" == "$recipe" ]]; then
    log "$name is up to date (recipe $recipe): skipped"
    return
  fi
  local root; root=$(mktemp -d /var/tmp/gpulab-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  local started=$SECONDS
  log "building $name: debootstrap $SUITE with $packages"
  local m; m=$(mirror)
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$root" ${m:+"$m"} >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; die "debootstrap of $name failed"; }
  rm -f "$root.log"
  # Trim what a test host never needs; keep the image small and quick to start.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  # systemd in a container: no getty, no udev, no remount of the root file system.
  if [[ -x "$root/lib/systemd/systemd" ]]; then
    for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
                systemd-remount-fs.service systemd-firstboot.service sys-kernel-debug.mount \
                systemd-modules-load.service; do
      ln -sfn /dev/null "$root/etc/systemd/system/$unit"
    done
    : >"$root/etc/machine-id"
  fi
  tar -C "$root" -c . | docker import \
      --change 'ENV container=docker' \
      --change 'LABEL gpulab.recipe='"$recipe" \
      --change 'CMD ["/sbin/init"]' \
      - "$name" >/dev/null
  log "built $name in $((SECONDS - started)) s"
}

build "$PREFIX/debian-systemd:$SUITE" "systemd,systemd-sysv,dbus,python3,python3-venv,python3-packaging,procps"
