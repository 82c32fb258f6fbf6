"""The Phase 0.5 PoC as a library; `stage0_poc/run.py` is its script.

- `settings`: the sizes of a run (`Settings`, presets `CORE` / `QUICK` / `GPU`, the ladder's `RUNGS`);
- `suite`: the variants, the questions and the metric families (one table each), a variant's config at a rung;
- `assets`: data, codec, probes and sync expert, made once and reused;
- `training`: every variant's seeds side by side, saved as run folders;
- `evaluation`: seed by seed on held-out clips (`shared.evaluation.heldout`);
- `decide`: the verdicts (rules in `shared.evaluation.verdicts`);
- `report`: report.md from its template, report.json, plots, samples;
- `phases`: wall time per phase.
"""
