"""stage2_dual/demo.py (#38): the server's sessions, uploads and stream, then the page in a real browser (headless
Debian Chromium driven by selenium): frames arrive and change, the motion plot fills, the readouts move, a bad
upload shows its message, two viewers stream at once."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from shared.training import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stage2_dual"))
import demo  # noqa: E402


def _wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    wavfile.write(path, 16000, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32))
    return path


def _png(path: Path) -> Path:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()[::4, ::4]).save(path)  # 128 px: a real photograph
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny dual run (a few steps on ingested SynthTalk), a reference, voices and a bad image."""
    d = tmp_path_factory.mktemp("demo")
    py = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, check=True, capture_output=True)  # noqa: E731
    py("shared.data.synth", "--out", str(d / "st"), "--clips", "2", "--seconds", "1.6", "--size", "32")
    py("shared.data.ingest", str(d / "st"), "--out", str(d / "c.h5"), "--size", "32", "--struct", "explicit",
       "--min-frames", "20")
    run_cli("dual", ["--preset", "tiny", "--data", str(d / "c.h5"), "--out", str(d / "run"), "--accelerator", "cpu",
                     "--max-steps", "2", "--sample-every", "0"])
    (d / "bad.png").write_text("not an image")
    return {"run": d / "run", "ref": _png(d / "face.png"), "voice": _wav(d / "voice.wav", 2.0),
            "long": _wav(d / "long.wav", 4.0), "bad": d / "bad.png", "root": d}


def _app(files, tmp_path, **kw):
    root = tmp_path / "server"
    root.mkdir()
    o = demo.DemoOptions(ckpt=str(files["run"]), device="cpu", max_seconds=3.0, **kw)
    return demo.build(o, root)[0], root


@pytest.fixture()
def client(files, tmp_path):
    from starlette.testclient import TestClient

    app, root = _app(files, tmp_path, max_upload_mb=1.0)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:  # the name the server answers to
        connect = c.websocket_connect  # which names its host "testserver" whatever base_url says
        c.websocket_connect = lambda url, headers=None: connect(url, headers={"host": "127.0.0.1:7860",
                                                                               **(headers or {})})
        c.root = root
        yield c


def _session(c, files) -> str:
    sid = c.post("/api/session").json()["id"]
    assert c.post(f"/api/session/{sid}/reference", files={"file": ("face.png", files["ref"].read_bytes())}).json()["ok"]
    r = c.post(f"/api/session/{sid}/audio", files={"file": ("voice.wav", files["voice"].read_bytes())}).json()
    assert r["seconds"] == pytest.approx(2.0, abs=0.01)
    return sid


def test_a_session_streams_every_frame_with_its_motion(client, files):
    info = client.get("/api/info").json()
    assert info["motion"] == ["jaw", "yaw", "pitch", "roll"] and info["defaults"]["denoise_steps"] >= 1
    sid = _session(client, files)
    assert client.get(f"/api/session/{sid}/audio").content == files["voice"].read_bytes()
    with client.websocket_connect(f"/api/session/{sid}/stream") as ws:
        ws.send_json({"settings": {"denoise_steps": 2, "seed": 3}})
        frames, jpegs = [], 0
        while (m := ws.receive_json())["type"] == "frame":
            frames.append(m)
            jpegs += ws.receive_bytes()[:2] == b"\xff\xd8"  # a JPEG's start-of-image marker
    assert m["type"] == "done" and len(frames) == jpegs == 50  # 2 s at 25 fps
    assert [f["index"] for f in frames] == list(range(50)) and all(len(f["motion"]) == 4 for f in frames)
    # the first frame says where its latency went (the engine's phases: inputs, graph captures), the others do not
    assert frames[0]["inputs_s"] > 0 and frames[0]["prepare_s"] >= 0 and "inputs_s" not in frames[1]


def _frames(engine, session, seed: int) -> np.ndarray:
    return np.stack([f["frame"] for f in engine.frames(session, {"seed": seed}, threading.Event())]).astype(np.float32)


