"""Models through transformers: build (Llama-style / GPT-2-style from config, or a local HF directory),
presets (named sizes, parameter counts), loss (the summed-token-loss module DeepSpeed trains),
flops (6N + 12 L H S per token), kernels (swapping frontier's fused ops into Llama modules), attention
(frontier's entries in transformers' attention registries, and how a packed batch's document ids reach them)."""
