"""The scaling ladder (#34): the trend fit on known answers, rung settings, and the ladder's report from rung
reports (built here as the PoC writes them, without training)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import config as C
from shared.evaluation import ladder
from shared.evaluation.verdicts import NOT_TESTABLE

ROOT = Path(__file__).resolve().parents[1]


def _poc():
    """The PoC's public names in one namespace (settings, suite, the ladder's climb)."""
    import types
    from dataclasses import asdict

    from shared.poc import ladder as L
    from shared.poc import settings as S
    from shared.poc import suite as V

    names = {k: getattr(m, k) for m in (S, V) for k in dir(m) if not k.startswith("_")}
    return types.SimpleNamespace(**{**names, "settings": S.resolve, "asdict": asdict, "climb": L.climb})


def test_a_line_through_exact_points_is_recovered_and_extrapolated():
    params = [2.6e6, 5.7e6, 31.8e6, 92.4e6]
    y = [0.1 + 0.05 * math.log10(p) for p in params]
    t = ladder.fit_trend(params, y, [0.01] * 4)
    assert t.slope == pytest.approx(0.05) and t.intercept == pytest.approx(0.1)
    at = t.predict(1.5e9)
    assert at["mean"] == pytest.approx(0.1 + 0.05 * math.log10(1.5e9))
    assert at["lo"] < at["mean"] < at["hi"] and at["se"] > t.predict(10e6)["se"]  # wider away from the rungs
    assert ladder.fit_trend([1e6], [0.1], [0.01]) is None and ladder.fit_trend([1e6, 1e6], [0.1, 0.2], [1, 1]) is None


def test_trend_intervals_cover_the_true_line():
    """Rungs measured with known errors: the 95% interval of the extrapolation covers the true value in ~95% of
    simulated ladders (and the slope's too); scatter beyond the errors widens them instead of being ignored."""
    g = np.random.default_rng(0)
    params = np.array([2.6e6, 5.7e6, 31.8e6, 92.4e6])
    truth = lambda p: -0.2 + 0.04 * np.log10(p)  # noqa: E731
    cover_at, cover_slope = 0, 0
    for _ in range(400):
        se = g.uniform(0.01, 0.03, 4)
        t = ladder.fit_trend(params, truth(params) + g.normal(0, se), se)
        at = t.predict(1.5e9)
        cover_at += at["lo"] <= truth(1.5e9) <= at["hi"]
        lo, hi = t.slope_interval()
        cover_slope += lo <= 0.04 <= hi
    assert 0.9 <= cover_at / 400 <= 0.99 and 0.9 <= cover_slope / 400 <= 0.99
    tight = ladder.fit_trend(params, truth(params) + np.array([0.1, -0.1, 0.1, -0.1]), [0.01] * 4)
    assert tight.chi2_per_dof > 1 and tight.slope_se > 0.01  # the scatter, not the stated errors, sets the width


def _report(dual_params: float, lip_gap: float, h2a: float, seeds: int = 3, usage_ratio: float = 0.1) -> dict:
    """A rung's report.json as stage0_poc/run.py writes it (the keys the ladder reads)."""
    test = lambda m, mean: {"metric": m, "mean": mean, "se": 0.02, "lo": mean - 0.06, "hi": mean + 0.06,  # noqa
                            "n": seeds, "outcome": "inconclusive"}
    return {
        "settings": {"seeds": seeds, "train_clips": 40, "train_steps": 4000},
        "seed_verdicts": {"H2a: dual beats video_only": {"verdict": "inconclusive",
                                                          "tests": [test("lip sync: lip_r", h2a)]},
                          "past frames clean p=0.3 beats p=0": {"verdict": "x", "tests": [test("lip sync: lip_r", 9)]}},
        "headroom": {"lip sync": {"gap": lip_gap, "se": 0.02, "lo": lip_gap - 0.05, "n": seeds, "sesoi": 0.05,
                                  "status": "testable" if lip_gap > 0.15 else NOT_TESTABLE}},
        "sizes": {"dual": {"parameters": dual_params, "tokens_per_frame": 16, "train_flops_per_frame": 1e9},
                  "video_only": {"parameters": dual_params / 2.2, "tokens_per_frame": 16,
                                 "train_flops_per_frame": 4e8}},
        "per_seed": {"dual": {"lip_r": [0.3] * seeds,  # a seed effect shared with the others, and a little spread
                              "bridge_velocity_change": [0.01 * (1 + 0.05 * k) * (1 + 0.02 * (k - 1))
                                                         for k in range(seeds)],
                              "bridge_gate": [0.01] * seeds},
                     "video_only": {"lip_r": [0.2] * seeds},
                     # dual's usage over condition_only's is usage_ratio in every seed but for a shared seed effect
                     "condition_only": {"lip_r": [0.5] * seeds, "bridge_velocity_change":
                                        [0.01 / usage_ratio * (1 + 0.05 * k) for k in range(seeds)]},
                     "dual_oneway": {"lip_r": [0.3] * seeds, "bridge_velocity_change": [0.01 * (1 + 0.05 * k)
                                                                                         for k in range(seeds)]}},
        "learning_curves": {"dual": {"heldout_video": {"2000": [0.30] * seeds, "4000": [0.28] * seeds},
                                     "bridge_usage": {"2000": [0.001] * seeds, "4000": [0.01] * seeds}}},
        "metrics": {"real": {"metrics": {"lip_r": {"mean": 0.9}}},
                    "dual": {"bridge_usage": {"velocity_change": 0.01,
                                              "by_struct_sigma": {"0.0": 0.02, "1.0": 0.002}}}},
        "verdicts": {"H2: the 3-D stream adds structure (H2a and H2b)": {"verdict": NOT_TESTABLE},
                     "H2a: dual beats video_only": {"verdict": "not supported"}},  # seed 0's clips only
        "wall_seconds": 100.0,
    }


def test_each_rungs_weight_in_a_trend_is_its_share_of_one_over_se_squared():
    """Which rungs a line leans on (#34: three of the four H2 lip-sync lines were 77-89% xs): SEs 0.01 and 0.02 weigh
    4 : 1; a rung the fit drops (no finite positive error, or no finite effect) has no share."""
    shares = ladder.weight_shares(["xs", "s", "m", "l"], [1e6, 1e7, 1e8, 1e9], [0.1, 0.2, 0.3, float("nan")],
                                  [0.01, 0.02, float("nan"), 0.01])
    assert shares.keys() == {"xs", "s"}
    assert math.isclose(shares["xs"], 0.8) and math.isclose(shares["s"], 0.2)


def test_the_ladder_report_from_rung_reports(tmp_path):
    halving = {p: 0.1 * (p / 2.6e6) ** math.log10(0.5) for p in (2.6e6, 5.7e6, 31.8e6, 92.4e6)}  # x0.5 a decade
    reports = {"xs": _report(2.6e6, 0.04, -0.05, usage_ratio=halving[2.6e6]),
               "s": _report(5.7e6, 0.1, 0.0, usage_ratio=halving[5.7e6]),
               "m": _report(31.8e6, 0.3, 0.05, usage_ratio=halving[31.8e6]),
               "l": _report(92.4e6, 0.4, 0.1, usage_ratio=halving[92.4e6])}
    res = ladder.write(tmp_path, reports, full=1.5e9)
    assert (tmp_path / "trend.png").stat().st_size > 0 and json.loads((tmp_path / "ladder.json").read_text())
    assert set(res["trends"]) == {"H2a vs video_only | lip sync: lip_r", "oracle gap | lip sync"}  # H2 only
    gap = res["trends"]["oracle gap | lip sync"]
    assert gap["points"] == 4 and gap["slope_per_decade"] > 0 and gap["extrapolation_to_full"]["mean"] > 0.4
    assert list(gap["weights"]) == ["xs", "s", "m", "l"] and math.isclose(sum(gap["weights"].values()), 1)
    md = (tmp_path / "ladder.md").read_text()
    assert "An extrapolation, not a measurement" in md and "| l | 42.0 M | 92.4 M |" in md
    assert "each rung's weight (1/SE^2)" in md
    assert "| oracle gap | lip sync | 0.040 [-0.010, inf] not testable at this scale |" in md  # one-sided
    assert res["rungs"][0]["data_starved_check"]["dual"]["still_falling_or_flat"]
    assert res["rungs"][0]["bridge_usage_curve"] == {"dual": {2000: 0.001, 4000: 0.01}}
    assert "| xs | dual | 2000: 0.0010, 4000: 0.0100 |" in md  # when the bridge opens, per rung
    assert res["rungs"][0]["bridge_usage_by_struct_sigma"] == {"dual": {0.0: 0.02, 1.0: 0.002}}
    assert res["rungs"][0]["verdicts"]["H2a: dual beats video_only"] == "inconclusive"  # the seeds', not seed 0's
    assert res["rungs"][0]["clip_verdicts_seed0"]["H2a: dual beats video_only"] == "not supported"
    assert "| xs | not testable at this scale | inconclusive |" in md
    one = ladder.verdicts_of({**reports["xs"], "settings": {"seeds": 1}})  # one seed decides nothing at that level
    assert one["H2a: dual beats video_only"] == "not supported"
    as_run = {**reports["xs"],
              "seed_verdicts": {q: {**v, "seeds": 1} for q, v in reports["xs"]["seed_verdicts"].items()}}
    assert ladder.verdicts_of(as_run)["H2a: dual beats video_only"] == "not supported"  # the count a run records
    assert "| rung | variant | struct sigma 0 | struct sigma 1 |" in md and "| l | dual | 0.0200 | 0.0020 |" in md
    # the dual's bridge usage over condition_only's: per rung over seeds, and its factor per decade (known: 0.5)
    assert res["rungs"][0]["dual_usage_ratios"]["dual / condition_only"]["ratio"] == pytest.approx(0.1, rel=1e-3)
    assert res["dual_usage_trends"]["dual / condition_only"]["factor_per_decade"][0] == pytest.approx(0.5, rel=1e-3)
    assert "| xs | 0.1 [" in md and "| dual / condition_only | x0.5 [" in md
    assert res["rungs"][0]["dual_usage_ratios"]["dual / dual_oneway"]["ratio"] == pytest.approx(1.0, rel=1e-3)
    for table in [b.splitlines() for b in md.split("\n\n") if b.startswith("| ")]:  # each renders as a table
        assert {line.count("|") for line in table} == {table[0].count("|")}, table[:2]


def test_rungs_grow_the_model_30x_and_keep_the_default():
    poc = _poc()
    from shared import config as C
    from shared.data.cache import CacheMeta

    meta = CacheMeta(64, (8, 16, 16), {"name": "tiny-ae"}, "explicit", tuple("m" * 13), {"name": "logmel", "dim": 80},
                     80)
    base = C.get_preset("poc")
    size = {}
    for rung, spec in poc.RUNGS.items():
        s = replace(poc.GPU, rung=rung, **spec)
        cfgs = {v.name: poc.variant_config(base, v, meta, s, s.train_steps, "cpu", 0) for v in poc.CORE_VARIANTS}
        size[rung] = {n: poc.parameters(c.model) for n, c in cfgs.items()}
        assert abs(size[rung]["video_only_wide"] / size[rung]["dual"] - 1) < 0.02  # parameter-matched at every rung
    assert size["l"]["video_only"] >= 30 * size["xs"]["video_only"] and size["l"]["dual"] >= 30 * size["xs"]["dual"]
    default = poc.variant_config(base, poc.VARIANTS["video_only_wide"], meta, poc.GPU, 4000, "cpu", 0)
    assert default.model.dim == 192  # the default's baseline is the one earlier runs trained


def test_every_variant_of_the_full_suite_makes_a_valid_config():
    """Each variant's overrides (its training and its sampling) name real fields with valid values at every rung: a
    misspelt key or a refused combination fails here, not on the GPU after the data phase."""
    poc = _poc()
    from shared import config as C
    from shared.data.cache import CacheMeta
    from shared.poc import suite

    meta = CacheMeta(64, (8, 16, 16), {"name": "tiny-ae"}, "explicit", tuple("m" * 13), {"name": "logmel", "dim": 80},
                     80)
    for rung, spec in poc.RUNGS.items():
        s = replace(poc.GPU, rung=rung, **spec)
        for v in suite.FULL_VARIANTS:
            cfg = poc.variant_config(C.get_preset("poc"), v, meta, s, 10, "cpu", 0)
            for key, value in v.overrides.items():
                if key != "model.fusion_depth":  # FUSE_ALL resolves to the rung's depth
                    section, name = key.split(".")
                    assert getattr(getattr(cfg, section), name) == value or value == suite.SYNC_EXPERT, (v.name, key)
            assert all(getattr(cfg.sample, k) == val for k, val in v.sample), v.name
    cascade = poc.variant_config(C.get_preset("poc"), suite.VARIANTS["dual_cascade"], meta, poc.GPU, 10, "cpu", 0)
    assert cascade.diffusion.video_loss_on == "clean_struct" and cascade.sample.struct_first


def _args(**kw):
    import argparse

    base = dict(quick=False, task="v2", rung="xs", bridge_gate_init=None, seeds=None, eval_clips=None, rollouts=None,
                curve_points=None, train_steps=None, suite="core", retrain=False, device="cpu", out="runs/poc",
                ladder=False)
    return argparse.Namespace(**{**base, **kw})


def test_an_open_bridge_gate_is_every_variants():
    """--bridge-gate-init opens the gates of every variant with a bridge alike (a fair comparison); closed by
    default, as the gates were before the option (zeros: the default's numbers unchanged)."""
    poc = _poc()
    from shared import config as C
    from shared.data.cache import CacheMeta
    from shared.models import DualForce

    meta = CacheMeta(64, (8, 16, 16), {"name": "tiny-ae"}, "explicit", tuple("m" * 13), {"name": "logmel", "dim": 80},
                     80)
    s = replace(poc.QUICK, bridge_gate_init=0.1)
    for v in poc.CORE_VARIANTS:
        cfg = poc.variant_config(C.get_preset("tiny"), v, meta, s, 4, "cpu", 0)
        gates = [p for n, p in DualForce(cfg.model).named_parameters() if ".gate_" in n]
        assert cfg.model.bridge_gate_init == 0.1 and all(torch.all(g == 0.1) for g in gates), v.name
        assert bool(gates) == (cfg.model.has_struct and cfg.model.fusion_depth > 0), v.name
    closed = DualForce(C.get_preset("tiny").model)
    assert all(torch.all(p == 0) for n, p in closed.named_parameters() if ".gate_" in n)
    with pytest.raises(ValueError, match="bridge_gate_init"):
        C.override(C.get_preset("tiny"), {"model.bridge_gate_init": -0.1})


def test_rung_settings_and_folders():
    poc = _poc()
    s = poc.settings(_args(rung="l"), "cuda")
    assert (s.rung, s.seeds, s.train_steps, s.train_clips, s.eval_clips) == ("l", 3, 4000, 320, 32)
    assert poc.settings(_args(rung="l", seeds=4, train_steps=100), "cuda").seeds == 4  # flags win over the rung
    quick = poc.settings(_args(rung="l", quick=True), "cpu")
    assert quick.train_steps == poc.QUICK.train_steps and quick.model == poc.RUNGS["l"]["model"]  # only the model
    assert poc.settings(_args(), "cuda") == replace(poc.GPU, rung="xs")  # the default is the default
    assert s.bridge_gate_init == poc.LADDER_GATE_INIT and quick.bridge_gate_init == poc.LADDER_GATE_INIT
    assert poc.settings(_args(rung="l", bridge_gate_init=0.0), "cuda").bridge_gate_init == 0.0
    assert poc.run_name(_args(rung="l")) == "core-l-gate0.1" and poc.run_name(_args(quick=True)) == "core-quick"
    assert poc.run_name(_args(rung="m", bridge_gate_init=0.0)) == "core-m"  # the rung's gate closed: its own folder
    assert poc.run_name(_args(rung="xs", bridge_gate_init=0.1)) == "core-gate0.1" and poc.run_name(_args()) == "core"
    # a subset of a suite (--variants) has its own folder: two subsets' reports never overwrite each other
    first = poc.run_name(_args(suite="remedies", rung="l", variants="dual_struct_leads, dual_struct_clean"))
    assert first == "remedies-l-gate0.1-dual_struct_clean+dual_struct_leads"
    assert poc.run_name(_args(suite="remedies", rung="l", variants="dual_sync,dual_implicit_align")) != first
    assert poc.run_name(_args(suite="remedies", rung="l", variants=None)) == "remedies-l-gate0.1"
    for r in ("s", "m", "l"):  # a rung run alone is the ladder's (which passes the gate): one folder, one setting
        alone, climbed = _args(rung=r), _args(rung=r, bridge_gate_init=poc.LADDER_GATE_INIT)
        assert poc.run_name(alone) == poc.run_name(climbed)
        assert poc.settings(alone, "cuda") == poc.settings(climbed, "cuda")


def _suite(poc, out: Path, ran: list):
    """Stands in for a PoC run: writes the report a rung's run writes under `out`, noting the rung in `ran`."""
    def suite(a):
        ran.append(a.rung)
        rep = {**_report({"xs": 2.6e6, "s": 5.7e6, "m": 31.8e6, "l": 92.4e6}[a.rung], 0.1, 0.0),
               "settings": json.loads(json.dumps(poc.asdict(poc.settings(a, "cpu"))))}
        (out / poc.run_name(a)).mkdir(parents=True, exist_ok=True)
        (out / poc.run_name(a) / "report.json").write_text(json.dumps(rep))
        return rep
    return suite


def test_the_ladder_reuses_finished_rungs(tmp_path):
    poc = _poc()
    ran = []
    suite = _suite(poc, tmp_path, ran)

    first = poc.climb(_args(out=str(tmp_path), ladder=True), suite)
    assert ran == list(poc.RUNGS) and len(first["rungs"]) == 4 and (tmp_path / "ladder" / "ladder.md").exists()
    assert all((tmp_path / poc.run_name(_args(rung=r, bridge_gate_init=poc.LADDER_GATE_INIT))).is_dir()
               for r in poc.RUNGS)  # every rung, xs too, with the ladder's open gates
    ran.clear()
    poc.climb(_args(out=str(tmp_path), ladder=True), suite)
    assert ran == []  # every rung finished with the same settings: read back
    poc.climb(_args(out=str(tmp_path), ladder=True, seeds=2), suite)
    assert ran == list(poc.RUNGS)  # other settings: run again
    ran.clear()
    for rung in poc.RUNGS:  # a report written before a setting existed: read back, the setting at its default
        path = tmp_path / poc.run_name(_args(rung=rung, bridge_gate_init=poc.LADDER_GATE_INIT)) / "report.json"
        rep = json.loads(path.read_text())
        rep["settings"].pop("precision")  # at its default on the CPU
        path.write_text(json.dumps(rep))
    poc.climb(_args(out=str(tmp_path), ladder=True, seeds=2), suite)
    assert ran == []


def test_a_partial_ladder_reads_its_rungs_and_writes_its_own_folder(tmp_path):
    """--ladder-rungs xs,s: only those rungs (finished ones read back), the trend in ladder-xs-s/, never ladder/."""
    from shared.errors import UserError
    from shared.poc import cli

    ran = []
    suite = _suite(_poc(), tmp_path, ran)
    argv = ["--ladder", "--device", "cpu", "--out", str(tmp_path), "--ladder-rungs"]
    res = cli.main([*argv, "s,xs"], suite)
    assert ran == ["xs", "s"] and [r["rung"] for r in res["rungs"]] == ["xs", "s"]  # RUNGS' order
    assert (tmp_path / "ladder-xs-s" / "ladder.md").exists() and not (tmp_path / "ladder").exists()
    ran.clear()
    cli.main([*argv, " s , xs,xs"], suite)
    assert ran == []  # read back; spaces and repeats are the same list
    fresh = ["--ladder", "--device", "cpu", "--out", str(tmp_path / "fresh"), "--ladder-rungs"]
    for bad, why in (("xs", "at least two"), ("xs,xs", "at least two"), ("xs,xl", "no rung xl")):
        with pytest.raises(UserError, match=why):
            cli.main([*fresh, bad], suite)
    assert not (tmp_path / "fresh").exists()  # refused before the folder is made
    with pytest.raises(UserError, match="only with --ladder"):
        cli.main(["--device", "cpu", "--out", str(tmp_path), "--ladder-rungs", "xs,s"], suite)


def test_learning_curves_follow_the_bridge_over_training(monkeypatch):
    """Each learning-curve point carries, for a variant with a bridge, its usage and mean |gate| (when the bridge
    opens: #34's diagnosis per rung and over training); a model without bridge layers (the motion source) gets none."""
    from types import SimpleNamespace

    from shared.evaluation import heldout as H

    def fake_evaluate(variants, at, cfgs, *a, **kw):
        assert kw.get("light")
        usage = {"velocity_change": 0.02, "gate_abs": 0.01}
        return {n: {"per_clip": {"lip_r": [0.1, 0.3]}, "heldout_loss": {"video": {"mean": 0.08}},
                    "bridge_usage": usage} for n in at} | {"real": {}}, None

    monkeypatch.setattr(H, "evaluate", fake_evaluate)
    variants = [SimpleNamespace(name=n, model_of=None, role=r) for n, r in
                (("dual", "variant"), ("motion_source", "motion source"), ("condition_only_oracle", "upper bound"))]
    cfgs = {"dual": SimpleNamespace(model=SimpleNamespace(fusion_depth=2)),
            "motion_source": SimpleNamespace(model=SimpleNamespace(fusion_depth=0))}
    curves = {}
    H.learning_curve(curves, variants, {"dual": object(), "motion_source": object()}, {}, cfgs, None, None, None,
                     None, ["lip_r"], 4000, 16, "cpu", 0)
    assert curves["dual"]["bridge_usage"] == {4000: [0.02]} and curves["dual"]["bridge_gate"] == {4000: [0.01]}
    assert curves["dual"]["lip_r"] == {4000: [pytest.approx(0.2)]} and "bridge_usage" not in curves["motion_source"]
    assert "condition_only_oracle" not in curves


def test_bridge_opening_refuses_bad_arms_and_variants_before_any_work():
    """benchmarks/bridge_opening.py's arms (PRECISION:GATE) and variants, checked before the data is built: each
    refusal names the bad part (its __main__ wiring: tests/test_robust.py's one-line check)."""
    from shared.errors import UserError
    from tests.conftest import script

    bo = script("benchmarks/bridge_opening.py", "bridge_opening_cli")
    assert bo.parse_arms("32-true:0,bf16-true:0.1") == [("32-true", 0.0), ("bf16-true", 0.1)]
    for arms, says in (("bf16:0", "precision must be one of"), ("32-true:open", "must be a number"),
                       ("32-true:nan", "finite and >= 0"), ("32-true:-1", "finite and >= 0"),
                       ("32-true:0,32-true:0.0", "given twice"), (",", "no arm given")):
        with pytest.raises(UserError, match=says):
            bo.parse_arms(arms)
    assert bo.parse_variants("condition_only,dual_struct_leads,dual_sync") == ["condition_only", "dual_struct_leads",
                                                                             "dual_sync"]  # (b): its expert made here
    for names in ("video_only", "motion_source", "condition_only_oracle", "dual_implicit_align", ","):
        with pytest.raises(UserError, match="not a PoC variant with a bridge that trains here"):
            bo.parse_variants(names)


def test_bridge_opening_doses_one_field_per_job_and_refuses_bad_doses(cache):
    """--dose KEY=V1,V2: every variant and arm trained once per value of one config field (remedy (e)'s
    dose-response), each job differing from the undosed one in that field only; a bad key, value or range is refused
    before any work, naming it."""
    import argparse

    from shared.errors import UserError
    from tests.conftest import script

    bo = script("benchmarks/bridge_opening.py", "bridge_opening_cli")
    assert bo.parse_dose(None) is None
    assert bo.parse_dose("diffusion.p_struct_clean=0.25,0.9") == ("diffusion.p_struct_clean", [0.25, 0.9])
    for text, says in (("diffusion.p_struct_clean", "expected KEY=V1,V2"), ("=0.5", "expected KEY=V1,V2"),
                       ("diffusion.p_struct_clean=", "no value given"),
                       ("diffusion.p_struct_clean=half", "not a number"),
                       ("diffusion.p_struct_clean=0.5,0.5", "given twice"),
                       ("diffusion.p_struct_clean=1.5", "p_struct_clean"), ("diffusion.nope=1", "no field"),
                       ("train.steps=10", "only a diffusion"), ("model.depth=2", "only a diffusion")):
        with pytest.raises(UserError, match=says):
            bo.parse_dose(text)
    a = argparse.Namespace(quick=True, rung="xs", device="cpu", seeds=1, steps=4, every=2)
    data = {"caches": {("train", "explicit"): cache}}
    dose = ("diffusion.p_struct_clean", [0.25, 0.9])
    labels, jobs = bo.arm_jobs(a, [("32-true", 0.1)], ["dual", "dual_struct_clean"], bo.settings(a), data, False,
                               dose=dose)
    assert labels == [f"{n} 32-true gate 0.1 diffusion.p_struct_clean={v}" for n in ("dual", "dual_struct_clean")
                      for v in ("0.25", "0.9")]
    assert [j.cfg.diffusion.p_struct_clean for j in jobs] == [0.25, 0.9, 0.25, 0.9]
    _, plain = bo.arm_jobs(a, [("32-true", 0.1)], ["dual", "dual_struct_clean"], bo.settings(a), data, False)
    for k, job in enumerate(jobs):
        base = plain[k // 2].cfg
        assert job.cfg == C.override(base, {"diffusion.p_struct_clean": dose[1][k % 2]})
        assert job.cfg.sample == base.sample  # (e)'s struct lead kept; dual samples as dual
    # dose 0 of remedy (e) trains as dual: the same config but for how it samples (the struct ahead)
    _, zero = bo.arm_jobs(a, [("32-true", 0.1)], ["dual_struct_clean"], bo.settings(a), data, False,
                          dose=("diffusion.p_struct_clean", [0.0]))
    assert replace(zero[0].cfg, sample=plain[0].cfg.sample) == plain[0].cfg


def test_bridge_opening_tables_each_seed_mid_and_end():
    from tests.conftest import script

    bo = script("benchmarks/bridge_opening.py", "bridge_opening_cli")
    c = {"bridge usage": {"500": [0.001, 0.002], "1000": [0.01, 0.02], "1500": [0.1, 0.2]},
         "gate |g|": {"1500": [0.1, 0.3]}, "held-out video loss": {"1500": [0.07, 0.09]}}
    out = {"curves": {"dual bf16-true gate 0.1": c}, "by_struct_sigma": {"dual bf16-true gate 0.1":
                                                                          [{"0.0": 0.02, "1.0": 0.001}]},
           "bench": {"rung": "m", "seeds": 2, "steps": 1500, "windows": 32}, "device": "cpu", "train_s": 9.0}
    row = bo.table(out).splitlines()[-1]
    assert row == "| dual bf16-true gate 0.1 | 0.10% / 0.20% -> 10.00% / 20.00% | 0.2000 | 0.0800 | 2.00% .. 0.10% |"


def test_a_subset_of_a_suite_keeps_what_its_questions_and_headroom_need():
    """`--variants` (the remedies at the top rung, a few per session): the named variants, their questions' baselines,
    the model a sampling variant reads, and the headroom's and every remedy's baselines; a name outside the suite is
    refused with the suite's names."""
    from shared.errors import UserError
    from shared.poc.suite import SUITES, chosen

    names = lambda s, v: [x.name for x in chosen(s, v)]  # noqa: E731
    assert names("remedies", None) == [v.name for v in SUITES["remedies"]]
    assert names("remedies", "dual_struct_clean") == ["video_only", "condition_only", "dual", "motion_source",
                                                      "condition_only_oracle", "dual_lead2", "dual_struct_clean"]
    # remedy (c)'s own baseline is dual_implicit; dual_lead2 is a sampling of dual, which comes with it
    assert {"dual_implicit", "dual"} <= set(names("remedies", "dual_implicit_align,dual_lead2"))
    # remedy (f) comes with dual sampled as it is (its training alone), so its subset trains five models
    assert names("remedies", "dual_cascade") == ["video_only", "condition_only", "dual", "motion_source",
                                                 "condition_only_oracle", "dual_cascade", "dual_first"]
    with pytest.raises(UserError, match="nope not in --suite remedies"):
        chosen("remedies", "dual_struct_clean,nope")


def test_the_ladder_without_usage_ratios_still_writes(tmp_path):
    """A rung whose dual never opened its bridge (usage 0) or that has one seed has no usage ratio interval: the
    ladder says so instead of drawing a line through it, and still writes every file."""
    closed = {r: _report(p, 0.1, 0.0) for r, p in (("xs", 2.6e6), ("s", 5.7e6))}
    for rep in closed.values():
        rep["per_seed"]["dual"]["bridge_velocity_change"] = [0.0] * 3
    res = ladder.write(tmp_path, closed, full=1.5e9)
    assert res["dual_usage_trends"]["dual / condition_only"] == {"points": 0, "fit": None}
    md = (tmp_path / "ladder.md").read_text()
    assert "| dual / condition_only | - | 0 | - (fewer than two rungs with an interval" in md
    assert (tmp_path / "trend.png").stat().st_size > 0
    one_seed = {"xs": _report(2.6e6, 0.1, 0.0, seeds=1), "s": _report(5.7e6, 0.1, 0.0, seeds=1)}
    one = ladder.write(tmp_path / "one", one_seed, full=1.5e9)
    assert one["dual_usage_trends"]["dual / condition_only"]["fit"] is None  # no interval over one seed
