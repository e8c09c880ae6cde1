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

# The digest of what the image's dependency layer is made of: the Dockerfile, the lock,
# pyproject.toml, the lock check, the variant and the base image (its id when it is here). The
# image is labelled org.medens.deps=<digest>, so a later build can tell whether the engine will
# take that layer from its cache.
image_deps_digest() {
  local variant="$1" base="$2" base_id
  base_id="$("$CONTAINER_ENGINE" image inspect --format '{{.Id}}' "$base" 2>/dev/null || echo "$base")"
  { cat Dockerfile requirements.lock pyproject.toml scripts/check_lock.py; echo "$variant $base_id"; } \
    | sha256sum | cut -c1-16
}

# Fails, saying so, when the engine's storage has too little room for the build. The dependency
# layer is about 7 GB (PyPI's torch with its CUDA wheels), written once as a layer and once more
# while it is committed: about 20 GB free when it has to be built, 3 GB when an image with the
# same digest shows the engine has it cached (then the build writes little more than medens).
image_space_check() {
  local digest="$1" need_gb cached storage free_gb
  if [ -n "$("$CONTAINER_ENGINE" images -q --filter "label=org.medens.deps=$digest" 2>/dev/null)" ]; then
    need_gb=3; cached="cached"
  else
    need_gb=20; cached="not cached"
  fi
  storage="$("$CONTAINER_ENGINE" info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)"
  [ -d "$storage" ] || storage=/
  free_gb=$(( $(df -Pk "$storage" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "image.sh: only ${free_gb} GB free under $storage; building the image needs about ${need_gb} GB" \
         "(dependency layer $digest $cached; remove old images: $CONTAINER_ENGINE image prune -f)" >&2
    return 1
  fi
  echo "== space: ${free_gb} GB free under $storage, about ${need_gb} GB needed (dependency layer $digest $cached)"
}
