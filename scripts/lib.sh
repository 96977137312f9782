# Shared helpers for the scripts in this folder (sourced, not run).
# shellcheck shell=bash

# Every container, image and network the project creates carries this label; cleanup
# removes only what carries it.
PROJECT_LABEL="io.github.celery-toolkit.project"
export PROJECT_LABEL
IMAGE_REPO="${CELERY_TOOLKIT_IMAGE_REPO:-celery-toolkit/debian}"

die() { echo "error: $*" >&2; exit 1; }

image_tag() { echo "$IMAGE_REPO:$1"; }

# require_cmd NAME "how to install it"
require_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is missing: install it with: $2"
}

docker_ready() {
  docker info >/dev/null 2>&1 \
    || die "the Docker engine is not answering: start it (systemctl start docker, or 'dockerd &' where there is no systemd) and make sure this user may use it"
}

# The Debian mirror this machine's apt already uses (http), else deb.debian.org.
debian_mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'http://[^ ]*debian[^ ]*' | grep -v security | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}
