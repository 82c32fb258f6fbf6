"""Streaming: KV-cache parity with recomputation, rolling window, bounded memory, CFG, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from shared import sampling as infer
from shared.config import SampleConfig, get_preset
from shared.models import KVCache
from shared.sampling import engine
from shared.sampling.schedule import autoregressive
from tests.conftest import tiny_model

SC = replace(get_preset("tiny").sample, schedule="autoregressive")  # window 4, roll_keep 2; rolling where named


def _args(model, frames: int, batch: int = 2, seed: int = 3):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    ref_s = torch.randn(batch, cfg.struct_dim, generator=g) if cfg.has_struct else None
    audio = torch.randn(batch, 2 * frames, cfg.audio_dim, generator=g)
    cond = torch.randn(batch, frames, cfg.struct_dim, generator=g) if cfg.bridge_mode == "condition_only" else None
    return ref, ref_s, audio, cond


def _gen(model, frames, use_cache, sample=SC, **kw):
    ref, ref_s, audio, cond = _args(model, frames)
    return infer.generate(model, ref, ref_s, audio, frames, use_cache=use_cache, sample=sample,
                          generator=torch.Generator().manual_seed(7), cond_struct=cond, **kw)


@pytest.mark.parametrize("frames", [3, 11], ids=["within-window", "after-rolling"])
def test_cache_parity(mode, frames):
    model = tiny_model(mode)
    a, b = _gen(model, frames, True), _gen(model, frames, False)
    assert a["video"].shape == (2, frames, 4, 8, 8)
    assert (a["video"] - b["video"]).abs().max() <= 1e-4
    if mode == "video_only":
        assert a["struct"] is None
    else:
        assert (a["struct"] - b["struct"]).abs().max() <= 1e-4


@pytest.mark.parametrize("variant", [
    dict(chunk=2, schedule="autoregressive"),
    dict(schedule="struct_leads", sigma_struct_start=0.7, struct_lead=1),
    dict(audio_cfg=2.5),
    dict(roll_keep=0),
    dict(struct_first=True),
    dict(struct_first=True, schedule="rolling"),
])
def test_cache_parity_variants(variant):
    model = tiny_model("dual")
    sc = replace(SC, **variant)
    a, b = _gen(model, 9, True, sc), _gen(model, 9, False, sc)
    assert (a["video"] - b["video"]).abs().max() <= 1e-4
    assert (a["struct"] - b["struct"]).abs().max() <= 1e-4


def test_full_sequence_schedule():
    model = tiny_model("dual")
    sc = replace(SC, schedule="full_sequence")
    out = _gen(model, 4, True, sc)
    assert out["video"].shape[1] == 4 and torch.isfinite(out["video"]).all()


def test_stream_yields_frame_by_frame():
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 5)
    it = infer.stream(model, ref, ref_s, audio, 5, sample=SC)
    first = next(it)
    assert first["index"] == 0 and first["video"].shape == (2, 4, 8, 8) and first["struct"].shape == (2, 6)
    assert [f["index"] for f in it] == [1, 2, 3, 4]


def test_generator_makes_it_deterministic():
    model = tiny_model("dual")
    a, b = _gen(model, 4, True), _gen(model, 4, True)
    torch.testing.assert_close(a["video"], b["video"])


def test_sigma_struct_start_uses_previous_struct():
    """Starting the struct at 0.7 keeps it closer to the previous frame's motion than starting from noise."""
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 1)
    d = {}
    for start in (1.0, 0.3):
        sc = replace(SC, sigma_struct_start=start)
        out = infer.generate(model, ref, ref_s, audio, 1, sample=sc, generator=torch.Generator().manual_seed(0))
        d[start] = (out["struct"][:, 0] - ref_s).norm()
    assert d[0.3] < d[1.0]


def test_cache_memory_is_bounded_by_the_window():
    """A rollout of 10x the training clip completes with the same cache memory as one clip: the window bounds it."""
    model = tiny_model("dual")
    clip = get_preset("tiny").clip_frames
    sizes = {}
    for frames in (clip, 10 * clip):
        ref, ref_s, audio, _ = _args(model, frames)
        caches = []
        orig = engine.KVCache

        class Spy(orig):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                caches.append(self)

        engine.KVCache = Spy
        try:
            for _ in infer.stream(model, ref, ref_s, audio, frames, sample=SC):
                pass
        finally:
            engine.KVCache = orig
        sizes[frames] = caches[0].nbytes()
        assert caches[0].max_frames == 1 + SC.history_frames
    assert sizes[clip] == sizes[10 * clip] > 0


