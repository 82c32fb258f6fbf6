"""The network: shapes, frame causality, audio alignment and lookahead, bridge directions, bad input."""

from __future__ import annotations

import collections
import contextlib
from pathlib import Path

import pytest
import torch

from shared.models import DualForce, Span, pool_audio
from shared.models import attention, masks
from shared.models.attention import Attention, frame_causal_attention, kv_splits, split_kv_attention
from shared.models.blocks import AudioAttention, BridgeLayer
from shared.models.masks import cache_mask, dense_frame_mask
from tests.conftest import script, tiny_inputs, tiny_model


def run(model, inp):
    with torch.no_grad():
        return model(**inp)


def test_shapes(mode):
    model = tiny_model(mode)
    inp = tiny_inputs(model)
    vv, vs = run(model, inp)
    assert vv.shape == inp["video"].shape
    if mode == "dual":
        assert vs.shape == inp["struct"].shape
    else:
        assert vs is None


def test_a_model_from_weights_is_the_model_and_draws_no_random_numbers(mode):
    """`DualForce.from_weights` (trained models rebuilt from buffers, snapshots read back) gives the same network as
    building one and loading the weights, without the initialisation they replace."""
    model = tiny_model(mode).eval()
    inp = tiny_inputs(model)
    state = torch.random.get_rng_state()
    again = DualForce.from_weights(model.cfg, model.state_dict()).eval()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    for a, b in zip(run(model, inp), run(again, inp)):
        assert (a is None and b is None) or torch.equal(a, b)
    with pytest.raises(RuntimeError, match="Missing key"):  # a partial state dict is refused, never left empty
        DualForce.from_weights(model.cfg, dict(list(model.state_dict().items())[1:]))


@pytest.mark.parametrize("t", [0, 2, 4])
@pytest.mark.parametrize("what", ["video", "struct", "audio"])
def test_causality(mode, what, t):
    """Changing frames > t (audio: beyond the lookahead) leaves every output of frames <= t unchanged."""
    model = tiny_model(mode)
    T = 7
    inp = tiny_inputs(model, frames=T)
    if inp[what] is None:
        pytest.skip(f"{mode} takes no {what}")
    changed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in inp.items()}
    if what == "audio":
        first = t + model.cfg.audio_lookahead + 1  # first video frame whose audio frame t may not see
        changed["audio"][:, 2 * first:] += 5 * torch.randn_like(changed["audio"][:, 2 * first:])
    else:
        changed[what][:, t + 1:] += 5 * torch.randn_like(changed[what][:, t + 1:])
    a, b = run(model, inp), run(model, changed)
    torch.testing.assert_close(a[0][:, : t + 1], b[0][:, : t + 1], atol=1e-5, rtol=0)
    if a[1] is not None:
        torch.testing.assert_close(a[1][:, : t + 1], b[1][:, : t + 1], atol=1e-5, rtol=0)
    # and the change does reach later frames (the test would pass vacuously otherwise)
    if what != "audio" or t + model.cfg.audio_lookahead + 1 < T:
        assert (a[0][:, t + 1:] - b[0][:, t + 1:]).abs().max() > 1e-3


def test_audio_within_lookahead_is_seen():
    model = tiny_model("dual")
    inp = tiny_inputs(model, frames=6)
    t = 1
    changed = dict(inp, audio=inp["audio"].clone())
    la = model.cfg.audio_lookahead
    changed["audio"][:, 2 * (t + la): 2 * (t + la) + 2] += 5.0  # audio of frame t + lookahead only
    a, b = run(model, inp), run(model, changed)
    assert (a[0][:, t] - b[0][:, t]).abs().max() > 1e-3
    torch.testing.assert_close(a[0][:, :1], b[0][:, :1])  # reference sees only the null token


def test_pool_audio_alignment():
    """Audio frames (2t, 2t+1) map to video frame t."""
    a = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(1, 10, 3)
    p = pool_audio(a)
    assert p.shape == (1, 5, 6)
    for t in range(5):
        torch.testing.assert_close(p[0, t], torch.cat([a[0, 2 * t], a[0, 2 * t + 1]]))
    with pytest.raises(ValueError, match="even"):
        pool_audio(torch.zeros(1, 9, 3))


def test_condition_only_has_no_video_to_struct_path():
    model = tiny_model("condition_only")
    assert all(not hasattr(layer, "video_to_struct") for layer in model.bridge)
    inp = tiny_inputs(model)
    hs = []
    for block in model.struct.blocks:  # record every struct block's output after its second half
        block.register_forward_hook(lambda m, args, out: hs.append(out) if args[0] == "rest" else None)
    run(model, inp)
    first = [h.clone() for h in hs]
    hs.clear()
    run(model, dict(inp, video=torch.randn_like(inp["video"]), sigma_video=torch.rand_like(inp["sigma_video"])))
    assert len(first) == len(model.struct.blocks) == model.cfg.fusion_depth
    for x, y in zip(first, hs):
        torch.testing.assert_close(x, y)


def test_dual_has_video_to_struct_path():
    model = tiny_model("dual")
    inp = tiny_inputs(model)
    a = run(model, inp)
    b = run(model, dict(inp, video=torch.randn_like(inp["video"])))
    assert (a[1][:, 1:] - b[1][:, 1:]).abs().max() > 1e-3


