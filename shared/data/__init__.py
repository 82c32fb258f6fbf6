"""Data: SynthTalk, media I/O, encoders, the HDF5 latent cache and ingest."""
