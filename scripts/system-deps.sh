#!/usr/bin/env bash
# Debian packages the test suite uses, installed when missing:
#   chromium       the HTML report is opened in a real headless browser
#   poppler-utils  pdftotext, the native tool of examples/pinned_env.py
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "the tests need: apt-get install ${need[*]} (run as root, or install them first)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
