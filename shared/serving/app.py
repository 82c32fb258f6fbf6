"""The demo's web server (Starlette): the page, per-viewer sessions with uploads, and a WebSocket per stream that
pushes each frame (JPEG) with its motion as soon as it is decoded.

Why a WebSocket and not Gradio's streaming output: the page must place every frame on the voice's clock and plot
the 3-D motion beside it, frame by frame; a WebSocket hands the page each frame and its numbers the moment they
exist, with nothing between the generator and the browser but a JPEG encode (benchmarks/RESULTS.md, the demo section,
measures the page against `stream_step.py` and against a multipart MJPEG stream from the same server).

    GET  /                              the page
    GET  /api/info                      model, sampler defaults, examples, limits
    POST /api/session                   a new session -> {"id"}
    POST /api/session/ID/reference      multipart "file", or JSON {"example": NAME}
    POST /api/session/ID/audio          multipart "file", or JSON {"example": NAME}
    GET  /api/session/ID/audio          the session's voice (the page plays it in sync)
    WS   /api/session/ID/stream         send {"settings": {...}}; receive {"type": "frame", ...} + JPEG bytes per
                                        frame (the first also with the engine's "inputs_s" and "prepare_s"),
                                        then {"type": "done"} or {"type": "error", "message"}; send
                                        {"type": "stop"} to stop
    GET  /api/session/ID/mjpeg          the same stream as multipart JPEG (the measured alternative; no motion)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.formparsers import MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..sampling.generation import InputError
from .engine import Engine, Examples
from .guard import LOCAL_NAMES, Guard
from .sessions import Sessions

JPEG_QUALITY = 90


def jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(engine: Engine, sessions: Sessions, examples: Examples,
              hosts: frozenset[str] | None = LOCAL_NAMES) -> Starlette:
    """The Starlette application over one engine and one session store, answering to the host names `hosts` (None:
    any) and to no other site's page (`guard`)."""
    page = resources.files("shared.serving").joinpath("page.html").read_text()
    # an upload's file part stays in memory up to the limit instead of spooling to the system's temporary folder
    # (Starlette's default rolls over at 1 MB): with the Content-Length check, nothing is written outside the
    # session's folder and memory per upload is bounded
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size,
                                         int(sessions.limits.upload_mb * 2**20) + 65536)

    def session_of(request) -> object:
        try:
            return sessions.get(request.path_params["sid"])
        except KeyError:
            return None

    async def index(request: Request):
        return HTMLResponse(page)

    async def info(request: Request):
        return JSONResponse(engine.info() | {"examples": {"references": sorted(examples.references),
                                                          "voices": sorted(examples.voices)},
                                             "limits": vars(sessions.limits)})

    async def new_session(request: Request):
        try:
            return JSONResponse({"id": sessions.create().id})
        except InputError as e:
            return _error(str(e), 503)

    async def upload(request: Request, kind: str):
        s = session_of(request)
        if s is None:
            return _error("no such session (it expired: reload the page)", 404)
        size = request.headers.get("content-length", "")
        if not size.isdigit():  # a chunked body could be of any size
            return _error("send the upload with a Content-Length", 411)
        size = int(size)
        if size > sessions.limits.upload_mb * 2**20 + 65536:  # refused before the body is read
            return _error(f"upload of {size / 2**20:.1f} MB, the limit is {sessions.limits.upload_mb:g} MB", 413)
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                name = (await request.json()).get("example")
                table = examples.references if kind == "reference" else examples.voices
                if name not in table:
                    return _error(f"no example {name!r}")
                await asyncio.to_thread(sessions.use_example, s, table[name] if kind == "reference" else None,
                                        table[name] if kind == "audio" else None)
                return JSONResponse({"ok": True, "seconds": s.seconds})
            async with request.form(max_files=1, max_fields=2,
                                    max_part_size=int(sessions.limits.upload_mb * 2**20) + 1) as form:
                f = form.get("file")
                if f is None or isinstance(f, str):
                    return _error("send the file as the multipart field 'file'")
                data = await f.read()
                name = Path(f.filename or "upload").name
            if kind == "reference":
                await asyncio.to_thread(sessions.set_reference, s, name, data)
                return JSONResponse({"ok": True})
            return JSONResponse({"ok": True, "seconds": await asyncio.to_thread(sessions.set_audio, s, name, data)})
        except InputError as e:
            return _error(str(e))
        except Exception as e:  # a malformed multipart body, a form over its limits
            return _error(f"the upload could not be read ({type(e).__name__}: {e})")

    async def reference(request: Request):
        return await upload(request, "reference")

    async def audio_upload(request: Request):
        return await upload(request, "audio")

    async def audio_file(request: Request):
        s = session_of(request)
        if s is None or s.audio is None:
            return _error("no voice in this session", 404)
        return FileResponse(s.audio)  # always inside the session's own folder (sessions.set_audio)

    async def stream(ws: WebSocket):
        await ws.accept()
        s = session_of(ws)
        if s is None:
            await ws.send_json({"type": "error", "message": "no such session (it expired: reload the page)"})
            return await ws.close()
        try:
            settings = (await ws.receive_json()).get("settings", {})
        except Exception:  # gone, or not {"settings": {...}} as JSON text
            return
        if s.streaming:
            await ws.send_json({"type": "error", "message": "this session is already streaming"})
            return await ws.close()
        cancel = threading.Event()
        s.streaming = True
        try:
            await _pump(ws, engine, engine.frames(s, settings, cancel), cancel)
        finally:
            s.streaming = False

    async def mjpeg(request: Request):
        s = session_of(request)
        if s is None:
            return _error("no such session", 404)
        if s.streaming:
            return _error("this session is already streaming", 409)
        cancel = threading.Event()
        frames = engine.frames(s, dict(request.query_params), cancel)
        s.streaming = True

        async def body():
            queue: asyncio.Queue = asyncio.Queue(maxsize=8)
            done = _start(engine, frames, queue, asyncio.get_running_loop(), cancel)
            try:
                while (item := await queue.get())[0] == "frame":
                    yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + item[2] + b"\r\n"
            finally:
                cancel.set()
                await _stopped(done)
                s.streaming = False

        return StreamingResponse(body(), media_type="multipart/x-mixed-replace; boundary=frame")

    routes = [Route("/", index), Route("/api/info", info), Route("/api/session", new_session, methods=["POST"]),
              Route("/api/session/{sid}/reference", reference, methods=["POST"]),
              Route("/api/session/{sid}/audio", audio_upload, methods=["POST"]),
              Route("/api/session/{sid}/audio", audio_file, methods=["GET"]),
              Route("/api/session/{sid}/mjpeg", mjpeg), WebSocketRoute("/api/session/{sid}/stream", stream)]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        sessions.close()  # every viewer's files go with the server

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Guard, hosts=hosts)])
    app.state.engine, app.state.sessions = engine, sessions
    return app