def test_custom_schedule_matrix():
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 3)
    plan = autoregressive(3, steps=3, shift=2.0)
    out = infer.generate(model, ref, ref_s, audio, 3, schedule=plan, sample=SC)
    assert out["video"].shape[1] == 3


def test_bad_inputs():
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 4)
    with pytest.raises(ValueError, match="ref_video"):
        infer.generate(model, ref[:, :2], ref_s, audio, 4, sample=SC)
    with pytest.raises(ValueError, match="ref_struct"):
        infer.generate(model, ref, None, audio, 4, sample=SC)
    with pytest.raises(ValueError, match="audio"):
        infer.generate(model, ref, ref_s, audio[:, :5], 4, sample=SC)
    with pytest.raises(ValueError, match="cond_struct"):
        infer.generate(tiny_model("condition_only"), ref, ref_s, audio, 4, sample=SC)
    with pytest.raises(ValueError, match="history_frames"):
        infer.generate(model, ref, ref_s, audio, 4, sample=replace(SC, chunk=3, roll_keep=2))
    with pytest.raises(ValueError, match="roll_keep"):
        SampleConfig(history_frames=4, roll_keep=4)
    warm = autoregressive(4, steps=2)
    warm.video[:5, 2] = 0.9  # frame 2 would start its chunk (rows 4..6) part-denoised from nothing
    with pytest.raises(ValueError, match="frames 2..2 must start from pure noise"):
        infer.generate(model, ref, ref_s, audio, 4, schedule=warm, sample=SC)


