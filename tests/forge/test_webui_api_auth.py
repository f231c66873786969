"""The /cpsample routes ask for the webui's API credentials (--api-auth) when it has them.

Runs the routes in Forge's own Python (its FastAPI and its `modules`), on a FastAPI app of their own
with FastAPI's test client: a second Forge server just for --api-auth would cost half a minute.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.forge
REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
from fastapi import FastAPI
from fastapi.testclient import TestClient
from cpsample_nodes.webui import api

out = {}
locked = FastAPI()
api.register(locked, api.parse_auth("alice:s3cret,bob:pa:ss"))
c = TestClient(locked)
out["none"] = c.get("/cpsample/guards").status_code
out["wrong"] = c.get("/cpsample/guards", auth=("alice", "nope")).status_code
out["train_none"] = c.post("/cpsample/train", json={"folder": "/x"}).status_code
out["right"] = c.get("/cpsample/guards", auth=("bob", "pa:ss")).status_code
r = c.post("/cpsample/train", json={"folder": ""}, auth=("alice", "s3cret"))
out["bad_body"] = [r.status_code, r.json()["detail"]]
open_app = FastAPI()
api.register(open_app)
out["open"] = TestClient(open_app).get("/cpsample/guards").status_code
print("RESULT " + json.dumps(out))
"""


def test_routes_honour_api_auth(forge_env):
    forge_dir = Path(forge_env["forge_dir"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(forge_dir), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([str(forge_env["python"]), "-c", SCRIPT], cwd=forge_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["none"] == out["wrong"] == out["train_none"] == 401, out
    assert out["right"] == 200, out
    assert out["bad_body"] == [400, "no training images: give the folder that holds them"], out
    assert out["open"] == 200, out  # without --api-auth the routes are open, as the webui's API