class _Stopped(Exception):
    """The viewer left while the generator waited to hand over a frame."""


def _start(engine: Engine, frames, queue: asyncio.Queue, loop, cancel: threading.Event) -> concurrent.futures.Future:
    """Run the generator on one of the engine's stream threads (`StreamThreads`; torch releases the GIL), handing
    ("frame", f, jpeg), then ("done",) or ("error", message), to the event loop's queue; a full queue (a slow viewer)
    holds the generator back. The future is done when the generator has stopped."""
    def put(item) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if cancel.is_set():  # nobody reads any more: give up instead of waiting forever
                    future.cancel()
                    raise _Stopped from None

    def work() -> None:
        final = ("done",)
        try:
            for f in frames:
                put(("frame", f, jpeg(f["frame"])))
                if cancel.is_set():
                    break
        except _Stopped:
            return
        except InputError as e:
            final = ("error", str(e))
        except Exception as e:  # the server keeps serving; the viewer sees what went wrong
            final = ("error", f"generation failed: {type(e).__name__}: {e}")
        finally:
            frames.close()  # on this thread, now: the stream's cache and graphs go with it
        try:
            put(final)
        except _Stopped:
            pass

    return engine.threads.submit(work)


async def _stopped(done: concurrent.futures.Future) -> None:
    """Until a stream's job has ended; one still waiting for a thread (its viewer left) is dropped unrun."""
    done.cancel()
    await asyncio.wait([asyncio.wrap_future(done)])  # a cancelled job: nothing to wait for, and nothing raised


async def _pump(ws: WebSocket, engine: Engine, frames, cancel: threading.Event) -> None:
    """Frames to the page as they come; a {"type": "stop"} or a closed page stops the generator."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=8)
    done = _start(engine, frames, queue, asyncio.get_running_loop(), cancel)

    async def listen() -> None:
        try:
            while (await ws.receive_json()).get("type") != "stop":
                pass
        except Exception:  # the page went away
            pass
        cancel.set()

    listener = asyncio.create_task(listen())
    try:
        while True:
            item = await queue.get()
            if item[0] == "frame":
                f = item[1]
                phases = {k: f[k] for k in ("inputs_s", "prepare_s")} if f["index"] == 0 else {}
                await ws.send_json({"type": "frame", "index": f["index"], "time": f["time"], "motion": f["motion"],
                                    "frames": f["frames"], **phases})
                await ws.send_bytes(item[2])
            else:
                await ws.send_json({"type": "done"} if item[0] == "done" else {"type": "error", "message": item[1]})
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        cancel.set()
        listener.cancel()
        # the generator sees the cancel between frames (its `put` gives up waiting on a full queue): the session
        # streams again only once its generator has stopped, so stop / start cannot pile generations up
        await _stopped(done)
    try:
        await ws.close()
    except Exception:  # the page closed first
        pass
