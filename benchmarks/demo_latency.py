"""The demo page's own overhead (#38): first-frame latency and sustained frame rate of one checkpoint, measured
five ways in one process, one after the other, each `--repeats` times (medians):

- `direct`: the generation API the server calls (`shared.serving.engine.Engine.frames`), no server, on the main
  thread (warm);
- `thread`: the same on a thread started for each run, as the server ran each stream before its threads were kept
  and warmed (`shared.serving.engine.StreamThreads`): what a fresh thread costs;
- `websocket`: the server's WebSocket stream read by a Python client (protocol + JPEG, no browser);
- `page`: the page in headless Chromium (selenium), from the click on Start to each frame decoded in the page;
- `mjpeg`: the same server's multipart JPEG stream (`/api/session/ID/mjpeg`), the lighter alternative, read by a
  Python HTTP client.

    python benchmarks/demo_latency.py --ckpt RUN [--device cpu|cuda] [--seconds 4] [--repeats 3]
    python benchmarks/demo_latency.py --random-preset full --device cuda --ways direct,thread,websocket,mjpeg

`--random-preset P` serves a dual model of preset P with random weights made here (speed does not depend on the
weights): LivePortrait's 69 motion numbers, a diffusers `AutoencoderKL` of SD-VAE widths for the preset's latents and
HuBERT-base features, both random in their real layouts (as `stream_step.py --decode` and `rehearsal.py` build them).

Sustained fps: frames after the first over the time from the first to the last (the first frame's latency apart).
`direct`, `thread` and `websocket` also give where the first frame's time went, as the engine reports it (`PHASES`:
reading the inputs, the stream's graph captures, the stream's own first frame). A way that fails (a browser that
crashes) is reported as its error; the others are still measured, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stage2_dual"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402


@dataclass(frozen=True)
class DemoBench:
    """What is measured (one flag per field)."""

    ckpt: str | None = None
    """The checkpoint the demo serves (or --random-preset)."""
    random_preset: str | None = flag(None, choices=("tiny", "poc", "full"))
    """Serve a dual model of this preset with random weights, made here, instead of --ckpt."""
    ways: str = "direct,thread,websocket,page,mjpeg"
    """The ways measured, comma-separated (`page` needs Chromium and selenium)."""
    device: str = flag("cpu", choices=("cpu", "cuda"))
    """Where the model runs."""
    seconds: float = flag(4.0, check=errors.real(1.0, 60.0))
    """Length of the voice (a synthetic one) streamed."""
    repeats: int = flag(3, check=errors.integer(1))
    """Runs of each way (medians reported)."""
    graphs: bool = flag(True, check=errors.on_off)
    """The demo's `--graphs`: on a GPU, each stream through CUDA graphs and an overlapped decoder (off: eager)."""


WAYS = ("direct", "thread", "websocket", "page", "mjpeg")

PHASES = ("inputs_s", "prepare_s", "stream_first_s")
"""Where a first frame's time went, as the engine reports it: reading the inputs, this stream's graph captures, the
stream's own first frame; the rest of `first_s` is the way's (the server, the transport, the browser)."""


def rates(times: list[float], first: dict | None = None) -> dict:
    """First-frame latency (s) and sustained fps from the arrival times (s since the start) of every frame; `first`:
    the engine's first frame (its phases)."""
    out = {"first_s": times[0], "fps": (len(times) - 1) / (times[-1] - times[0]), "frames": len(times)}
    if first is not None:
        out |= {"inputs_s": first["inputs_s"], "prepare_s": first["prepare_s"], "stream_first_s": first["time"]}
    return out


def direct(engine, session) -> dict:
    t0, times, first = time.perf_counter(), [], None
    for f in engine.frames(session, {}, threading.Event()):
        times.append(time.perf_counter() - t0)
        first = first or f
    return rates(times, first)


def thread(engine, session) -> dict:
    """`direct` on a thread started for the run, as the server ran each stream before `StreamThreads`: what a fresh
    thread costs the first frame (on a GPU: its convolution plans)."""
    with concurrent.futures.ThreadPoolExecutor(1) as fresh:  # a new pool: a new thread
        return fresh.submit(direct, engine, session).result()


def websocket(url: str, sid: str) -> dict:
    import websockets

    async def run():
        t0, times, first = time.perf_counter(), [], None
        async with websockets.connect(f"{url.replace('http', 'ws')}/api/session/{sid}/stream") as ws:
            await ws.send(json.dumps({"settings": {}}))
            while True:
                m = await ws.recv()
                if isinstance(m, bytes):
                    times.append(time.perf_counter() - t0)
                    continue
                m = json.loads(m)
                if m["type"] == "error":
                    raise RuntimeError(f"the server's stream failed: {m['message']}")
                if m["type"] != "frame":
                    return rates(times, first)
                first = first or m
    return asyncio.run(run())


def mjpeg(url: str, sid: str) -> dict:
    import httpx

    t0, times, buf = time.perf_counter(), [], b""
    with httpx.stream("GET", f"{url}/api/session/{sid}/mjpeg", timeout=600) as r:
        for chunk in r.iter_bytes():
            buf += chunk
            while (end := buf.find(b"\xff\xd9")) >= 0:  # a JPEG's end-of-image marker closes each part
                times.append(time.perf_counter() - t0)
                buf = buf[end + 2:]
    return rates(times)


