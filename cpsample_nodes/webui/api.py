"""HTTP routes under /cpsample/ on the webui's own server (as ControlNet adds /controlnet/*).

GET  /cpsample/guards   the guard files in models/cpsample/
POST /cpsample/train    train a guard on the current checkpoint (JSON: TrainRequest's fields)
POST /cpsample/calibrate calibrate a guard on the current checkpoint (JSON: CalibrateRequest's fields);
                        answers the report and the evidence picture (base64 PNG)
POST /cpsample/check    replication check (JSON: images as base64, folder, k, thresholds)

Bad input answers 400 with the reason in "detail"; the server keeps serving. Training and calibration
hold the webui's queue (one job at a time) and stop at /sdapi/v1/interrupt, saving nothing.

The routes read folders on the server and show pictures from them, so they are offered only where
the webui's own API is (--api or --nowebui) and ask for the same credentials as it (--api-auth).
"""
from __future__ import annotations

import base64
import io
from hmac import compare_digest
from typing import Any

from ..core import GuardFileError
from ..core.images import ImageFolderError
from . import tasks

# Errors that are the caller's input, not a fault of the server: 400 with the message.
CLIENT_ERRORS = (ValueError, GuardFileError, ImageFolderError, FileNotFoundError, NotADirectoryError)


def decode_image(data: str, index: int):
    """One image from base64 (a data: URL prefix allowed); a clear error names which one."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise ValueError(f"images[{index}] must be a base64 string")
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
        im = Image.open(io.BytesIO(raw))
        im.load()
    except (ValueError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"images[{index}] is not a readable base64 image ({type(e).__name__})") from None
    return im


def encode_png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def train(body: dict[str, Any]) -> dict[str, Any]:
    return tasks.train_guard(body)


def calibrate(body: dict[str, Any]) -> dict[str, Any]:
    result = tasks.calibrate_guard(body)
    if result.get("picture") is not None:
        result = {**result, "picture": encode_png(result["picture"])}
    return result


def check(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    images = body.pop("images", None)
    if not isinstance(images, list) or not images:
        raise ValueError("images must be a non-empty list of base64 images")
    result = tasks.replication_check([decode_image(d, i) for i, d in enumerate(images)], body)
    return {**result, "pairs": encode_png(result["pairs"])}


def parse_auth(api_auth: str | None) -> dict[str, str]:
    """--api-auth "user:password,user2:password2" → {user: password}, as the webui reads it."""
    creds = {}
    for item in (api_auth or "").split(","):
        if item.strip():
            user, sep, password = item.partition(":")
            if not sep:
                raise ValueError(f"--api-auth entry {user!r} has no ':password'")
            creds[user] = password
    return creds


def authorized(creds: dict[str, str], user: str, password: str) -> bool:
    return user in creds and compare_digest(password, creds[user])


def register(app, creds: dict[str, str] | None = None) -> None:
    """Add the routes to the webui's FastAPI app (called from on_app_started); with ``creds`` they
    ask for HTTP basic credentials like the webui's own API."""
    from fastapi import Body, Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    dependencies = []
    if creds:
        def auth(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
            if authorized(creds, credentials.username, credentials.password):
                return True
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

        dependencies = [Depends(auth)]

    def answer(fn, body):
        if not isinstance(body, dict):
            raise HTTPException(status_code=400, detail="the request body must be a JSON object")
        try:
            return fn(body)
        except CLIENT_ERRORS as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

    @app.get("/cpsample/guards", dependencies=dependencies)
    def cpsample_guards() -> dict:
        return tasks.list_guards()

    @app.post("/cpsample/train", dependencies=dependencies)
    def cpsample_train(body: Any = Body(...)) -> dict:
        return answer(train, body)

    @app.post("/cpsample/calibrate", dependencies=dependencies)
    def cpsample_calibrate(body: Any = Body(...)) -> dict:
        return answer(calibrate, body)

    @app.post("/cpsample/check", dependencies=dependencies)
    def cpsample_check(body: Any = Body(...)) -> dict:
        return answer(check, body)
