"""CPSample as an AUTOMATIC1111 / Forge extension: the glue between the webui and the guard core.

Nothing here imports the webui (``modules.*``) at import time: ``host.py`` reaches it inside
functions, and the entry points in the repository's ``scripts/`` folder wire these modules to the
host. The same modules are therefore importable (and unit-tested) without a webui.

settings.py   the accordion's values: order (API args), checks, infotext keys
family.py     which model family a webui model is, and whether a guard fits it
guidance.py   the guidance step, and Forge's post-CFG hook
protect.py    from the accordion's settings to a checked guard, or a refusal
generation.py one generation's life in the script (process ... postprocess)
a1111.py      what only A1111 needs: the cond+uncond batch and the timestep samplers
guards.py     models/cpsample/: listing, safe names, cached loading
train.py      training a guard from an image folder, saved atomically
check.py      the replication check of generated images against a folder
tasks.py      the tab's operations on the running webui (shared with the API)
api.py        the /cpsample/* HTTP routes
host.py       the only module that touches the webui itself
"""
