"""Evaluation: probes that read motion and identity back from frames (`probes`), statistics and verdicts
(`metrics`), held-out loss and rollouts of a trained model (`evaluate`), plots and tables (`report`)."""
