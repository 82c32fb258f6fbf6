"""DualForce: the one library every stage imports.

config (typed configs, presets), diffusion (noise and loss), runs (the run folder), errors (user errors and the
command lines' one-line reports), lock (one writer per run folder or cache), flops / summary (budgets), and
one package per concept: models (the network), data (SynthTalk, media, codecs, the HDF5 latent cache, ingest),
sampling (schedules, pure sampler steps, contexts, the streaming loop, generation from files), training (the loop,
checkpoints, CLIs), evaluation (probes, metrics, rollouts, reports)."""