def test_a_cpu_engine_streams_eagerly(files, tmp_path):
    """--graphs asks for CUDA graphs; off a GPU there are none to capture: the same eager stream either way."""
    from shared.serving.sessions import Session

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    on = _app(files, tmp_path / "a", graphs=True)[0].state.engine
    off = _app(files, tmp_path / "b", graphs=False)[0].state.engine
    assert on.graphs is False and off.graphs is False
    s = Session("s", tmp_path, reference=str(files["ref"]), audio=files["voice"])
    got, want = _frames(on, s, 3), _frames(off, s, 3)
    assert got.shape[0] == 50 and np.array_equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs per viewer: a GPU")
def test_two_viewers_stream_through_graphs_of_their_own_as_eagerly(files, tmp_path):
    """On a GPU each viewer's stream captures graphs of its own while another streams (thread-local capture): both
    streams' frames are those of the eager engine with the same seeds (bf16 on both paths: to a grey level)."""
    from shared.serving.sessions import Session

    root = tmp_path / "g"
    root.mkdir()
    graphed = demo.build(demo.DemoOptions(ckpt=str(files["run"]), device="cuda", max_seconds=3.0), root)[1]
    (tmp_path / "e").mkdir()
    eager = demo.build(demo.DemoOptions(ckpt=str(files["run"]), device="cuda", max_seconds=3.0, graphs=False),
                       tmp_path / "e")[1]
    assert graphed.graphs and not eager.graphs
    s = Session("s", tmp_path, reference=str(files["ref"]), audio=files["voice"])
    got, failed, start = {}, [], threading.Barrier(2)

    def view(k):
        try:
            start.wait()  # both viewers capture and stream at the same time
            got[k] = _frames(graphed, s, k)
        except Exception as e:  # noqa: BLE001 - a thread's error would be lost: hand it to the test
            failed.append(e)

    threads = [threading.Thread(target=view, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failed, failed
    for k in (1, 2):
        want = _frames(eager, s, k)
        assert got[k].shape == want.shape and np.abs(got[k] - want).mean() < 1.0, k
    assert np.abs(got[1] - got[2]).mean() > 1.0  # two seeds, two streams: not one stream served twice


def test_bad_input_gets_a_message_and_the_server_goes_on(client, files):
    sid = client.post("/api/session").json()["id"]
    bad = client.post(f"/api/session/{sid}/reference", files={"file": ("bad.png", b"not an image")})
    assert bad.status_code == 400 and "bad.png: unreadable image" in bad.json()["error"]
    text = client.post(f"/api/session/{sid}/reference", files={"file": ("notes.txt", b"hello")})
    assert text.status_code == 400 and ".png" in text.json()["error"]
    long = client.post(f"/api/session/{sid}/audio", files={"file": ("long.wav", files["long"].read_bytes())})
    assert long.status_code == 400 and "limit of 3 s" in long.json()["error"]
    big = client.post(f"/api/session/{sid}/audio", files={"file": ("big.wav", b"\0" * (2 << 20))})
    assert big.status_code == 413 and "limit is 1 MB" in big.json()["error"]
    assert client.post("/api/session/nope/audio", files={"file": ("v.wav", b"x")}).status_code == 404
    with client.websocket_connect(f"/api/session/{sid}/stream") as ws:  # no inputs yet: a message, not a crash
        ws.send_json({"settings": {}})
        assert "choose a reference image and a voice" in ws.receive_json()["message"]
    sid2 = _session(client, files)  # the server still serves
    # a bad file after a good one leaves the good one in place
    assert client.post(f"/api/session/{sid2}/audio", files={"file": ("bad.wav", b"RIFFnope")}).status_code == 400
    assert client.get(f"/api/session/{sid2}/audio").content == files["voice"].read_bytes()
    chunked = client.post(f"/api/session/{sid2}/audio", content=iter([b"x" * 10]))  # no Content-Length
    assert chunked.status_code == 411
    with client.websocket_connect(f"/api/session/{sid2}/stream") as ws:
        ws.send_json({"settings": {"denoise_steps": 0}})
        assert "denoise_steps" in ws.receive_json()["message"]


def test_other_sites_are_refused(client, files):
    """DNS rebinding (a foreign Host) and cross-site requests (a foreign Origin on a WebSocket or an upload) get 403;
    the page's own origin and clients without one pass (`shared.serving.guard`)."""
    from starlette.websockets import WebSocketDisconnect

    r = client.get("/api/info", headers={"host": "rebound.example:7860"})
    assert r.status_code == 403 and "rebound.example" in r.text
    evil = {"origin": "http://evil.example"}
    r = client.post("/api/session", headers=evil)
    assert r.status_code == 403 and "evil.example" in r.text
    assert client.get("/api/info", headers=evil).status_code == 200  # reading is not acting
    sid = _session(client, files)
    with pytest.raises(WebSocketDisconnect) as e:
        with client.websocket_connect(f"/api/session/{sid}/stream", headers=evil) as ws:
            ws.receive_json()
    assert e.value.code == 1008
    own = {"origin": "http://127.0.0.1:7860"}
    assert client.post("/api/session", headers=own).status_code == 200
    assert client.post("/api/session", headers={"origin": "null"}).status_code == 403  # a sandboxed frame, a file


def test_the_hosts_a_server_answers_to():
    from shared.serving.guard import allowed_hosts, host_name

    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert "192.168.1.5" in allowed_hosts("192.168.1.5") and allowed_hosts("0.0.0.0") is None
    assert [host_name(h) for h in ("127.0.0.1:7860", "[::1]:80", "LocalHost", "")] == ["127.0.0.1", "::1",
                                                                                         "localhost", ""]


def test_files_stay_inside_the_session_folder(client, files):
    sid = client.post("/api/session").json()["id"]
    r = client.post(f"/api/session/{sid}/reference", files={"file": ("../../../escape.png", files["ref"].read_bytes())})
    assert r.json()["ok"]
    written = [p for p in client.root.rglob("*") if p.is_file() and "examples" not in p.parts]
    assert [p.relative_to(client.root / "sessions") for p in written] == [Path(sid) / "reference.png"]
    assert not (client.root.parent / "escape.png").exists()
    assert client.get(f"/api/session/{sid}/audio").status_code == 404  # no voice yet: nothing else is served


# ------------------------------------------------------------------------------------------ a real browser


def _browser_ready() -> str | None:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


browser = pytest.mark.skipif(_browser_ready() is not None, reason=str(_browser_ready()))


@pytest.fixture()
def server(files, tmp_path):
    app, _ = _app(files, tmp_path)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _driver():
    """Headless Chromium through chromedriver; with CHROMEDRIVER_LOG set (a file), the driver's output and the
    browser's own stderr are appended there (where a crashed renderer says why: the GPU machine's first page,
    2026-12-04)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    log = os.environ.get("CHROMEDRIVER_LOG")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
              "--window-size=1100,900", *(("--enable-logging=stderr",) if log else ())):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver"), **({"log_output": log} if log else {}))
    return webdriver.Chrome(service=service, options=opts)


def _wait(driver, script: str, timeout: float = 120.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if v := driver.execute_script(f"return {script}"):
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}: {driver.execute_script('return JSON.stringify(demo)')}")


def _open_and_start(driver, url: str, files: dict) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, "demo.session !== null")
    driver.find_element(By.ID, "ref-file").send_keys(str(files["ref"]))
    _wait(driver, "demo.ready.reference")
    driver.find_element(By.ID, "audio-file").send_keys(str(files["voice"]))
    _wait(driver, "demo.ready.audio && !document.getElementById('start').disabled")
    driver.find_element(By.ID, "start").click()


@browser
def test_the_page_streams_in_a_real_browser(server, files):
    from selenium.webdriver.common.by import By

    driver = _driver()
    try:
        _open_and_start(driver, server, files)
        _wait(driver, "demo.shown >= 3")
        early = driver.execute_script("return document.getElementById('video').toDataURL()")
        _wait(driver, "demo.shown >= 25")
        late = driver.execute_script("return document.getElementById('video').toDataURL()")
        assert early != late  # the picture changed
        state = json.loads(driver.execute_script("return JSON.stringify({r: demo.received, m: demo.motionPoints, "
                                                 "f: demo.firstFrameMs, e: demo.errors})"))
        assert state["r"] >= 25 and state["m"] >= 25 and state["f"] > 0 and state["e"] == 0
        assert float(driver.find_element(By.ID, "fps").text) > 0
        if shot := os.environ.get("DEMO_SCREENSHOT"):  # the README's picture: DEMO_SCREENSHOT=docs/demo.png pytest
            _wait(driver, "demo.shown >= 45")
            driver.save_screenshot(shot)
        # stop, then start again: a fresh stream from frame 0
        driver.find_element(By.ID, "stop").click()
        _wait(driver, "!document.getElementById('start').disabled")
        driver.find_element(By.ID, "start").click()
        _wait(driver, "demo.received >= 25 && demo.shown >= 3")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()


@browser
def test_a_bad_upload_shows_its_message_in_the_page(server, files):
    from selenium.webdriver.common.by import By

    driver = _driver()
    try:
        driver.get(server)
        _wait(driver, "demo.session !== null")
        driver.find_element(By.ID, "ref-file").send_keys(str(files["bad"]))
        _wait(driver, "document.getElementById('error').textContent.length > 0")
        assert "bad.png: unreadable image" in driver.find_element(By.ID, "error").text
        assert driver.find_element(By.ID, "start").get_attribute("disabled")
    finally:
        driver.quit()


@browser
def test_two_viewers_stream_at_once(server, files):
    a, b = _driver(), _driver()
    try:
        _open_and_start(a, server, files)
        _open_and_start(b, server, files)
        for d in (a, b):
            _wait(d, "demo.received >= 25")
        assert a.execute_script("return demo.session") != b.execute_script("return demo.session")
    finally:
        a.quit()
        b.quit()


def test_streams_run_on_kept_threads_each_warmed_before_its_first():
    """The server's streams run on the engine's kept threads (`StreamThreads`), each warmed once before it takes a
    stream (on a GPU a fresh thread plans every convolution of the codec again); a stream's failure reaches whoever
    waits for it and the thread serves on; a thread that fails to warm still serves."""
    from shared.serving.engine import StreamThreads

    warmed = []

    def warm():
        warmed.append(threading.get_ident())
        if len(warmed) == 1:
            raise RuntimeError("no plan")

    threads = StreamThreads(2, warm)
    assert threads.wait_warm(10)
    ran = {threads.submit(threading.get_ident).result(10) for _ in range(8)}
    assert len(set(warmed)) == len(warmed) == 2 and ran <= set(warmed) and len(threads.warm_errors) == 1
    with pytest.raises(ZeroDivisionError):
        threads.submit(lambda: 1 / 0).result(10)
    assert [threads.submit(lambda: 7).result(10) for _ in range(4)] == [7] * 4


def test_a_stream_threads_warm_up_streams_as_far_as_a_streams_shapes_go(files, tmp_path, monkeypatch):
    """The warm-up a GPU's stream threads run (here called on the CPU, where they skip it): a blank reference and
    silence streamed eagerly through the roll (`warm_frames` of a minute-long stream), every frame decoded."""
    import shared.serving.engine as E
    from shared.sampling.infer import warm_frames

    engine = _app(files, tmp_path)[0].state.engine
    assert engine.threads.warm_s is not None and engine.threads.warm_errors == []  # the CPU's: nothing to warm
    real, seen = E.stream_frames, []

    def counted(*args, **kwargs):
        for f in real(*args, **kwargs):
            seen.append(f["frame"].shape)
            yield f

    monkeypatch.setattr(E, "stream_frames", counted)
    engine._warm()
    size = engine.meta.image_size
    assert len(seen) == warm_frames(engine.cfg.sample, 60 * engine.cfg.fps) > engine.cfg.sample.history_frames
    assert set(seen) == {(size, size, 3)}


def test_a_finished_stream_is_freed_and_a_waiting_one_can_be_dropped():
    """A kept thread lets go of its last stream once it ends (a stopped viewer's cache and graphs are not held until
    the next viewer comes); a stream still waiting for a thread when its viewer leaves is dropped unrun."""
    import weakref

    from shared.serving.engine import StreamThreads

    class Stream:
        def __call__(self):
            return None

    threads = StreamThreads(1)
    assert threads.wait_warm(10)
    stream = Stream()
    gone = weakref.ref(stream)
    threads.submit(stream).result(10)
    del stream
    for _ in range(200):  # the thread drops it right after handing over the result
        if gone() is None:
            break
        time.sleep(0.01)
    assert gone() is None
    busy, ran = threading.Event(), []
    first = threads.submit(busy.wait)
    waiting = threads.submit(lambda: ran.append(1))
    assert waiting.cancel()
    busy.set()
    first.result(10)
    assert threads.submit(lambda: 2).result(10) == 2 and ran == []