def test_video_only_has_no_struct_parameters():
    model = tiny_model("video_only")
    names = [n for n, _ in model.named_parameters()]
    assert names and not any(n.startswith(("struct", "bridge")) for n in names)
    assert model.param_groups()["struct_dit"] == 0 and model.param_groups()["bridge"] == 0
    inp = tiny_inputs(model)
    with pytest.raises(ValueError, match="video_only"):
        model(**dict(inp, struct=torch.zeros(2, 6, 6)))


def test_bridge_gates_start_at_zero():
    from shared.config import get_preset

    model = DualForce(get_preset("tiny").model)
    for layer in model.bridge:
        assert layer.gate_v.abs().sum() == 0 and layer.gate_s.abs().sum() == 0


@pytest.mark.parametrize("field,shape,match", [
    ("video", (2, 6, 3, 8, 8), "video: expected"),
    ("sigma_video", (2, 5), "sigma_video"),
    ("struct", (2, 6, 5), "struct: expected"),
    ("sigma_struct", (2, 7), "sigma_struct"),
    ("audio", (2, 12, 7), "audio: expected"),
])
def test_bad_input_names_the_field(field, shape, match):
    model = tiny_model("dual")
    inp = tiny_inputs(model)
    inp[field] = torch.zeros(shape)
    with pytest.raises(ValueError, match=match):
        model(**inp)


def test_audio_too_short():
    model = tiny_model("dual")
    inp = tiny_inputs(model)
    inp["audio"] = inp["audio"][:, :8]
    with pytest.raises(ValueError, match="audio covers"):
        model(**inp)


def test_dense_mask_is_frame_causal():
    m = dense_frame_mask(Span(2, 2, 3), Span(0, 4, 1), torch.device("cpu"))
    assert m.shape == (6, 4)
    assert m[0].tolist() == [True, True, True, False]  # frame 2 sees frames 0..2
    assert m[-1].tolist() == [True, True, True, True]  # frame 3 sees 0..3


def test_kv_splits():
    assert kv_splits(33 * 256) == 11  # 768 keys a chunk
    assert kv_splits(33) == 1 and kv_splits(80) == 1  # nothing worth splitting / no aligned divisor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the memory-efficient kernel is CUDA-only")
@pytest.mark.parametrize("batch,frames,q_tokens,start", [(1, 1, 256, 0), (1, 1, 256, 20), (2, 2, 256, 31),
                                                          (1, 1, 1, 32)])
@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn", "mem-efficient"])
def test_split_kv_attention_matches_sdpa(batch, frames, q_tokens, start, cudnn, monkeypatch):
    """Flash-decoding's merge by log-sum-exp equals one attention over the whole cache, masked chunks included."""
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    q = torch.randn(batch, 12, frames * q_tokens, 128, device=dev, dtype=dt)
    k, v = (torch.randn(batch, 12, 33 * 256, 128, device=dev, dtype=dt) for _ in range(2))
    bias = cache_mask(start, frames, q_tokens, 256, 33, dt, dev)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float())
    monkeypatch.setattr(attention, "CUDNN_ATTENTION", cudnn)
    got = split_kv_attention(q, k, v, bias, kv_splits(k.shape[2]))
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the split's kernels are CUDA's")
def test_cached_attention_in_fp32_is_finite_and_exact():
    """A frame's queries against a long fp32 cache (self-forcing's rollout without autocast) do not take the split:
    cuDNN's kernel, called directly on fp32, returned NaN (H200, ebc6900); SDPA's own choice is exact."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    q = torch.randn(1, 12, 256, 128, device=dev)
    k, v = (torch.randn(1, 12, 33 * 256, 128, device=dev) for _ in range(2))
    bias = cache_mask(20, 1, 256, 256, 33, torch.float32, dev)
    got = attention.attend(q, k, v, bias)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                attn_mask=bias.double())
    assert got.isfinite().all()
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention block-sparse path runs on CUDA")
def test_flex_matches_sdpa():
    torch.manual_seed(0)
    s = Span(0, 9, 256)
    q, k, v = (torch.randn(1, 2, s.length, 64, device="cuda") for _ in range(3))
    a = frame_causal_attention(q, k, v, s, s, backend="flex")
    b = frame_causal_attention(q, k, v, s, s, backend="sdpa")
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


def outputs_and_grads(model: DualForce, inp: dict) -> tuple:
    """Both velocities and every parameter's gradient of a simple loss over them."""
    vv, vs = model(**inp)
    (vv.square().mean() + vs.square().mean()).backward()
    return vv, vs, [p.grad for p in model.parameters()]


