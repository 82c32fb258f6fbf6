"""The suite's answers: every question of `suite.QUESTIONS` decided by the rules of `shared.evaluation.verdicts`, on
the metric families of `suite.FAMILIES` (seed level: paired over training seeds; clip level: one seed's clips), with
the oracle's headroom gating H2 and the remedies."""

from __future__ import annotations

from dataclasses import asdict

from ..evaluation import metrics as M
from ..evaluation import verdicts as V
from ..evaluation.heldout import seed_value
from .suite import CLIP_FAMILY, FAMILIES, MIN_EFFECT, PRIMARY, QUESTIONS, SECONDARY

H1 = "H1: a causal Video DiT learns talking heads (video_only)"
H2 = "H2: the 3-D stream adds structure (H2a and H2b)"
H3 = "H3: two-stream Diffusion Forcing trains stably (dual)"


def oracle_headroom(by_seed: list) -> dict:
    """Per family, the oracle's gap (condition_only_oracle over video_only, `verdicts.headroom`): over the training
    seeds when there are two or more, else over the clips of the one seed (the clip-level rule's unit)."""
    if not {"condition_only_oracle", "video_only"} <= set(by_seed[0][0]):
        return {}
    fams = {}
    for name, f in FAMILIES.items():
        if len(by_seed) > 1:
            per = [[seed_value(res[x], f.metric) for res, _ in by_seed] for x in ("condition_only_oracle", "video_only")]
        else:
            res = by_seed[0][0]
            per = [res[x]["per_clip"][f.per_clip] for x in ("condition_only_oracle", "video_only")]
        fams[name] = (*per, f.higher_is_better, f.sesoi)
    room = V.headroom(fams)
    for r in room.values():
        r["unit"] = "training seed" if len(by_seed) > 1 else "held-out clip (one seed)"
    return room


def seed_tests(by_seed: list, families: dict) -> list:
    """Every question's paired test over seeds on each family (raw, then Holm across them: `verdicts.decide`)."""
    tests = []
    for q, a, b in QUESTIONS:
        if a not in by_seed[0][0] or b not in by_seed[0][0]:
            continue
        for name, f in families.items():
            per = [[seed_value(res[x], f.metric) for res, _ in by_seed] for x in (a, b)]
            tests.append(V.paired(q, f"{name}: {f.metric}", per[0], per[1], f.higher_is_better, f.sesoi))
    return V.decide(tests)


def clip_comparisons(res: dict, a: str, b: str) -> list:
    """One seed's per-clip comparisons of A against B on the primary metrics (the clip-level rule's input)."""
    return [M.compare(m, res[a]["per_clip"][m], res[b]["per_clip"][m], hi, MIN_EFFECT[m]) for m, hi in PRIMARY.items()]


def seed_verdicts(by_seed: list, room: dict | None = None) -> dict:
    """The seed-level rule (`shared.evaluation.verdicts`): per question and family, the per-seed values of A and B
    paired over seeds; Holm across every primary test of the suite (secondary metrics: among themselves); an H2
    family without the oracle's headroom (`oracle_headroom`) is `not testable at this scale`. Also each seed's own
    clip-level verdict (`gated_clip_verdict`: families without headroom left out, as in seed 0's table)."""
    tests = V.gate_by_headroom(seed_tests(by_seed, FAMILIES), room or {})
    second = seed_tests(by_seed, SECONDARY)
    out = {}
    for q in dict.fromkeys(t["question"] for t in tests):
        mine = [t for t in tests if t["question"] == q]
        a, b = next((a, b) for qq, a, b in QUESTIONS if qq == q)
        own = [gated_clip_verdict(q, clip_comparisons(res, a, b), room or {}) for res, _ in by_seed]
        out[q] = {"verdict": V.hypothesis_with_headroom([t["outcome"] for t in mine]), "seeds": len(by_seed),
                  "tests": mine, "per_seed_clip_verdicts": own,
                  "secondary": [t.as_dict() for t in second if t.question == q]}
    return out


def clip_verdicts(res: dict, room: dict) -> dict:
    """Seed 0's clip-level verdict of every question its results can answer; a gated question's comparison on a
    family without headroom is left out (none left: not testable at this scale)."""
    out = {}
    for q, a, b in QUESTIONS:
        if a not in res or b not in res:
            continue
        cs = clip_comparisons(res, a, b)
        out[q] = {"verdict": gated_clip_verdict(q, cs, room), "comparisons": [asdict(c) for c in cs]}
    return out


def gated_clip_verdict(q: str, cs: list, room: dict) -> str:
    """The clip-level verdict of one seed's comparisons, a gated question's comparison on a family without headroom
    left out (none left: not testable at this scale): seed 0's table and each seed's column use the same rule."""
    kept = [c for c in cs if not (q.startswith(V.GATED) and room.get(CLIP_FAMILY[c.metric], {}).get("status")
                                  == V.NOT_TESTABLE)]
    return V.clip_verdict(kept) if kept else V.NOT_TESTABLE


def decide(by_seed: list, chance: float, heldout_start: list) -> tuple[dict, dict, dict]:
    """(verdicts, seed-level verdicts, headroom) of a run: H1 on video_only of seed 0, every question at the clip
    level (seed 0) and at the seed level, H2 from the seed-level verdicts (the clip-level ones with one seed), H3
    over every seed of dual. by_seed: per training seed (results, histories)."""
    results = by_seed[0][0]
    vo = results["video_only"]["metrics"]
    verdicts = {H1: {"verdict": V.learns(vo["lip_r"], vo["id_err"], chance),
                     "evidence": {"lip_r": vo["lip_r"], "id_err": vo["id_err"], "identity_chance": chance}}}
    room = oracle_headroom(by_seed)
    comparisons = clip_verdicts(results, room)
    verdicts.update(comparisons)
    seed_level = seed_verdicts(by_seed, room)
    h2 = [v["verdict"] for q, v in (seed_level if len(by_seed) > 1 else comparisons).items() if q.startswith("H2")]
    verdicts[H2] = {"verdict": V.overall(h2)}
    verdicts[H3] = V.stability([h["dual"] for _, h in by_seed], heldout_start,
                               [res["dual"]["heldout_loss"] for res, _ in by_seed])
    return verdicts, seed_level, room
