"""CPSample as an AUTOMATIC1111 / Forge extension: the glue between the webui and the use-cases.

Nothing here imports the webui (``modules.*``) at import time: ``host.py`` reaches it inside
functions, and the entry points in the repository's ``scripts/`` folder wire these modules to the
host. The same modules are therefore importable (and unit-tested) without a webui. What both hosts
do (train, calibrate, resolve settings, the guided step, guard files) is ``cpsample_nodes.usecases``;
these modules adapt it to the webui.

settings.py   the accordion's values: order (API args), checks, infotext keys, X/Y/Z axes
generation.py one generation's life in the script (process ... postprocess), Forge's post-CFG hook
a1111.py      what only A1111 needs: the cond+uncond batch and the timestep samplers
family.py     which model family a Forge model is
train.py      the tab's / API's training request, then usecases.training
calibrate.py  the tab's / API's calibration request, then usecases.calibrating
probes.py     calibration's probe sampler: the webui's own txt2img
check.py      the replication check of generated images against a folder
request.py    typed request fields with clear errors
tasks.py      the tab's operations on the running webui (shared with the API)
api.py        the /cpsample/* HTTP routes
host.py       the only module that touches the webui itself
"""
