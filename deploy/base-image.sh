#!/bin/sh
# Make the Dockerfile's base image locally, for hosts that can reach Debian's and PyPI's package mirrors but
# no container registry: debootstrap a minimal Debian with python3 + venv and `docker import` it under the
# tag deploy/Dockerfile names (python:3.11-slim-bookworm), so `docker build` finds it without a pull.
#
#   sudo deploy/base-image.sh            # does nothing when the tag already exists
#   sudo deploy/base-image.sh --force    # rebuild it
#
# Needs root, debootstrap and a running dockerd. Mirror: $MIRROR, else the host's apt source, else
# deb.debian.org. The image trusts the host's CA bundle (so pip also works behind a TLS-intercepting proxy
# that the host trusts) and, like the official image, has `python` and PATH-first /usr/local/bin.
# Takes ~2-4 minutes and ~200 MB.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tag=$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$here/Dockerfile" | head -n 1)
suite=bookworm  # python3 3.11, as the tag says

if [ "${1:-}" != "--force" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists (--force rebuilds it)"
    exit 0
fi

if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
fi

rootfs=$(mktemp -d /tmp/sovits-base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT INT TERM

debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$suite" "$rootfs" "$MIRROR"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

tar -C "$rootfs" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c 'CMD ["python3"]' \
    -m "debootstrap $suite minbase + python3 (deploy/base-image.sh)" \
    - "$tag"
echo "made base image $tag"
