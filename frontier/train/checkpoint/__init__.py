"""Checkpoints: written atomically, verified before a byte is read, pruned, resharded.

checkpoint  the store: save, find the newest trusted one, resume, prune, archive foreign ones
guard       what a checkpoint must be before it is loaded (owner, manifest, run identity)
manifest    the sha256 manifest written with each checkpoint
reshard     loading a checkpoint written by another world size (DeepSpeed universal checkpoints)
state       the trainer's counters and RNG states, validated when read back
engine_io   DeepSpeed's checkpoint files read weights-only; the engine's state checked finite
"""
