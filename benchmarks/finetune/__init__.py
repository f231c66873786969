"""Fine-tune memorisation benchmark: a small digits diffusion model that collapses onto 16 images,
and the CPSample guard that keeps samples away from them (issue 4)."""
