#!/usr/bin/env bash
# Start (or resume) training of the default model in the background:   bash recipes/resume_default.sh [MINUTES]
# Sessions 1-21 ran it at every session start; the run is paused at its plateau (MODEL_CARD status and target
# points: what would move it is more real speakers, more compute, a larger network), and resumes from here.
# It installs what it needs (make install, the recipe's apt packages), rebuilds the speaker pools and fixed
# sets if data/ is missing (about 3 minutes, deterministic), then resumes from runs/default/last.pt when this
# machine has it, else from the committed recipes/state/default-latest (weights, step, lr schedule).
# Before the session ends: python recipes/publish_default.py  (copies the best weights into models/).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-150}"
make install >/dev/null
[ -f data/pools/speakers.json ] || .venv/bin/python recipes/make_data.py --out data   # 16 and 8 kHz sets, n 120
# pools built before a source was added to the recipe get just the new speakers (the others stay as they are);
# a rate whose sets were never built (8 kHz on machines that built 16 kHz only) gets them
.venv/bin/python recipes/make_data.py --out data --stage update \
  || echo "resume_default.sh: pool update failed; training on the existing pools" >&2
mkdir -p runs/default
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_TOP_PAD_=268435456
nohup setsid .venv/bin/python recipes/train_default.py ${THREADS:+--threads "$THREADS"} --minutes "$minutes" \
  >> runs/default/train.log 2>&1 &
echo "training in the background: tail -f runs/default/train.log"
