#!/bin/sh
# A local stand-in for python:3.11-slim where Docker Hub cannot be reached: Debian
# bookworm (Python 3.11) bootstrapped from this machine's own Debian mirror, imported
# into the Docker engine as one image. Run as root:
#
#   deploy/docker/base-image.sh [TAG]          # default layerscope-base:bookworm
#   docker build --network host --build-arg BASE_IMAGE=layerscope-base:bookworm .
#
# What it holds: debootstrap's minbase plus python3, python3-venv, python3-pip and
# ca-certificates; a `python` link to python3 (as in the official image); the host's
# extra CA certificates (TLS to the package registries may be intercepted on the way);
# the host's Debian sources (so `apt-get install` in a build finds the same packages);
# no apt lists, documentation or locales. An image of this TAG built from the same
# recipe is kept (label layerscope.base.recipe); LAYERSCOPE_BASE_REBUILD=1 rebuilds it.
set -eu
tag="${1:-layerscope-base:bookworm}"
suite=bookworm
here="$(cd "$(dirname "$0")" && pwd)"
recipe="$(sha256sum "$here/base-image.sh" | cut -c1-16)"

need() { command -v "$1" >/dev/null 2>&1 || { echo "base-image: needs $1 ($2)" >&2; exit 2; }; }
[ "$(id -u)" -eq 0 ] || { echo "base-image: run as root (debootstrap, docker)" >&2; exit 2; }
need debootstrap "apt-get install debootstrap"
need docker "apt-get install docker.io"

if [ "${LAYERSCOPE_BASE_REBUILD:-0}" != 1 ] \
   && [ "$(docker image inspect -f '{{index .Config.Labels "layerscope.base.recipe"}}' "$tag" 2>/dev/null)" = "$recipe" ]; then
    echo "base-image: $tag is up to date (recipe $recipe)"
    exit 0
fi

# The mirror this machine installs Debian packages from (deb822 or one-line sources).
mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -v -- '-security' | head -n 1)"
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d /tmp/layerscope-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT INT TERM
root="$work/rootfs"
echo "base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

ln -sf python3 "$root/usr/bin/python"
# The host's own CA certificates (an intercepting proxy's included), kept through any
# later update-ca-certificates in the image.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
# The host's Debian sources (bookworm, -updates, -security) instead of debootstrap's one line.
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1 \
   && grep -qs "$suite" /etc/apt/sources.list.d/*.sources; then
    for f in /etc/apt/sources.list.d/*.sources; do
        grep -qs "^URIs:.*debian" "$f" && cp "$f" "$root/etc/apt/sources.list.d/"
    done
    : >"$root/etc/apt/sources.list"
elif grep -qs "^deb .*$suite" /etc/apt/sources.list; then
    grep "^deb .*debian" /etc/apt/sources.list >"$root/etc/apt/sources.list"
fi
# No caches, lists, documentation or locales: what python:3.11-slim leaves out too.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/usr/share/locale/* "$root"/var/cache/debconf/*-old "$root"/tmp/* \
       "$root"/root/.cache
find "$root/usr/lib/python3" "$root/usr/lib/python3.11" -name __pycache__ -type d -prune \
    -exec rm -rf {} + 2>/dev/null || true

echo "base-image: importing as $tag"
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL layerscope.base.recipe=$recipe" \
    --change "LABEL layerscope.base.suite=$suite" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
docker image ls "$tag"
