"""What each rank trains on: batches as a pure function of (seed, step, rank).

data        fixed-length windows of the token shards, per-rank micro-batches, val windows
prefetch    the next step's batches moved to the device while this one runs
batch_size  micro_batch_size: auto, the largest micro-batch that fits at a fixed global batch
"""