def test_cached_forward_takes_a_device_start():
    """A 0-d tensor `start` (what CUDA graphs replay with) writes and reads the same cache slots as an int."""
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 3)
    x = torch.randn(2, 2, *ref.shape[1:])
    s = torch.randn(2, 2, model.cfg.struct_dim)
    sig = torch.full((2, 2), 0.5)
    outs = []
    for as_tensor in (False, True):
        cache = KVCache(4)
        zero = torch.zeros(2, 1)
        model(ref[:, None], zero, ref_s[:, None], zero, audio, start=0, cache=cache, audio_index=torch.tensor([0]))
        cache.commit(1)
        start = torch.tensor(1) if as_tensor else 1
        outs.append(model(x, sig, s, sig, audio, start=start, cache=cache, audio_index=torch.tensor([1, 2])))
    torch.testing.assert_close(outs[0], outs[1])
    with pytest.raises(ValueError, match="committed"):
        model(x, sig, s, sig, audio, start=2, cache=cache, audio_index=torch.tensor([1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile", [False, True], ids=["graphs", "compiled-graphs"])
def test_cuda_graph_replay_matches_eager(compile):
    """Graph replays (static cache, device start and audio index, the struct tower on a second stream, compiled
    blocks) give the eager stream's frames, rolling included."""
    model = tiny_model("dual").cuda()
    ref, ref_s, audio, _ = (x.cuda() if torch.is_tensor(x) else x for x in _args(model, 12))
    eager = infer.generate(model, ref, ref_s, audio, 12, sample=SC, generator=torch.Generator("cuda").manual_seed(0))
    graphs = infer.GraphedModel(model, compile=compile, overlap=True)
    captured = infer.warm_up(graphs, ref, ref_s, audio, 12, SC)
    for _ in range(2):  # replays only: warm_up captured every graph the stream needs
        got = infer.generate(model, ref, ref_s, audio, 12, sample=SC, graphs=graphs,
                             generator=torch.Generator("cuda").manual_seed(0))
        torch.testing.assert_close(got["video"], eager["video"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["struct"], eager["struct"], rtol=1e-4, atol=1e-4)
    assert 0 < captured <= 3 and len(graphs.graphs) == captured  # one graph per shape, not per position


def test_bf16_weights_stream():
    """Inference with bf16 weights (how generate.py runs on GPU): float32 sampler state is cast at the model's door."""
    model = tiny_model("dual").to(torch.bfloat16)
    ref, ref_s, audio, _ = _args(model, 6)
    out = infer.generate(model, ref.bfloat16(), ref_s.bfloat16(), audio.bfloat16(), 6, sample=SC)
    assert torch.isfinite(out["video"].float()).all() and out["struct"].shape == (2, 6, model.cfg.struct_dim)


def test_euler_block_is_differentiable_through_two_frames():
    """The sampler steps are pure and keep the autograd graph when asked (training on the model's own rollouts):
    frame 1, generated on top of frame 0 in the cached context, carries gradients back to the weights, and through
    frame 0's keys/values to frame 0's noise."""
    model = tiny_model("dual").train()
    ref, ref_s, audio, _ = _args(model, 2)
    ctx = engine.CachedContext(model, ref, ref_s, audio, 2, SC.history_frames, SC.roll_keep)
    rows = infer.schedule.stream_rows(SC, 2)
    noise0 = torch.randn(2, 1, *ref.shape[1:], requires_grad=True)
    frames = []
    for ck, x in zip(rows, (noise0, torch.randn(2, 1, *ref.shape[1:]))):
        s = torch.randn(2, 1, model.cfg.struct_dim)
        video, struct = infer.euler_chunk(ctx.denoiser(ck.lo, ck.hi), x, s, ck.video, ck.struct)
        ctx.commit(ck.lo, video, struct)
        frames.append(video)
    frames[1].square().mean().backward()
    assert noise0.grad is not None and noise0.grad.abs().sum() > 0  # frame 1 saw frame 0 through the cache
    grads = [p.grad for p in model.video.blocks[0].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # the same maths as the no-grad stream
        want = infer.generate(model.eval(), ref, ref_s, audio, 1, sample=SC, generator=torch.Generator().manual_seed(0))
    ctx = engine.CachedContext(model, ref, ref_s, audio, 1, SC.history_frames, SC.roll_keep)
    from shared.sampling.infer import struct_generator

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *ref.shape[1:], generator=g)
    noise = torch.randn(2, 1, model.cfg.struct_dim, generator=struct_generator(g))
    got, _ = infer.euler_chunk(ctx.denoiser(0, 1), x, noise, rows[0].video, rows[0].struct)
    torch.testing.assert_close(got[:, 0], want["video"][:, 0])


def test_stream_keeps_gradients_when_asked():
    model = tiny_model("dual")
    ref, ref_s, audio, _ = _args(model, 2)
    out = infer.generate(model, ref, ref_s, audio, 2, sample=SC, grad=True)
    assert out["video"].requires_grad
    assert not infer.generate(model, ref, ref_s, audio, 2, sample=SC)["video"].requires_grad


def test_guided_denoiser_mixes_the_halves():
    calls = []

    def denoise(video, struct, sv, ss):
        calls.append(video.shape[0])
        half = video.shape[0] // 2
        return torch.cat([torch.full_like(video[:half], 3.0), torch.full_like(video[half:], 1.0)]), None

    v, s = infer.guided(denoise, 2.0)(torch.zeros(2, 1, 3), None, torch.ones(1), torch.ones(1))
    assert calls == [4] and s is None and torch.all(v == 1.0 + 2.0 * (3.0 - 1.0))
    assert infer.guided(denoise, 1.0) is denoise


def test_video_noise_is_shared_across_bridge_modes(monkeypatch):
    """A seeded stream draws the same video noise in every chunk whatever the bridge mode: the struct stream has its
    own generator (so `dual` vs `video_only` is a paired comparison on the same noise)."""
    from shared.sampling import infer as loop

    seen: dict[str, list] = {}
    orig = loop.initial_noise

    def spy(model, *a, **k):
        video, struct = orig(model, *a, **k)
        seen.setdefault(model.cfg.bridge_mode, []).append(video.clone())
        return video, struct

    monkeypatch.setattr(loop, "initial_noise", spy)
    for mode in ("video_only", "dual", "condition_only"):
        _gen(tiny_model(mode), 7, True)
    assert len(seen["dual"]) == 7
    for mode in ("dual", "condition_only"):
        for a, b in zip(seen["video_only"], seen[mode]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cache_parity_one_way_bridge():
    model = tiny_model("dual", bridge_video_to_struct=False)
    a, b = _gen(model, 11, True), _gen(model, 11, False)
    assert (a["video"] - b["video"]).abs().max() <= 1e-4 and (a["struct"] - b["struct"]).abs().max() <= 1e-4


@pytest.mark.parametrize("frames", [3, 11], ids=["within-window", "after-rolling"])
def test_rolling_schedule_cache_parity(mode, frames):
    """The rolling (pyramid) schedule served by the KV cache equals recomputing the visible history at every step,
    before and after the history rolls."""
    model = tiny_model(mode)
    sc = replace(SC, schedule="rolling")  # steps 2: two frames in flight, a new one every step
    a, b = _gen(model, frames, True, sc), _gen(model, frames, False, sc)
    assert a["video"].shape == (2, frames, 4, 8, 8)
    assert (a["video"] - b["video"]).abs().max() <= 1e-4
    if a["struct"] is not None:
        assert (a["struct"] - b["struct"]).abs().max() <= 1e-4


@pytest.mark.parametrize("schedule", ["autoregressive", "rolling"])
def test_a_given_struct_is_held_clean_and_the_video_reads_it(schedule):
    """struct_given (self-forcing's `video` history, #39): the struct comes out exactly as given (held at sigma 0),
    the video is generated from it (another motion, another video) and the cache serves it as recomputing does."""
    model, frames = tiny_model("dual"), 7
    sc = replace(SC, schedule=schedule)
    given = torch.randn(2, frames, model.cfg.struct_dim, generator=torch.Generator().manual_seed(11))
    a = _gen(model, frames, True, sc, struct_given=given)
    assert torch.equal(a["struct"], given)
    assert (a["video"] - _gen(model, frames, False, sc, struct_given=given)["video"]).abs().max() <= 1e-4
    assert (a["video"] - _gen(model, frames, True, sc, struct_given=given.flip(0))["video"]).abs().max() > 1e-3
    free = _gen(model, frames, True, sc)
    assert not torch.allclose(free["struct"], given) and (free["video"] - a["video"]).abs().max() > 1e-3


def test_a_given_struct_is_refused_where_no_struct_is_generated():
    for mode, match in (("video_only", "generates no struct"), ("condition_only", "generates no struct")):
        with pytest.raises(ValueError, match=match):
            _gen(tiny_model(mode), 3, True, struct_given=torch.zeros(2, 3, tiny_model(mode).cfg.struct_dim))
    with pytest.raises(ValueError, match=r"struct_given: expected \[2, 3, "):
        _gen(tiny_model("dual"), 3, True, struct_given=torch.zeros(2, 4, tiny_model("dual").cfg.struct_dim))


def test_rolling_window_one_is_autoregressive():
    """One frame in flight is the autoregressive schedule with chunk 1: the same frames from the same noise."""
    model = tiny_model("dual")
    a = _gen(model, 7, True, replace(SC, schedule="rolling", rolling_window=1, sigma_struct_start=0.7))
    b = _gen(model, 7, True, replace(SC, sigma_struct_start=0.7))
    assert (a["video"] - b["video"]).abs().max() <= 1e-5
    assert (a["struct"] - b["struct"]).abs().max() <= 1e-5


def test_rolling_schedule_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="must divide steps"):
        infer.generate(tiny_model("dual"), *_args(tiny_model("dual"), 3)[:3], 3,
                       sample=replace(SC, schedule="rolling", rolling_window=3))
    with pytest.raises(ValueError, match="roll_keep"):
        _gen(tiny_model("dual"), 5, True, replace(SC, schedule="rolling", roll_keep=3))


@pytest.mark.parametrize("schedule", ["autoregressive", "rolling"])
@pytest.mark.parametrize("setting,plain", [("sigma_context", 0.1), ("ref_weight", 4.0)], ids=["history_noise",
                                                                                             "ref_weight"])
def test_long_video_settings_cache_parity(schedule, setting, plain):
    """History noise (sigma_context) and the weighted reference (ref_weight): the cached context sees the same
    re-noised history and weighs the reference alike as recomputation, through the roll; the setting changes the
    frames (history noise from the second frame on: the first has no history yet)."""
    model = tiny_model("dual")
    sc = replace(SC, schedule=schedule, **{setting: plain})
    a, b = _gen(model, 11, True, sc), _gen(model, 11, False, sc)
    assert (a["video"] - b["video"]).abs().max() <= 1e-4
    assert (a["struct"] - b["struct"]).abs().max() <= 1e-4
    off = _gen(model, 11, True, replace(sc, **{setting: getattr(SampleConfig(), setting)}))
    if setting == "sigma_context":
        assert torch.equal(a["video"][:, 0], off["video"][:, 0])
    assert (a["video"][:, 3:] - off["video"][:, 3:]).abs().max() > 1e-4


def test_ref_bias_counts_the_reference_w_times():
    """A log(w) bias on frame 0's keys equals attending to w copies of the reference (softmax identity)."""
    import torch.nn.functional as F

    from shared.models.masks import ref_bias

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g) for _ in range(3))  # 3 frames of 1 token
    w = 3
    biased = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_bias(torch.zeros(3, 3), 1, float(w)))
    kk, vv = torch.cat([k[:, :, :1]] * w + [k[:, :, 1:]], 2), torch.cat([v[:, :, :1]] * w + [v[:, :, 1:]], 2)
    assert torch.allclose(biased, F.scaled_dot_product_attention(q, kk, vv), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams and graphs")
def test_overlapped_decoder_gives_each_frame_in_order():
    """Frames decoded on the side stream (one CUDA graph) equal the decoder run directly, each the frame submitted,
    even when the sampler frees its latent at once; also when copied to the host on that stream."""
    from shared.data.codecs import rgb_to_uint8
    from shared.sampling.decode import OverlappedDecoder

    conv = torch.nn.ConvTranspose2d(4, 3, 8, stride=8).cuda()

    @torch.no_grad()
    def decode(z):
        return rgb_to_uint8(torch.tanh(conv(z)))

    dec = OverlappedDecoder(decode, torch.zeros(1, 4, 8, 8, device="cuda"))
    latents = [torch.randn(1, 4, 8, 8, device="cuda") for _ in range(5)]
    got = [dec.submit(z.clone()) for z in latents]
    for (frame, done), z in zip(got, latents):
        done.synchronize()
        assert frame.shape == (1, 64, 64, 3) and frame.dtype == torch.uint8
        assert torch.equal(frame, decode(z))
    host = [dec.submit(z.clone(), to_host=True) for z in latents]  # copied to the host on the side stream
    for (frame, done), z in zip(host, latents):
        done.synchronize()
        assert frame.device.type == "cpu" and torch.equal(frame, decode(z).cpu())


@pytest.mark.parametrize("mode", ["dual", "video_only", "condition_only", "given"])
def test_struct_first_takes_the_structs_steps_only_where_a_struct_is_generated(mode, monkeypatch):
    """struct_first: a dual's chunk takes 2K steps, the struct's K first (its video held at pure noise), then the
    video's K (its struct clean). Where nothing generates the struct (video_only, condition_only, a struct given and
    held clean) it is off: K steps, the same frames, no idle forwards."""
    from shared.sampling import infer as loop
    from shared.sampling.steps import euler_chunk

    seen = []

    def spy(denoise, video, struct, rows_video, rows_struct):
        seen.append((rows_video.clone(), rows_struct.clone()))
        return euler_chunk(denoise, video, struct, rows_video, rows_struct)

    monkeypatch.setattr(loop, "euler_chunk", spy)
    model = tiny_model("dual" if mode == "given" else mode)
    given = torch.randn(2, 3, model.cfg.struct_dim) if mode == "given" else None
    first = _gen(model, 3, True, replace(SC, struct_first=True), struct_given=given)
    # what generate.py's progress bar and timing.json report: the config as the stream ran it
    assert loop.applied(replace(SC, struct_first=True), model, given is not None).struct_first == (mode == "dual")
    k = SC.denoise_steps
    rows = seen[0][0].shape[0] - 1
    assert rows == (2 * k if mode == "dual" else k)
    if mode == "dual":
        sv, ss = seen[0]
        assert (ss[sv < 1] == 0).all() and (sv[ss > 0] == 1).all()
    else:
        seen.clear()
        plain = _gen(model, 3, True, SC, struct_given=given)
        assert torch.equal(first["video"], plain["video"])
