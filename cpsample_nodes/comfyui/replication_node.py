"""CPSample Replication Check (node id CPSampleReplicationCheck): generated images against the training
images. The scores, report and pair grid are the core's (``core.replication``, shared with the webui's
tab); this adds the optional CLIP-vision cosine, which needs a ComfyUI CLIP_VISION model."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..core import images as imgs
from ..core import replication
from .inputs import CATEGORY, chosen_folder, folder_fingerprint, folder_options


def clip_cosine(clip_vision, gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [M, N] of CLIP-vision image embeddings."""
    def embed(images):
        outs = []
        for i in range(0, images.shape[0], 16):
            e = clip_vision.encode_image(images[i:i + 16, ..., :3])["image_embeds"].float()
            outs.append(torch.nn.functional.normalize(e.flatten(1), dim=1))
        return torch.cat(outs)

    return embed(gen) @ embed(train).T


class ReplicationCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleReplicationCheck",
            display_name="CPSample Replication Check",
            category=CATEGORY,
            description=("For each generated image: the nearest training image, its calibrated ℓ2 ratio "
                         "(Carlini et al. 2023; near 0 = copy), SSIM and optional CLIP-vision cosine. "
                         "Outputs a text report and a grid of pairs."),
            inputs=[
                io.Image.Input("images", tooltip="Generated images to check."),
                io.Combo.Input("folder", options=folder_options(),
                               tooltip="Sub-folder of the input directory with the training images "
                                       "(the one Train Guard used)."),
                io.Int.Input("k", default=10, min=1, max=1000,
                             tooltip="Neighbours 2..k+1 whose mean distance calibrates the ℓ2 ratio."),
                io.Float.Input("ratio_threshold", default=round(replication.REPLICA_L2_RATIO, 3), min=0.0, max=1.0,
                               step=0.01, tooltip="A calibrated ℓ2 ratio below this flags a likely copy "
                                                  "(1/3 as in Carlini et al. 2023)."),
                io.Float.Input("ssim_threshold", default=replication.REPLICA_SSIM, min=0.0, max=1.0, step=0.01,
                               tooltip="A best SSIM above this flags a likely copy."),
                io.Image.Input("training_images", optional=True,
                               tooltip="Optional training images from other nodes (added to the folder's)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional CLIP vision model: adds the cosine similarity of image "
                                            "embeddings to the nearest training image."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Per image: nearest training image and scores."),
                     io.Image.Output(display_name="pairs", tooltip="Generated | nearest training image, scores drawn.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def execute(cls, images, folder, k, ratio_threshold, ssim_threshold, training_images=None, clip_vision=None
                ) -> io.NodeOutput:
        hw = (int(images.shape[1]), int(images.shape[2]))
        parts, names = [], []
        path = chosen_folder(folder)
        if path is not None:
            batch, found, _ = imgs.load_image_folder(path, hw=hw)  # sub-folders too, as Train Guard reads it
            parts.append(batch)
            names += found
        if training_images is not None:
            parts.append(imgs.conform_tensor(training_images, hw))
            names += [f"training_images #{i}" for i in range(training_images.shape[0])]
        if not parts:
            raise ValueError("no training images: choose a folder or connect training_images")
        train = torch.cat(parts)
        gen = images[..., :3].float().cpu()
        sc = replication.scores(gen, train, k)
        nearest = sc["nearest"]
        cos = None
        if clip_vision is not None:
            cos_all = clip_cosine(clip_vision, gen, train)
            cos = cos_all.gather(1, nearest.view(-1, 1).to(cos_all.device)).view(-1).cpu()
        report, captions, _ = replication.report(gen, sc, names, ratio_threshold, ssim_threshold, cos)
        grid = replication.pair_grid(gen, train, nearest, captions)
        return io.NodeOutput(report, grid, ui=ui.PreviewText(report))
