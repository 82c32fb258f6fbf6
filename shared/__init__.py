"""DualForce: the one library every stage imports (config, models, diffusion, schedule, infer, summary)."""
