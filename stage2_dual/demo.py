"""A live demo in the browser: pick a reference portrait and a voice, press start, and watch the talking head and
its generated 3-D motion stream in as they are made, the voice playing in sync.

    python stage2_dual/demo.py --ckpt RUN [--device auto] [--port 7860] [--host 127.0.0.1]

RUN: a dual (or video-only) run folder or checkpoint, e.g. the PoC's `runs/poc/core/variants/dual` after
`python stage0_poc/run.py` (its samples become the page's examples). Open http://127.0.0.1:7860. Uploads live in a
temporary folder per viewer, removed when the server stops; the server binds to 127.0.0.1 unless --host says
otherwise.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.errors import integer, real  # noqa: E402


@dataclass(frozen=True)
class DemoOptions:
    """The server (one flag per field)."""

    ckpt: str = flag()
    """Run folder (its latest checkpoint), step folder, or weights .pt of a dual or video-only model."""
    device: str = flag("auto", check=errors.device)
    """auto | cpu | cuda[:N]."""
    port: int = flag(7860, check=integer(1, 65535))
    """Port to serve on."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 serves every network interface (anyone who reaches this machine can use it). The
    server answers only to this name and the loopback ones (`shared.serving.guard`: DNS rebinding); under 0.0.0.0 to
    any."""
    examples: str | None = None
    """Folder of example images and voices (default: the PoC run's samples beside the checkpoint, if any)."""
    max_upload_mb: float = flag(20.0, check=real(0, lo_open=True))
    """Largest upload."""
    max_seconds: float = flag(60.0, check=real(0, lo_open=True))
    """Longest voice, in seconds."""
    max_sessions: int = flag(8, check=integer(1))
    """Viewers' sessions kept at once."""
    threads: int | None = flag(None, check=integer(1))
    """CPU threads for torch (default: the cores not already busy)."""
    graphs: bool = flag(True, check=errors.on_off)
    """On a GPU, each viewer's stream through CUDA graphs of its own and an overlapped decoder (off: eager)."""


def build(o: DemoOptions, root: Path):
    """The app over a loaded engine, its sessions under `root`."""
    from shared.sampling.generation import cpu_threads
    from shared.serving.app import build_app
    from shared.serving.engine import Engine, find_examples
    from shared.serving.guard import allowed_hosts
    from shared.serving.sessions import Limits, Sessions

    if o.threads is not None or not torch.cuda.is_available():
        torch.set_num_threads(o.threads or cpu_threads())
    device = torch.device("cuda" if o.device == "auto" and torch.cuda.is_available() else
                          "cpu" if o.device == "auto" else o.device)
    if o.examples is not None and not Path(o.examples).is_dir():
        raise errors.UserError(f"--examples {o.examples}: not a folder")
    engine = Engine(o.ckpt, device, graphs=o.graphs, workers=o.max_sessions)  # a stream thread per session
    (root / "examples").mkdir()
    (root / "sessions").mkdir()
    examples = find_examples(engine.run, Path(o.examples) if o.examples else None, root / "examples")
    sessions = Sessions(root / "sessions", Limits(o.max_upload_mb, o.max_seconds, o.max_sessions),
                        engine.meta.image_size)
    return build_app(engine, sessions, examples, allowed_hosts(o.host)), engine


def main(argv=None) -> None:
    ap = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fields(ap, DemoOptions)
    o = DemoOptions(**vars(ap.parse_args(argv)))
    try:
        import uvicorn
    except ImportError:
        raise errors.UserError("the demo needs its server: pip install -e '.[demo]'") from None
    with tempfile.TemporaryDirectory(prefix="dualforce-demo-") as tmp:
        app, engine = build(o, Path(tmp))
        if engine.device.type == "cuda":  # each stream thread's cuDNN plans, before the first viewer (`StreamThreads`)
            print(f"warming {o.max_sessions} stream threads ...", flush=True)
            if not engine.threads.wait_warm(600):
                print("warning: the stream threads are still warming after 600 s; serving anyway", file=sys.stderr)
            for e in engine.threads.warm_errors[:1]:
                print(f"warning: a stream thread could not warm up ({type(e).__name__}: {e}); its viewers' first "
                      f"frames come later", file=sys.stderr)
        print(f"serving {engine.cfg.preset} {engine.cfg.model.bridge_mode} on {engine.device}: "
              f"http://{o.host}:{o.port}  (Ctrl-C stops)", flush=True)
        uvicorn.run(app, host=o.host, port=o.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(errors.entry(main))