def assert_same_outputs_and_grads(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    for g0, g1 in zip(a[2], b[2], strict=True):
        if g0 is not None:
            torch.testing.assert_close(g0, g1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams")
def test_struct_tower_on_a_second_stream_trains_the_same():
    """`overlap_towers` in training (`runtime.overlap_towers`): the struct tower's forward and backward on a second CUDA
    stream give the same outputs and gradients as one stream (autograd joins the streams where gradients cross)."""
    outs = []
    for overlap in (False, True):
        model = tiny_model("dual").cuda().overlap_towers(overlap)
        inp = {k: v.cuda() if torch.is_tensor(v) else v for k, v in tiny_inputs(model).items()}
        outs.append(outputs_and_grads(model, inp))
    assert_same_outputs_and_grads(*outs)


def test_compiled_blocks_trace_whole_and_match_eager():
    """`compile_blocks` (what --compile does) traces every block without a graph break and changes nothing:
    same outputs and gradients as eager. aot_eager keeps the test fast; the GPU benchmark uses inductor."""
    torch.manual_seed(0)
    eager = tiny_model("dual")
    inp = tiny_inputs(eager)
    compiled = tiny_model("dual")
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    assert_same_outputs_and_grads(outputs_and_grads(eager, inp), outputs_and_grads(compiled, inp))


def test_activation_checkpoints_recompute_inside_compiled_blocks():
    """`checkpoint_activations` (what --activation-checkpointing does): the chosen blocks run their forward again in
    the backward pass (counted in eager), the others do not; compiled blocks still trace whole (fullgraph) with it,
    and nothing changes: same outputs and gradients as eager without it. Without autograd nothing is recomputed."""
    from shared.models.blocks import Block, BridgeLayer
    from shared.training.sharding import checkpoint_activations

    eager = tiny_model("dual")
    inp = tiny_inputs(eager)
    models = []
    for compiled in (False, True):
        m = tiny_model("dual")
        m.load_state_dict(eager.state_dict())
        assert checkpoint_activations(m, (Block, BridgeLayer), every=2) == 3  # of 2 + 2 blocks and 1 bridge layer
        if compiled:
            m.compile_blocks(backend="aot_eager", fullgraph=True)
        models.append(m)
    runs = {}
    blocks = list(models[0].video.blocks) + list(models[0].struct.blocks)
    for blk in blocks:
        blk.calls = 0
        blk.self_attention = (lambda f, b: lambda *a, **k: (setattr(b, "calls", b.calls + 1), f(*a, **k))[1])(
            blk.self_attention, blk)
    for name, model in (("eager", eager), ("ac", models[0]), ("compiled", models[1])):
        vv, vs = model(**inp)
        forward_calls = [b.calls for b in blocks]
        (vv.square().mean() + vs.square().mean()).backward()
        runs[name] = (vv, vs, [p.grad for p in model.parameters()])
        if name == "ac":
            assert forward_calls == [1, 1, 1, 1]
            # every 2nd of video.blocks.0, video.blocks.1, bridge.0, struct.blocks.0, struct.blocks.1
            assert [b.calls for b in blocks] == [2, 1, 1, 2]
            with torch.no_grad():
                model(**inp)
            assert [b.calls for b in blocks] == [3, 2, 2, 3]
    for name in ("ac", "compiled"):
        assert_same_outputs_and_grads(runs["eager"], runs[name])
    with pytest.raises(ValueError, match="every=0"):
        checkpoint_activations(tiny_model("dual"), (Block,), every=0)
    with pytest.raises(ValueError, match="no"):
        checkpoint_activations(tiny_model("dual"), ())


def test_dual_oneway_cuts_the_video_to_struct_direction():
    """`bridge_video_to_struct=False` (the PoC's dual_oneway): both streams generated, but the struct prediction never
    depends on the video (known answer: change the video, the struct velocity stays bit for bit), while the video
    still hears the struct; the cut direction has no parameters and no FLOPs."""
    from shared.flops import forward_flops

    two, one = tiny_model("dual"), tiny_model("dual", bridge_video_to_struct=False)
    assert not any("video_to_struct" in k for k in one.state_dict()) and any(
        "video_to_struct" in k for k in two.state_dict())
    x = tiny_inputs(one, frames=4)
    other = {**x, "video": x["video"] + 1.0}
    with torch.no_grad():
        (v1, s1), (v2, s2) = (one(d["video"], d["sigma_video"], d["struct"], d["sigma_struct"], d["audio"])
                              for d in (x, other))
        moved = {**x, "struct": x["struct"] + 1.0}
        v3, _ = one(moved["video"], moved["sigma_video"], moved["struct"], moved["sigma_struct"], moved["audio"])
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    assert (v3 - v1).abs().max() > 1e-4
    assert forward_flops(one.cfg, 5)["bridge"] < forward_flops(two.cfg, 5)["bridge"]


def test_block_masks_only_where_every_query_sees_a_key_frame():
    """`FLEX_OPTIONS` tells the kernel no query row is empty: a block mask is built only when the first query frame
    sees a key frame (queries from before the keys start get a dense mask, which may hold empty rows)."""
    from torch.nn.attention.flex_attention import BlockMask

    q, k = Span(0, 32, 256), Span(0, 32, 256)
    assert isinstance(masks.frame_mask(q, k, "flex", torch.device("cpu")), BlockMask)
    later = Span(2, 30, 256)
    assert isinstance(masks.frame_mask(Span(0, 32, 256), later, "flex", torch.device("cpu")), torch.Tensor)


def test_residual_stream_stays_in_the_autocast_dtype():
    """Under bf16 autocast the fp32 gates do not lift the residual stream to fp32 (`residual_gate`); without
    autocast everything stays fp32."""
    model = tiny_model("dual")
    seen = []
    for blk in [*model.video.blocks, *model.struct.blocks, *model.bridge]:
        blk.register_forward_hook(lambda m, a, out: seen.extend(o.dtype for o in (out if isinstance(out, tuple)
                                                                                       else (out,))))
    inp = tiny_inputs(model)
    with torch.autocast("cpu", torch.bfloat16):
        model(**inp)
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    model(**inp)
    assert set(seen) == {torch.float32}


def assert_prints_ok_in_triton_interpreter(code: str) -> None:
    """Run `code` in a fresh process with TRITON_INTERPRET=1 (set before Triton is imported: the kernels then run on
    the CPU) and expect it to print "ok"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout[-2000:] + res.stderr[-2000:]


def test_fused_norm_rope_kernel_matches_the_reference():
    """The Triton qk-norm + RoPE kernels (forward and backward), run in Triton's interpreter on the CPU: a strided
    input (a slice of a projection), a transposed gradient, per-row and broadcast positions."""
    pytest.importorskip("triton")
    code = """
import torch
from shared.models import kernels as K
torch.manual_seed(0)
for rows in (5, 1):
    x = torch.randn(2, 5, 6, 16)[:, :, 3:].detach().requires_grad_(True)  # [B, S, H, D], strided
    w = (1 + 0.1 * torch.randn(16)).requires_grad_(True)
    cos, sin = torch.randn(rows, 8), torch.randn(rows, 8)
    g = torch.randn(2, 3, 5, 16).transpose(1, 2)  # the gradient as attention hands it back
    outs = []
    for fused in (True, False):
        x.grad = w.grad = None
        y = K.rms_norm_rope(x, w, 1e-6, cos, sin, fused=fused)
        (y * g).sum().backward()
        outs.append((y.detach(), x.grad, w.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert_prints_ok_in_triton_interpreter(code)


def test_seed_norm_rope_kernel_matches_the_reference_per_seed():
    """The seed-batched qk-norm + RoPE (#34): its Triton kernels in Triton's interpreter on the CPU against the
    written-out maths (`seed_reference`, `seed_reference_backward`), and those against autograd: a weight per seed,
    a strided input (a slice of a projection, as `unbind` hands k over), a transposed gradient, per-row and broadcast
    positions, an unbatched weight (stride 0)."""
    pytest.importorskip("triton")
    code = """
import torch
from shared.models import kernels as K
torch.manual_seed(0)
for rows, shared_w in ((5, False), (1, True)):
    x = torch.randn(3, 2, 5, 6, 16)[:, :, :, 3:].detach().requires_grad_(True)  # [N, B, S, H, D], strided
    w = (1 + 0.1 * torch.randn(1 if shared_w else 3, 16)).expand(3, 16).detach().requires_grad_(True)
    cos, sin = torch.randn(rows, 8), torch.randn(rows, 8)
    g = torch.randn(3, 2, 3, 5, 16).transpose(2, 3)  # [N, B, S, H, D] as attention hands it back
    y = K.seed_reference(x, w, 1e-6, cos, sin)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    dx, dw = K.seed_reference_backward(g, x.detach(), w.detach(), 1e-6, cos, sin)
    torch.testing.assert_close(dx, gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, gw, rtol=1e-5, atol=1e-5)
    yk = K.seeds_forward(x.detach(), w.detach(), cos, sin, 1e-6)
    dxk, parts = K.seeds_backward(g, x.detach(), w.detach(), cos, sin, 1e-6)
    torch.testing.assert_close(yk, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dxk, gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.sum(1), gw, rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert_prints_ok_in_triton_interpreter(code)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seed_norm_rope_under_vmap_is_one_op_with_the_norm_then_rope_values(dtype):
    """A lean qk-norm (`use_lean_norms`) under vmap over seeds with a weight per seed: `norm_rope` runs one op forward
    and one backward for all seeds (`SeedNormRope`), with the values and gradients of the plain RMSNorm then RoPE
    (to rounding: the fused maths is not rounded to x's dtype between the two); without vmap the same Function."""
    from shared.models.norms import RMSNorm
    from shared.models.rope import rope_1d

    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 4, 32).to(dtype)  # [seeds, B, S, H, D]
    w = (1 + 0.1 * torch.randn(3, 32)).to(dtype)
    g = torch.randn_like(x)
    cos, sin = rope_1d(torch.arange(7), 32, 10000.0)
    norm = RMSNorm(32, eps=1e-6)
    module = _NormRope(norm)
    found = _lean_and_plain(norm, lambda t, v: torch.func.functional_call(module, {"norm.weight": v},
                                                                          (t, (cos, sin))), x, w, g)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(found[True][:3], found[False][:3]):
        torch.testing.assert_close(a, b, **tol)
    assert found[True][3]["rms_norm_rope_seeds"] == 1 and found[True][3]["rms_norm_rope_seeds_backward"] == 1
    assert sum(found[True][3].values()) < sum(found[False][3].values()) / 3, (found[True][3], found[False][3])
    one = []  # outside vmap: the Function's own forward and backward (fp32 inside, so no fp64 gradcheck)
    for lean in (True, False):
        norm.lean_backward = lean
        x1, w1 = x[0].float().requires_grad_(True), w[0].float().requires_grad_(True)
        y = torch.func.functional_call(module, {"norm.weight": w1}, (x1, (cos, sin)))
        y.backward(g[0].float())
        one.append((y.detach(), x1.grad, w1.grad))
    for a, b in zip(*one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _NormRope(torch.nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x, rope):
        from shared.models.attention import norm_rope

        return norm_rope(x, self.norm, rope)


def _lean_and_plain(norm, call, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> dict:
    """call(x_seed, w_seed) vmapped over seeds and differentiated against g, with `norm` lean and plain:
    {lean: (y, dx, dw, calls)}."""
    found = {}
    for lean in (True, False):
        norm.lean_backward = lean
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

        def step():
            y = torch.func.vmap(call)(xs, ws)
            y.backward(g)
            return y
        calls = _calls(step)
        xs.grad = ws.grad = None
        found[lean] = (step().detach(), xs.grad, ws.grad, calls)
    return found


def _calls(fn) -> collections.Counter:
    """aten (and custom) calls by name while fn runs, views left out."""
    from shared.flops import VIEWS, KernelCalls

    with (calls := KernelCalls()):
        fn()
    return collections.Counter({k: n for k, n in (calls.forward + calls.backward).items() if k not in VIEWS})


def test_seed_rms_norm_kernels_match_the_reference_per_seed():
    """The seed-batched RMSNorm's Triton kernels (#34) in Triton's interpreter on the CPU against the written-out
    maths, and those against autograd: widths that are not powers of two, rows in several blocks, a weight per seed
    and an unbatched one (stride 0)."""
    pytest.importorskip("triton")
    code = """
import torch
from shared.models import kernels as K
torch.manual_seed(0)
for d, shared_w in ((48, False), (576, True)):
    x = torch.randn(2, 37, d).requires_grad_(True)  # [N, R, D]
    w = (1 + 0.1 * torch.randn(1 if shared_w else 2, d)).expand(2, d).detach().requires_grad_(True)
    g = torch.randn(2, 37, d)
    y, rstd = K.seed_rms_norm_reference(x, w, 1e-6)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    dx, dw = K.seed_rms_norm_reference_backward(g, x.detach(), w.detach(), rstd)
    torch.testing.assert_close(dx, gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, gw, rtol=1e-5, atol=1e-5)
    yk, rk = K.norm_seeds_forward(x.detach(), w.detach(), 1e-6)
    dxk, parts = K.norm_seeds_backward(g, x.detach(), w.detach(), rk)
    torch.testing.assert_close(yk, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, rstd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dxk, gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.sum(1), gw, rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert_prints_ok_in_triton_interpreter(code)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels themselves (the device's check)")


@CUDA
def test_seed_kernels_on_cuda_match_the_reference():
    """On a GPU the seed-batched ops run their Triton kernels: forward and gradients against the written-out maths
    (`seed_reference`, `seed_rms_norm_reference`) at rung l's shapes in bf16, as the lockstep step calls them."""
    from shared.models import kernels as K

    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(3, 8, 33 * 16, 2 * 18, 32, device=dev, dtype=bf)[:, :, :, :18]  # k's layout: a slice of kv
    w = (1 + 0.1 * torch.randn(3, 32, device=dev)).to(bf)
    cos, sin = torch.randn(33 * 16, 16, device=dev), torch.randn(33 * 16, 16, device=dev)
    g = torch.randn(x.shape, device=dev, dtype=bf)
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    y = torch.ops.dualforce.rms_norm_rope_seeds(xr, wr, cos, sin, 1e-6)
    gx, gw = torch.autograd.grad(y, (xr, wr), g)
    dx, dw = K.seed_reference_backward(g, x, w, 1e-6, cos, sin)
    torch.testing.assert_close(y, K.seed_reference(x, w, 1e-6, cos, sin), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, dx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.float(), dw, rtol=2e-2, atol=0.5)  # a sum over 300k rows, in bf16 at the end
    x = torch.randn(3, 8 * 33 * 16, 576, device=dev, dtype=bf)
    w = (1 + 0.1 * torch.randn(3, 576, device=dev)).to(bf)
    g = torch.randn(x.shape, device=dev, dtype=bf)
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    y, rstd = torch.ops.dualforce.rms_norm_seeds(xr, wr, 1e-6)
    gx, gw = torch.autograd.grad(y, (xr, wr), g)
    ref, rstd_ref = K.seed_rms_norm_reference(x, w, 1e-6)
    dx, dw = K.seed_rms_norm_reference_backward(g, x, w, rstd_ref)
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(rstd, rstd_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, dx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.float(), dw, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("dtype, device", [(torch.float32, "cpu"), (torch.bfloat16, "cpu"),
                                           pytest.param(torch.bfloat16, "cuda", marks=CUDA)])
def test_seed_attention_under_vmap_is_one_call_with_sdpa_values(dtype, device):
    """`seed_batched` (#34): under vmap over seeds with a weight per seed, a dual's attentions (frame-causal self and
    bridge, the audio windows) fold the seeds into one fused call each way, with the values and gradients of vmap's
    own SDPA (to rounding); `use_seed_attention` reaches every attention; outside vmap the same function. On CUDA in
    bf16 only, the one precision the trainer switches it on in (fp32 there differed by up to 4e-3 on an H200,
    2026-12-05, as TF32 products would: the audio windows' Triton kernel multiplies fp32 in TF32, `tl.dot`'s
    default; not traced further)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from shared.models.attention import use_seed_attention

    torch.manual_seed(0)
    models = [tiny_model("dual").to(device) for _ in range(3)]
    inp = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tiny_inputs(models[0]).items()}
    params, buffers = torch.func.stack_module_state(models)
    base = tiny_model("dual").to(device)
    found = {}
    for seeds in (True, False):
        for m in base.modules():
            if isinstance(m, Attention):
                m.seed_batched = seeds
        ps = {n: p.detach().to(dtype).requires_grad_(True) for n, p in params.items()}
        inp_d = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inp.items()}

        def step():  # under SDPA's math kernel, as the trainer runs vmap (the only one with a masked batching rule)
            with sdpa_kernel(SDPBackend.MATH):
                out = torch.func.vmap(lambda p, b: torch.func.functional_call(base.to(dtype), (p, b), (), inp_d),
                                      in_dims=(0, 0))(ps, buffers)
            loss = sum(o.float().pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)) if o is not None)
            loss.backward()
            return out
        calls = _calls(step)
        for p in ps.values():
            p.grad = None
        out = step()
        found[seeds] = (out, {n: p.grad for n, p in ps.items()}, calls)
    pairs = [(a, b) for a, b in zip(found[True][0], found[False][0]) if a is not None]
    pairs += [(found[True][1][n], found[False][1][n]) for n in found[False][1]]
    for a, b in pairs:  # bf16: the whole model's rounding, compared as a relative error of the tensor
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        else:
            assert (a.float() - b.float()).norm() <= 5e-2 * b.float().norm() + 1e-6
    fused = sum(n for k, n in found[True][2].items() if "flash" in k or "efficient" in k or "window" in k)
    assert fused > 0 and "_safe_softmax" not in found[True][2], found[True][2]
    assert sum(found[True][2].values()) < sum(found[False][2].values())
    assert use_seed_attention(tiny_model("dual")) == sum(isinstance(m, Attention) for m in base.modules())


def test_seed_linears_are_one_baddbmm_for_all_seeds():
    """`SeedLinears` (#34): under vmap over seeds every `nn.Linear` (with or without bias, on batched or shared inputs)
    gives vmap's own values and gradients in fewer kernels, one `baddbmm` forward; outside vmap plain `F.linear`."""
    from shared.models.seed_batched import SeedLinears

    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 8)
    w, b = torch.randn(3, 6, 8), torch.randn(3, 6)
    g = torch.randn(3, 2, 5, 6)
    shared = torch.randn(2, 5, 8)  # an input every seed shares: vmap's own rule
    found = {}
    for mode in (True, False):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))

        def step():
            with SeedLinears() if mode else contextlib.nullcontext():
                y = torch.vmap(lambda a, v, c: torch.nn.functional.linear(a, v, c))(xs, ws, bs)
                y2 = torch.vmap(lambda v: torch.nn.functional.linear(shared, v))(ws)
            (y * g).sum().backward()
            (y2 * g).sum().backward()
            return y.detach(), y2.detach()
        calls = _calls(step)
        xs.grad = ws.grad = bs.grad = None
        found[mode] = (*step(), xs.grad, ws.grad, bs.grad, calls)
    for a, c in zip(found[True][:5], found[False][:5]):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert found[True][5]["baddbmm"] == 1, found[True][5]
    assert sum(found[True][5].values()) < sum(found[False][5].values()), (found[True][5], found[False][5])
    with SeedLinears():  # outside vmap: the Function's own backward, checked in fp64
        torch.testing.assert_close(torch.nn.functional.linear(x, w[0], b[0]), x @ w[0].T + b[0])
        torch.testing.assert_close(torch.nn.functional.linear(input=x, weight=w[0]), x @ w[0].T)  # by keyword
        assert torch.autograd.gradcheck(torch.nn.functional.linear, tuple(
            t.double().requires_grad_(True) for t in (x[0, :, :2], w[0], b[0])))


def test_seed_ops_pass_torchs_custom_op_checks():
    """The seed ops' registrations (fake shapes, autograd, schema) as `torch.library.opcheck` checks them, on the CPU:
    what torch.compile would rely on."""
    from shared.models import kernels as K

    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 4, 2, 16), torch.randn(2, 16)
    cos, sin = torch.randn(4, 8), torch.randn(4, 8)
    torch.library.opcheck(torch.ops.dualforce.rms_norm_rope_seeds, (x.requires_grad_(True), w, cos, sin, 1e-6))
    torch.library.opcheck(torch.ops.dualforce.rms_norm_rope_seeds_backward, (torch.randn_like(x), x.detach(), w,
                                                                             cos, sin, 1e-6))
    x, w = torch.randn(2, 7, 48), torch.randn(2, 48)
    torch.library.opcheck(torch.ops.dualforce.rms_norm_seeds, (x.requires_grad_(True), w, 1e-6))
    _, rstd = K.seed_rms_norm_reference(x.detach(), w, 1e-6)
    torch.library.opcheck(torch.ops.dualforce.rms_norm_seeds_backward, (torch.randn_like(x), x.detach(), w, rstd))


def test_fused_norm_rope_kernels_take_eps_as_a_constant():
    """eps reaches the Triton kernels as a constexpr: as a run-time argument inductor's launch types a Python float
    as fp64 (Triton's own launcher: fp32), and every element's arithmetic after `* rstd` ran in fp64, the backward at
    half speed in the compiled training step (H100, benchmarks/RESULTS.md, twelfth session)."""
    pytest.importorskip("triton")
    from shared.models import kernels as K

    for kernel in (K._fwd, K._bwd):
        assert {p.name for p in kernel.params if p.is_constexpr} >= {"eps", "D", "BLOCK"}


def test_training_switches_every_attention_to_the_fused_norm_rope_and_nothing_else(mode):
    """`RuntimeConfig.fused_norm_rope` reaches every attention (self, cross, audio) of the trained model through
    `prepare_model`, the model computes the same function (on the CPU both paths are the fp32 reference maths), and
    off leaves inductor's path."""
    from shared.config import RuntimeConfig
    from shared.training.loop import prepare_model

    model = tiny_model(mode)
    inp = tiny_inputs(model)
    before = run(model, inp)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert layers and not any(m.fused_norm_rope for m in layers)
    prepare_model(model, RuntimeConfig(fused_norm_rope=False), (), torch.device("cpu"))
    assert not any(m.fused_norm_rope for m in layers)
    done = prepare_model(model, RuntimeConfig(), (), torch.device("cpu"))
    assert all(m.fused_norm_rope for m in layers) and any(str(len(layers)) in d for d in done)
    kinds = {type(m).__name__ for m in layers}
    assert "AudioAttention" in kinds and "Attention" in kinds
    for a, b in zip(before, run(model, inp)):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_window_attention_kernels_match_sdpa():
    """The window attention's Triton kernels (forward and backward), run in Triton's interpreter on the CPU, against
    SDPA with the dense mask: a frame's own 7 keys (the audio attention's layout: v a strided slice of the key/value
    projection, frames of 70 queries: two steps of the kernel's loop, the second part dead), and keys every frame
    shares (the bridge's struct tokens: 20 and 33 keys, padded to 32 and 64), frame-causal or random masks."""
    pytest.importorskip("triton")
    code = """
import torch
from shared.models import window_attention as WA
torch.manual_seed(0)
B, T, n, H, D = 2, 2, 70, 2, 16
for shared, W in ((False, 7), (True, 20), (True, 33)):
    valid = torch.rand(T, W) > 0.5 if W != 33 else torch.arange(T)[:, None] * 16 >= torch.arange(W)[None, :]
    valid[:, 0] = True
    q = torch.randn(B, T * n, H, D, requires_grad=True)
    kv = torch.randn(B if shared else B * T, W, 2, H, D)
    g = torch.randn(B, T * n, H, D)
    outs = []
    for fused in (True, False):
        q.grad = None
        kvl = kv.clone().requires_grad_(True)
        o = WA.window_attention(q, kvl[:, :, 0], kvl[:, :, 1], valid, fused=fused)
        (o * g).sum().backward()
        outs.append((o.detach(), q.grad, kvl.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert_prints_ok_in_triton_interpreter(code)


def test_window_attention_kernels_take_scales_as_constants():
    """The softmax scales reach the kernels as constexprs (a Python float argument is typed fp64 in inductor's
    launch: see `test_fused_norm_rope_kernels_take_eps_as_a_constant`)."""
    pytest.importorskip("triton")
    from shared.models import window_attention as WA

    assert {p.name for p in WA._window_fwd.params if p.is_constexpr} >= {"QK_SCALE", "N", "W", "D", "WP"}
    assert {p.name for p in WA._window_bwd.params if p.is_constexpr} >= {"QK_SCALE", "SCALE", "N", "W", "D", "WP"}


def test_window_attention_refuses_shapes_that_do_not_agree():
    from shared.models.window_attention import window_attention

    q, kv = torch.randn(2, 12, 3, 8), torch.randn(6, 7, 3, 8)
    assert window_attention(q, kv, kv, torch.ones(3, 7, dtype=torch.bool)).shape == q.shape
    with pytest.raises(ValueError, match=r"valid \(3, 5\) = \[T, W\] do not agree"):
        window_attention(q, kv, kv, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"k \(6, 7, 3, 8\)"):
        window_attention(q, kv, kv, torch.ones(5, 7, dtype=torch.bool))


def test_training_switches_audio_and_bridge_attention_to_the_window_kernel(mode, monkeypatch):
    """`RuntimeConfig.fused_window_attention` reaches every audio attention and the bridge's struct -> video
    direction through `prepare_model`; the model computes the same function (on the CPU the window path is SDPA over
    each frame's mask row, so this also checks the bridge picks the right rows), and off leaves SDPA's path."""
    from shared.config import RuntimeConfig
    from shared.models import attention as A, blocks as B
    from shared.training.loop import prepare_model

    calls = []
    model = tiny_model(mode)
    inp = tiny_inputs(model)
    before = run(model, inp)
    layers = [m for m in model.modules() if isinstance(m, (AudioAttention, BridgeLayer))]
    prepare_model(model, RuntimeConfig(fused_window_attention=False), (), torch.device("cpu"))
    assert layers and not any(m.fused_window for m in layers)
    done = prepare_model(model, RuntimeConfig(), (), torch.device("cpu"))
    assert all(m.fused_window for m in layers) and any(f"window attention kernel: {len(layers)}" in d for d in done)
    monkeypatch.setattr(A, "window_attention", lambda *a, **k: calls.append("bridge") or B.window_attention(*a, **k))
    after = run(model, inp)
    audio = sum(isinstance(m, B.AudioAttention) for m in layers)
    assert audio == len(model.video.blocks) + (len(model.struct.blocks) if model.struct is not None else 0)
    assert calls.count("bridge") == len(model.bridge)
    for a, b in zip(before, after):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_norm_rope_refuses_positions_of_another_length():
    """The kernel indexes cos/sin by each row's position: a table of another length would be read out of place, so
    it is refused with the shapes named (on every device, the CPU's reference path too)."""
    from shared.models import kernels as K

    x, w = torch.randn(2, 5, 3, 16), torch.ones(16)
    with pytest.raises(ValueError, match=r"cos \(4, 8\).*x \[B, S, H, D\] = \(2, 5, 3, 16\)"):
        K.rms_norm_rope(x, w, 1e-6, torch.randn(4, 8), torch.randn(4, 8))
    for rows in (1, 5):
        assert K.rms_norm_rope(x, w, 1e-6, torch.randn(rows, 8), torch.randn(rows, 8)).shape == x.shape


def _kernels(fn) -> int:
    """Kernels launched while fn() runs (`shared.flops.KernelCalls`)."""
    return sum(_calls(fn).values())


@pytest.mark.parametrize("head_dim", [16, 32, 128, 12, 24])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_as_a_complex_product_is_the_rotation_in_fewer_kernels(dtype, head_dim):
    """`apply_rope` (eager: one complex product) gives the written-out rotation's values and gradients, batched over
    seeds by vmap as the lockstep trainer runs it, in under half the kernels (#34): bit for bit on the CPU where the
    head's pairs fill torch's vector loop (a multiple of 16 channels: every preset), to an ulp or two elsewhere (the
    loop's tail fuses its multiply-adds); a layout complex numbers cannot view (odd strides) is copied, not refused."""
    from shared.models.rope import apply_rope, rotate_pairs

    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 4, head_dim).to(dtype)  # [seeds, B, S, H, D]
    angles = 10 * torch.randn(5, head_dim // 2)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    g = torch.randn_like(x)
    found = {}
    for rope in (apply_rope, rotate_pairs):
        leaf = x.clone().requires_grad_(True)

        def step():
            y = torch.func.vmap(lambda t: rope(t, cos, sin))(leaf)
            y.backward(g)
            return y
        kernels = _kernels(step)
        found[rope.__name__] = (step().detach(), leaf.grad, kernels)
    (y, gx, n_complex), (y_ref, gx_ref, n_pairs) = found["apply_rope"], found["rotate_pairs"]
    if head_dim % 16 == 0:
        assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    else:
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)
    assert n_complex * 2 < n_pairs, (n_complex, n_pairs)
    odd = torch.randn(5, 4, head_dim + 1)[..., 1:]  # [S, H, D]: the pairs start at an odd offset
    torch.testing.assert_close(apply_rope(odd, cos, sin), rotate_pairs(odd, cos, sin), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_rms_norm_keeps_the_forward_and_the_gradients_in_fewer_kernels(dtype):
    """`LeanRMSNorm`: the forward of `nn.RMSNorm` bit for bit, its gradients (input and weight) to rounding, under
    vmap over seeds with a weight per seed, in fewer kernels; switched on by `use_lean_norms` only."""
    from shared.models.norms import RMSNorm, use_lean_norms

    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 32).to(dtype)  # [seeds, B, S, D]
    w = (1 + 0.1 * torch.randn(3, 32)).to(dtype)
    g = torch.randn_like(x)
    norm = RMSNorm(32, eps=1e-6)
    found = _lean_and_plain(norm, lambda t, v: torch.func.functional_call(norm, {"weight": v}, (t,)), x, w, g)
    calls = found[True][3]  # one op for every seed each way (`kernels.rms_norm_seeds`)
    assert calls["rms_norm_seeds"] == calls["rms_norm_seeds_backward"] == 1, calls
    found = {lean: (*f[:3], sum(f[3].values())) for lean, f in found.items()}
    assert torch.equal(found[True][0], found[False][0])
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(found[True][1:3], found[False][1:3]):
        torch.testing.assert_close(a, b, **tol)
    assert found[True][3] < found[False][3] - 5, (found[True][3], found[False][3])
    # first derivatives right in fp64 (a Function's own check), none when nothing takes the output's gradient
    norm.lean_backward = True
    x64, w64 = torch.randn(2, 3, 32, dtype=torch.float64, requires_grad=True), torch.randn(32, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t, v: torch.func.functional_call(norm, {"weight": v}, (t,)),
                                    (x64, w64.requires_grad_(True)))
    model = tiny_model("dual")
    n = use_lean_norms(model)
    assert n == sum(isinstance(m, torch.nn.RMSNorm) for m in model.modules()) > 0


def test_kernel_sources_name_the_library_call_and_the_node_and_add_up():
    """`KernelCalls(sources=True)` (what `benchmarks/step_kernels.py --sources` prints): every kernel is attributed
    once, the forward's to the library function that called it, the backward's to the autograd node and the forward
    call that made it (recorded under anomaly mode, which adds no kernel)."""
    from shared.flops import KernelCalls
    from shared.models.blocks import modulate

    model = tiny_model("dual")
    inp = tiny_inputs(model)
    model(**inp)[0].sum().backward()  # lazy one-time work (einops, caches) outside the count
    plain = KernelCalls()
    with plain:
        model(**inp)[0].sum().backward()
    calls = KernelCalls(sources=True)
    with torch.autograd.set_detect_anomaly(True, check_nan=False), calls:
        model(**inp)[0].sum().backward()
    assert sum(calls.sources.values()) == calls.kernels() == plain.kernels()
    where = {src for src, _ in calls.sources}
    line = f":{modulate.__code__.co_firstlineno + 3}"  # its one line of maths
    assert "F models/blocks.py:modulate" + line in where
    assert "B MulBackward0 <- models/blocks.py:modulate" + line in where
    assert not any(src.startswith("F flops.py") for src in where), where
    # outside the library: only this test's own .sum() and the ones backward() starts from
    assert {op for src, op in calls.sources if src.endswith("?")} == {"sum", "ones_like"}


def test_step_kernels_counts_and_profiles_one_lockstep_step(monkeypatch):
    """`benchmarks/step_kernels.py` on a small shape: the count by op and by source agree, and `--profile` times one
    more step (on a CPU the host's time by op: the matmuls among the largest)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # its sibling modules
    sk = script("benchmarks/step_kernels.py", "step_kernels_cli")
    out = sk.count(sk.KernelCount(shape="64x2", variant="video_only", seeds=2, precision="32-true", sources=True,
                                  profile=True))
    assert out["kernels"] == sum(v["kernels"] for v in out["by_source"].values()) > 0
    prof = out["step_profile"]
    assert prof["clock"] == "host" and prof["total_ms"] > 0 and len(prof["top"]) <= 30
    assert any(r["name"] in ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm") for r in prof["top"][:10])
