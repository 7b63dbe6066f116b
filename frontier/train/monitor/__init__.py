"""Watching a run: what it prints, logs, tracks and alerts on.

monitor   progress bar, log lines, TensorBoard, live CSVs, profiler
trackers  DVCLive, MLflow, W&B (all offline-capable)
alerts    alert rules -> alerts.jsonl
system    CPU/RAM/disk/GPU sampling thread
metrics   MFU, metrics.json
"""
