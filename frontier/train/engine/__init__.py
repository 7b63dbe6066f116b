"""The DeepSpeed engine and one optimizer step on it.

engine     deepspeed.initialize around the model; whole fp32 gradients taken over at ZeRO-0
ds_config  the DeepSpeed config from params (+ a user JSON, conflicts reported)
optimizer  weight-decay parameter groups, the client optimizer
step       one optimizer step with the global-batch loss normalisation; the evaluation pass
schedule   learning-rate schedules
stability  step gate, NaN guard, early stopping
"""
