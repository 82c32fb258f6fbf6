"""Stage 2: the full dual-stream model (Video DiT + Struct DiT + bridge), optionally from a stage-1 video tower.

    python stage2_dual/train.py --preset full --data CACHE.h5 --out runs/stage2 [--init-video-from CKPT] ...
    fabric run --accelerator cuda --devices 8 --strategy fsdp stage2_dual/train.py --data ... --out ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.errors import entry  # noqa: E402
from shared.training import run_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(entry(lambda argv: run_cli("dual", argv)))
