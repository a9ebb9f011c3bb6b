#!/usr/bin/env bash
# Debian packages the test suite uses, installed when missing:
#   chromium       the HTML report is opened in a real headless browser
#   poppler-utils  pdftotext, the native tool of examples/pinned_env.py
#   unar           lsar and unar: rarfile pipes compressed RAR members through unar,
#                  and the tests check their RAR archives with lsar
#   libarchive-tools  bsdtar, the tests' second reader of their RAR archives
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
command -v unar >/dev/null 2>&1 && command -v lsar >/dev/null 2>&1 || need+=(unar)
command -v bsdtar >/dev/null 2>&1 || need+=(libarchive-tools)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "the tests need: apt-get install ${need[*]} (run as root, or install them first)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
