"""An hour measured minute by minute (`shared.evaluation.minutes`, issue #39): the per-minute aggregates on streams
with known answers, chunk edges that change nothing, and the flatness checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared.evaluation.minutes import MinuteMeter, flatness, keep_partial

FPS = 5


def _meter() -> MinuteMeter:
    return MinuteMeter(FPS, np.zeros(16), list(range(4)), [0, 1], np.full(16, 2.0), np.ones(13), 6,
                       torch.device("cpu"))


def _stream(frames: int, drift: float = 0.0, seed: int = 0):
    """motion [N, 13] (pose dims 0-1 a straight line: no jitter; jaw dim 6 a sine), identity [N, 16] at a distance
    from the reference that grows by `drift` a minute, and the true jaw."""
    t = np.arange(frames)
    motion = np.zeros((frames, 13))
    motion[:, 0], motion[:, 1] = 0.01 * t, -0.02 * t
    jaw = np.sin(t / 3.0)
    motion[:, 6] = 2 * jaw + 1  # an affine function of the truth: r = 1
    identity = np.zeros((frames, 16))
    identity[:, 0] = 2.0 * (1 + drift * t / (60 * FPS))  # 1 std unit (i_std 2), growing with the minutes
    return motion, identity, jaw


@pytest.mark.parametrize("chunk", [FPS, 7, 300])
def test_minutes_on_known_answers_whatever_the_chunks(chunk):
    motion, identity, jaw = _stream(3 * 60 * FPS + 100)
    m = _meter()
    for i in range(0, len(jaw), chunk):
        m.add(motion[i : i + chunk], identity[i : i + chunk], jaw[i : i + chunk])
    m.close_minute()
    assert [r["frames"] for r in m.rows] == [300, 300, 300, 100]  # three minutes and a shorter last one
    for r in m.rows:
        assert r["id_err"] == pytest.approx(1.0) and r["jitter"] == pytest.approx(0.0, abs=1e-12)
        assert r["lip_r"] == pytest.approx(1.0) and r["fps"] > 0 and r["host_rss_gib"] > 0
    check = flatness(m.rows, tolerance=10.0)  # the clock of a test is no speed measurement
    assert check["minutes"] == 4 and check["id_ratio_max"] == pytest.approx(1.0) and check["identity_held"]


def test_the_readings_time_is_told_apart_from_the_streams(monkeypatch):
    """Each minute's `read_s` sums the seconds its chunks' readings took (a chunk across a minute's end split by its
    frames), and `stream_fps` is the minute's frames over the rest of its time (a clock that moves 1 s a chunk)."""
    from shared.evaluation import minutes as MN

    clock = [0.0]
    monkeypatch.setattr(MN.time, "perf_counter", lambda: clock[0])
    motion, identity, jaw = _stream(2 * 60 * FPS)
    m = _meter()
    m._t0 = 0.0
    for i in range(0, len(jaw), 200):  # 200-frame chunks: the second one crosses minute 1's end at frame 300
        clock[0] += 1.0
        m.add(motion[i : i + 200], identity[i : i + 200], jaw[i : i + 200], read_s=0.25)
    assert [r["read_s"] for r in m.rows] == pytest.approx([0.375, 0.375])
    assert [r["fps"] for r in m.rows] == pytest.approx([150.0, 300.0])
    assert [r["stream_fps"] for r in m.rows] == pytest.approx([300 / 1.625, 300 / 0.625])


def test_jitter_sees_a_jump_at_a_chunk_edge():
    motion, identity, jaw = _stream(60 * FPS)
    motion[150:, 0] += 1.0  # one step in the pose at frame 150: second differences of 1 at frames 149 and 150
    m = _meter()
    m.add(motion[:150], identity[:150], jaw[:150])  # the edge falls on the jump
    m.add(motion[150:], identity[150:], jaw[150:])
    # acc = |2nd difference| averaged over the two pose dims: 0.5 at each of the two frames, over 298 values
    assert m.rows[0]["jitter"] == pytest.approx(2 * 0.5 / 298)


def test_flatness_flags_drift_and_a_growing_memory():
    rows = [{"minute": k + 1, "frames": 300, "id_err": 1.0 + 0.1 * k, "fps": 100.0, "host_rss_gib": 1.0 + 0.02 * k}
            for k in range(5)]
    check = flatness(rows)
    assert check["id_ratio_max"] == pytest.approx(1.4) and not check["identity_held"]
    assert check["fps_flat"] and check["fps_max_change"] == 0.0
    assert check["host_rss_gib_max_change"] == pytest.approx(0.06 / 1.02) and not check["host_rss_gib_flat"]


def test_flatness_of_a_speed_only_stream_judges_speed_and_memory_alone():
    """The `full` preset's check streams random weights (benchmarks/stream_step.py --minutes): no identity to hold."""
    rows = [{"minute": k + 1, "frames": 1500, "fps": 60.0 - (5.0 if k == 0 else 0.0), "gpu_peak_gib": 5.7}
            for k in range(4)]
    check = flatness(rows)
    assert "identity_held" not in check and check["fps_flat"] and check["gpu_peak_gib_flat"]


