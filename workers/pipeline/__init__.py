"""Django-free rendering: request parameters in, frames and facts out.

`params` resolves a reference-schema prompt to the values that will run,
`lora_files` inspects LoRA files without loading them, `runtime` owns the warm
`WanPipeline` of a worker process, `video` encodes frames, and `checkpoints`
writes random-weight Wan folders and LoRAs for tests and benchmarks.
"""
