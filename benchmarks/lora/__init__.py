"""Prompted LoRA memorisation benchmark (issue 36): a class-conditional digits diffusion model, a LoRA that
binds a new trigger token to 16 held-back images, sampled through ComfyUI's own k-diffusion samplers and CFG,
with CPSample and the other inference-time fixes side by side. Entry point: ``run.py``."""
