# Sourced by scripts/image.sh and the image test: the container engine and the settings this
# workplace's podman needs. On an ordinary machine docker or podman needs none of them; set
# CONTAINER_ENGINE=docker (or keep podman) and MEDENS_PODMAN_HERE=0.
#
# Here (Debian's podman 4.3 in a sandbox without systemd): the runc runtime, the cgroupfs cgroup
# manager, and no default ulimits (the sandbox refuses raising RLIMIT_NOFILE), passed through
# CONTAINERS_CONF. As root, the Debian packages are installed when missing.

CONTAINER_ENGINE="${CONTAINER_ENGINE:-podman}"
MEDENS_PODMAN_HERE="${MEDENS_PODMAN_HERE:-1}"
CONTAINER_PACKAGES="podman runc mmdebstrap"

containers_setup() {
  local root="$1"
  if ! command -v "$CONTAINER_ENGINE" >/dev/null 2>&1 || { [ "$CONTAINER_ENGINE" = podman ] && ! command -v runc >/dev/null 2>&1; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing Debian packages: $CONTAINER_PACKAGES" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $CONTAINER_PACKAGES >/dev/null
    else
      echo "missing $CONTAINER_ENGINE (as root: apt-get install $CONTAINER_PACKAGES)" >&2
      return 1
    fi
  fi
  if [ "$CONTAINER_ENGINE" = podman ] && [ "$MEDENS_PODMAN_HERE" = 1 ]; then
    mkdir -p "$root/build/containers"
    cat > "$root/build/containers/containers.conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
    export CONTAINERS_CONF="$root/build/containers/containers.conf"
  fi
}

# True when the engine can start a container here (used by .ci/run to decide on `make image-test`).
containers_can_run() {
  "$CONTAINER_ENGINE" info >/dev/null 2>&1
}
