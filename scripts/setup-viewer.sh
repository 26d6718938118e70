#!/usr/bin/env bash
# Install what tests/integration/test_viewer.py needs to show the node's results in a real PACS
# viewer: Debian chromium (headless), Orthanc's DICOMweb plugin, OHIF v3's prebuilt dist folder
# (npm package @ohif/app, cached outside the repository) and playwright (PyPI, driving the
# system chromium: no browser download). Idempotent; a second run is fast (cache hit).
#
#   scripts/setup-viewer.sh            # as root (CI): apt packages + OHIF + playwright
#   LDCT_OHIF_VERSION=3.13.2 ...       # pin another @ohif/app release
set -euo pipefail
cd "$(dirname "$0")/.."

OHIF_VERSION="${LDCT_OHIF_VERSION:-3.13.2}"
OHIF_CACHE="${LDCT_OHIF_CACHE:-$HOME/.cache/ldct-node/ohif}"
PLAYWRIGHT_SPEC="${LDCT_PLAYWRIGHT_SPEC:-playwright>=1.45}"
PYTHON="${LDCT_PYTHON:-.venv/bin/python}"

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || need_apt+=(orthanc-dicomweb)
command -v npm >/dev/null || need_apt+=(npm)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)  # text in screenshots
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup-viewer: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

dist="$OHIF_CACHE/$OHIF_VERSION/package/dist"
if [ ! -f "$dist/index.html" ]; then
    echo "setup-viewer: fetching @ohif/app@$OHIF_VERSION (prebuilt dist) into $OHIF_CACHE"
    mkdir -p "$OHIF_CACHE/$OHIF_VERSION"
    tarball="$(cd "$OHIF_CACHE" && npm pack --silent "@ohif/app@$OHIF_VERSION" | tail -n 1)"
    tar -xzf "$OHIF_CACHE/$tarball" -C "$OHIF_CACHE/$OHIF_VERSION"
    rm -f "$OHIF_CACHE/$tarball"
    if [ ! -f "$dist/index.html" ] || ! ls "$dist"/app.bundle.*.js >/dev/null 2>&1; then
        echo "setup-viewer: @ohif/app@$OHIF_VERSION has no built dist/ (index.html + app.bundle.*.js)" >&2
        rm -rf "${OHIF_CACHE:?}/$OHIF_VERSION"
        exit 1
    fi
fi

# playwright belongs in the venv that runs the tests; make the venv first if this runs before setup.sh.
[ -x "$PYTHON" ] || scripts/setup.sh --test
if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    echo "setup-viewer: pip install $PLAYWRIGHT_SPEC"
    "$PYTHON" -m pip install -q "$PLAYWRIGHT_SPEC"
fi
echo "setup-viewer: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), OHIF $OHIF_VERSION at $dist"
