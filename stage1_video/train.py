"""Stage 1: from-scratch pretraining of the causal Video DiT (bridge_mode = video_only).

    python stage1_video/train.py --preset full --data CACHE.h5 --out runs/stage1 [--max-steps N] ...
    fabric run --accelerator cuda --devices 8 --strategy fsdp stage1_video/train.py --data ... --out ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.errors import entry  # noqa: E402
from shared.training import run_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(entry(lambda argv: run_cli("video", argv)))