def test_a_stream_cut_short_keeps_its_closed_minutes_on_disk(tmp_path):
    """An hour's stream lost at minute 22 (a device machine released mid-run, 2026-12-04) kept only what a log had:
    each closed minute is now rewritten to a file as it closes, beside the streams done before it."""
    path = tmp_path / "long_minutes.partial.json"
    done = {"video_only": [{"minute": 1, "frames": 300}]}
    m = MinuteMeter(FPS, np.zeros(16), list(range(4)), [0, 1], np.full(16, 2.0), np.ones(13), 6, torch.device("cpu"),
                    on_row=keep_partial(path, done, "dual"))
    motion, identity, jaw = _stream(2 * 60 * FPS + 40)
    m.add(motion, identity, jaw)  # the stream "dies" here: two minutes closed, 40 frames not
    kept = json.loads(path.read_text())
    assert list(kept) == ["video_only", "dual"] and [r["minute"] for r in kept["dual"]] == [1, 2]
    assert kept["dual"][1]["id_err"] == pytest.approx(1.0) and not list(tmp_path.glob(".*.tmp"))


def test_the_host_clock_tells_this_processs_work_from_waiting_and_from_other_processes():
    """`HostClock.lap` on known answers: a busy loop is this process's CPU time, a sleep is not, and a child process's
    busy loop is another's (Linux /proc/stat; elsewhere only `cpu_s` is read)."""
    import subprocess
    import sys
    import time

    from shared.evaluation.minutes import HostClock

    clock = HostClock()
    start = time.process_time()
    while time.process_time() - start < 0.4:  # 0.4 s of this process's CPU, however long a busy machine takes
        pass
    busy = clock.lap()
    time.sleep(0.4)
    idle = clock.lap()
    assert busy["cpu_s"] > 0.3 and idle["cpu_s"] < 0.1
    if "other_cpu_s" not in busy:
        pytest.skip("no /proc/stat here: only the process's own CPU time is read")
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: "
                    "pass"], check=True)
    child = clock.lap()
    assert child["other_cpu_s"] > 0.4 and child["cpu_s"] < 0.2 and child["steal_s"] >= 0


def test_each_minute_says_where_its_host_time_went():
    """Every closed minute carries the host clock's lap (its own CPU seconds at least)."""
    motion, identity, jaw = _stream(2 * 60 * FPS)
    m = _meter()
    m.add(motion, identity, jaw)
    assert all(r["cpu_s"] >= 0 for r in m.rows) and len(m.rows) == 2


def test_the_gpu_state_is_left_out_off_cuda():
    """No GPU readings in a CPU stream's rows (and no NVML asked for)."""
    from shared.evaluation.minutes import gpu_state

    assert gpu_state(torch.device("cpu")) == {}


def test_a_stalled_stream_ends_with_a_line_and_its_stack_not_a_hang():
    """The hour of 2026-12-04 (g) hung without a word (a GPU wait that never returned): a `Watchdog` not ticked for
    its time ends the process with one error line, every thread's stack (where it stood) and status 3; one ticked in
    time lets its block finish."""
    import subprocess
    import sys
    import time

    from shared.sampling.watchdog import STALLED

    code = ("import time\nfrom shared.sampling.watchdog import Watchdog\n"
            "with Watchdog(1.0, 'the test stream', 'a note') as dog:\n"
            "    for i in range({n}):\n        dog.tick(f'after frame {{i}}')\n        time.sleep({pause})\n"
            "print('finished')\n")
    t = time.monotonic()
    stalled = subprocess.run([sys.executable, "-c", code.format(n=3, pause=30)], capture_output=True, text=True,
                             timeout=60)
    assert stalled.returncode == STALLED and time.monotonic() - t < 20 and "finished" not in stalled.stdout
    first = stalled.stderr.splitlines()[0]
    assert first.startswith("error: the test stream: nothing for ") and first.endswith("(after frame 0); a note")
    assert "in <module>" in stalled.stderr  # the stalled thread's stack
    ticked = subprocess.run([sys.executable, "-c", code.format(n=8, pause=0.3)], capture_output=True, text=True,
                            timeout=60)
    assert ticked.returncode == 0 and ticked.stdout.strip() == "finished" and not ticked.stderr
    # a stall that holds the GIL (a C call that never returns) stops the watchdog's thread too: faulthandler's C
    # thread still dumps the stacks and ends the process
    held = ("from shared.sampling.watchdog import Watchdog\n"
            "with Watchdog(1.0, 'the test stream', backstop=1.0):\n    sum(range(10 ** 13))\n")
    t = time.monotonic()
    stuck = subprocess.run([sys.executable, "-c", held], capture_output=True, text=True, timeout=60)
    assert stuck.returncode == 1 and time.monotonic() - t < 20 and "Timeout" in stuck.stderr
    assert "<module>" in stuck.stderr