def page(url: str, voice: Path, ref: Path) -> dict:
    from selenium.webdriver.common.by import By
    from test_demo import _driver, _wait

    d = _driver()
    try:
        d.get(url)
        _wait(d, "demo.session !== null")
        d.find_element(By.ID, "ref-file").send_keys(str(ref))
        _wait(d, "demo.ready.reference")
        d.find_element(By.ID, "audio-file").send_keys(str(voice))
        _wait(d, "demo.ready.audio && !document.getElementById('start').disabled")
        d.find_element(By.ID, "start").click()
        _wait(d, "demo.done && demo.received > 0", timeout=600)
        first, last, n = d.execute_script("return [demo.firstFrameMs, demo.lastFrameMs, demo.received]")
        return {"first_s": first / 1e3, "fps": (n - 1) / ((last - first) / 1e3), "frames": n}
    finally:
        d.quit()


def random_run(folder: Path, preset: str) -> Path:
    """A dual run folder of `preset` with random weights that `load_model` takes: its config fitted to the random
    codec's latents, HuBERT-base's 768 features and LivePortrait's motion layout, as `train.py` would fit it."""
    import torchaudio
    from common import random_sd_vae

    from shared import config as C
    from shared import runs
    from shared.data.cache import CacheMeta
    from shared.data.codecs import get_codec
    from shared.data.features import get_audio_features
    from shared.data.trackers.liveportrait import LAYOUT
    from shared.models import DualForce
    from shared.training.cli import data_shapes

    torch.manual_seed(0)
    m = C.get_preset(preset).model
    random_sd_vae(m.latent_channels).save_pretrained(folder / "vae")  # factor 8, as stream_step.py decodes
    torch.save(torchaudio.models.hubert_base().state_dict(), folder / "hubert_base.pt")
    codec = get_codec(f"diffusers-kl:{folder / 'vae'}")
    feats = get_audio_features(f"hubert-base:{folder / 'hubert_base.pt'}")
    size = 8 * m.latent_size
    meta = CacheMeta(size, codec.latent_shape(size), codec.spec(), "liveportrait", tuple(LAYOUT), feats.spec(),
                     feats.dim)
    cfg = C.override(C.get_preset(preset), {**data_shapes(meta), "model.bridge_mode": "dual"})
    run = folder / "run"
    run.mkdir()
    runs.save_config(cfg, run)
    runs.save_data_meta(meta, run)
    runs.save_weights(run, 1, {k: v.bfloat16() for k, v in DualForce(cfg.model).state_dict().items()})
    return run


def main(argv=None) -> int:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, DemoBench)
    o = DemoBench(**vars(ap.parse_args(argv)))
    if (o.ckpt is None) == (o.random_preset is None):
        raise errors.UserError("give --ckpt RUN or --random-preset PRESET (one of them)")
    unknown = set(o.ways.split(",")) - set(WAYS)
    if unknown:
        raise errors.UserError(f"--ways: {', '.join(sorted(unknown))} unknown; use {', '.join(WAYS)}")
    import uvicorn
    from PIL import Image
    from scipy.io import wavfile
    from skimage import data

    import demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, voice = tmp / "face.png", tmp / "voice.wav"
        Image.fromarray(data.astronaut()[::4, ::4]).save(ref)
        t = np.arange(int(o.seconds * 16000)) / 16000
        wavfile.write(voice, 16000, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32))
        (tmp / "server").mkdir()
        ckpt = o.ckpt or str(random_run(tmp, o.random_preset))
        app, engine = demo.build(demo.DemoOptions(ckpt=ckpt, device=o.device, max_seconds=o.seconds + 1,
                                                  graphs=o.graphs),
                                 tmp / "server")
        engine.threads.wait_warm()  # as demo.py does before it serves
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        threading.Thread(target=srv.run, daemon=True).start()
        while not srv.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
        import httpx

        sid = httpx.post(f"{url}/api/session").json()["id"]
        for kind, f in (("reference", ref), ("audio", voice)):
            r = httpx.post(f"{url}/api/session/{sid}/{kind}", files={"file": (f.name, f.read_bytes())}, timeout=120)
            if r.status_code != 200:
                raise errors.UserError(f"the server refused the {kind} {f.name}: {r.text}")
        session = app.state.sessions.get(sid)
        ways = {"direct": lambda: direct(engine, session), "thread": lambda: thread(engine, session),
                "websocket": lambda: websocket(url, sid),
                "page": lambda: page(url, voice, ref), "mjpeg": lambda: mjpeg(url, sid)}
        ways = {k: v for k, v in ways.items() if k in o.ways.split(",")}
        out = {"ckpt": o.ckpt or f"random {o.random_preset}", "device": o.device, "seconds": o.seconds,
               "preset": engine.cfg.preset, "graphs": engine.graphs, "stream_threads_warm_s": engine.threads.warm_s,
               "stream_threads_warm_errors": [repr(e) for e in engine.threads.warm_errors]}
        direct(engine, session)  # warm-up (allocations, first-call costs)
        for name, way in ways.items():
            out[name] = measure(way, o.repeats)
            print(name, json.dumps(out[name]), flush=True)
        srv.should_exit = True
    print(json.dumps(out, indent=1))
    return 1 if any("error" in out[n] for n in ways) else 0


def measure(way, repeats: int) -> dict:
    """The medians of `repeats` runs of one way, or {"error"} when one fails (a crashed browser, a failed stream): the
    other ways are still measured and printed."""
    try:
        runs = [way() for _ in range(repeats)]
    except Exception as e:  # a benchmark of several ways: one way's failure is its result, not the run's end
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return {k: statistics.median(r[k] for r in runs) for k in ("first_s", "fps", "frames", *PHASES) if k in runs[0]}


if __name__ == "__main__":
    sys.exit(errors.entry(main))
