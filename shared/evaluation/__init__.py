"""Evaluation: probes that read motion and identity back from frames (`probes`), statistics and verdicts
(`metrics`), held-out loss and rollouts of a trained model (`evaluate`), plots and tables (`report`), and the
field's scores from reference networks' features (`field_metrics`: FID / FVD, Sync-C / Sync-D, CSIM; `syncnet` and
`inception`: the networks that give Sync's and FID's features)."""
