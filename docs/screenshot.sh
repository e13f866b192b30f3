#!/usr/bin/env bash
# Regenerates docs/tensorboard-*.png from a finished run: `bash docs/screenshot.sh lightning_logs/version_0`.
# Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
run=${1:?usage: bash docs/screenshot.sh lightning_logs/version_N}
port=6123
.venv/bin/tensorboard --logdir_spec "$(basename "$run"):$run" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/data/runs" >/dev/null && break; sleep 1; done
shoot() {  # shoot NAME URL-FRAGMENT
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --window-size=1400,1700 \
    --virtual-time-budget=15000 --user-data-dir="$(mktemp -d)" \
    --screenshot="docs/tensorboard-$1.png" "http://127.0.0.1:$port/#$2" 2>/dev/null
}
shoot scalars "scalars&tagFilter=acc%7Closs"
shoot images images
