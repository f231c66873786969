"""What CPSample does for a user, written once for both hosts (ComfyUI and A1111/Forge).

Host-free: these modules import the core and torch only, never ``comfy`` or ``modules``. A host hands
in what only it has (an encode or sample function, its noise space, a progress callback) and gets a
result back; the ComfyUI nodes and the webui scripts are adapters around one call each.

guard_files.py  listing, safe names, cached loading and atomic saving of guard files
model.py        what a guard needs to know about a model (ModelFamily), and whether a guard fits it
settings.py     the settings a guard is applied with: its calibration, or the manual values
guided_step.py  the guided step inside a post-CFG function: σ window, device, per-sample σ, gate log
training.py     train a guard from images (folder and/or tensors → latents → guard, report)
calibrating.py  calibrate a guard from its training folder with a host's sampler
"""
