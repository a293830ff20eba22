"""Published architectures as Arch data: ProxylessNAS GPU/CPU/Mobile, FBNet-A/B/C, Single-Path NAS
and MobileNetV2 1.0, all at 224x224 with 1000 classes.

Each preset is a plain Arch JSON dict (``{"space", "config", "layers"}``, see hwnas.spaces.arch) that
reproduces the released block list exactly; ``PUBLISHED`` holds the published parameter count and
top-1 with their sources. Sources (public repositories, ``owner/repo: path``):

- ProxylessNAS (Cai, Zhu, Han, ICLR 2019). The released nets are JSON configs downloaded by
  ``mit-han-lab/proxylessnas: proxyless_nas/model_zoo.py`` (``proxyless_{gpu,cpu,mobile}.config``
  in ``han-cai/files``); their block lists are transcribed layer by layer, with a parameter count
  asserted, in ``osmr/imgclsmob: pytorch/pytorchcv/models/proxylessnas.py`` (``get_proxylessnas``:
  kernel_sizes / expansions / residuals per unit; ``residual == 0`` is the zero op = ``skip``).
  The released GPU and CPU nets are wider than the searched Mobile default (stem 40, first block
  c24, wider stages and head), which is what ``config`` expresses. Params and top-1 agree with the
  repo's ``logs/imagenet_{gpu,cpu,mobile}_log.txt`` (7.12M/75.084, 4.36M/75.290, 4.08M/74.594).
- FBNet (Wu et al., CVPR 2019). The block lists are the official ones of
  ``facebookresearch/mobile-vision: mobile_cv/arch/fbnet_v2/fbnet_modeldef_cls_fbnet.py``
  (``fbnet_a``, ``fbnet_b``, ``fbnet_c``). FBNet-B and -C agree layer by layer with a copy of the
  original (maskrcnn-benchmark era) FBNet modeldef's ``block_op_type`` tables, and FBNet-C with
  ``osmr/imgclsmob: pytorch/pytorchcv/models/fbnet.py`` (``fbnet_cb``) and timm's ``fbnetc_100``.
  The block is maskrcnn-benchmark's ``fbnet_builder.py`` ``IRFBlock``: it keeps its 1x1 expansion
  at e=1 (``pw_at_e1``); ``_g2`` (``ir_k*_s2`` there, ``ir_k*_g2`` in mobile-vision) is
  ``pw_group=2`` on both 1x1 convs with a channel shuffle; ``skip`` is an identity, or a 1x1
  conv-bn-relu projection where the shape changes. FBNet-A's head is 1504 channels in the official
  modeldef, not the space's 1984 (only 1504 fits its published 4.3M). Not expressible here: the
  mobile-vision modeldef passes ``bias=True`` to the blocks' convs of FBNet-A/B/C (+15472 / +15344 /
  +20184 parameters); the original builder and imgclsmob's ``fbnet_cb`` (5572200) have no conv bias.
- Single-Path NAS (Stamoulis et al., ECML-PKDD 2019): ``osmr/imgclsmob:
  pytorch/pytorchcv/models/spnasnet.py`` (and timm ``spnasnet_100``); the search space is
  ``enyac-group/single-path-nas: nas-search/supernet_macro.py`` (stages 24/40/80/96/192 of 4 layers,
  fixed first MBConv1 3x3 c16 and last MBConv6 3x3 c320; here the c320 layer is the last searched
  layer of the ``spnas`` space, with its fixed value ``k3e6``). The released net has 3 layers in the
  c24 stage: the fourth is written ``skip`` (the three remaining layers are identical k3e3 blocks,
  so which position is dropped does not change the network).
- MobileNetV2 1.0 (Sandler et al., CVPR 2018, Table 2): ``torchvision.models.mobilenet_v2`` (and
  timm ``mobilenetv2_100``), as a ``proxyless``-space Arch with its own stages (the ProxylessNAS
  space is the MobileNetV2 skeleton). torchvision's classifier is Dropout(0.2) + Linear: dropout has
  no parameters and is not part of the Arch (the config's ``dropout`` is left at the default).
"""
from __future__ import annotations

import copy


def _stages(*triples: tuple[int, int, int]) -> list[dict]:
    """``(c, n, s)`` triples -> the config's stage dicts."""
    return [{"c": c, "n": n, "s": s} for c, n, s in triples]


def _config(stem, first, stages, head, act, pw_at_e1=False) -> dict:
    return {"stem": stem, "first": first, "stages": stages, "head": head, "width_mult": 1.0,
            "resolution": 224, "num_classes": 1000, "act": act, "pw_at_e1": pw_at_e1}


# The searched skeletons (the spaces' defaults, see hwnas.spaces.definitions).
_PROXYLESS_STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
_FBNET_STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))


PRESETS: dict[str, dict] = {
    # osmr/imgclsmob pytorch/pytorchcv/models/proxylessnas.py, version == "gpu"
    # (= proxyless_gpu.config of mit-han-lab/proxylessnas). Wider than the space's default.
    "proxyless_gpu": {
        "space": "proxyless",
        "config": _config(40, {"token": "k3e1", "c": 24},
                          _stages((32, 4, 2), (56, 4, 2), (112, 4, 2), (128, 4, 1), (256, 4, 2), (432, 1, 1)),
                          1728, "relu6"),
        "layers": ["k5e3", "skip", "skip", "skip",
                   "k7e3", "skip", "skip", "k3e3",
                   "k7e6", "skip", "skip", "k5e3",
                   "k5e6", "skip", "k3e3", "k5e3",
                   "k7e6", "k7e6", "k7e6", "k5e6",
                   "k7e6"],
    },
    # osmr/imgclsmob pytorch/pytorchcv/models/proxylessnas.py, version == "cpu"
    # (= proxyless_cpu.config of mit-han-lab/proxylessnas).
    "proxyless_cpu": {
        "space": "proxyless",
        "config": _config(40, {"token": "k3e1", "c": 24},
                          _stages((32, 4, 2), (48, 4, 2), (88, 4, 2), (104, 4, 1), (216, 4, 2), (360, 1, 1)),
                          1432, "relu6"),
        "layers": ["k3e6", "k3e3", "k3e3", "k3e3",
                   "k3e6", "k3e3", "k3e3", "k5e3",
                   "k3e6", "skip", "skip", "k3e3",
                   "k5e6", "k3e3", "k3e3", "k3e3",
                   "k5e6", "k5e3", "k5e3", "k3e3",
                   "k5e6"],
    },
    # osmr/imgclsmob pytorch/pytorchcv/models/proxylessnas.py, version == "mobile"
    # (= proxyless_mobile.config of mit-han-lab/proxylessnas). Stage 1 is c32 (the default is c24).
    "proxyless_mobile": {
        "space": "proxyless",
        "config": _config(32, {"token": "k3e1", "c": 16},
                          _stages((32, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)),
                          1280, "relu6"),
        "layers": ["k5e3", "k3e3", "skip", "skip",
                   "k7e3", "k3e3", "k5e3", "k5e3",
                   "k7e6", "k5e3", "k5e3", "k5e3",
                   "k5e6", "k5e3", "k5e3", "k5e3",
                   "k7e6", "k7e6", "k7e3", "k7e3",
                   "k7e6"],
    },
    # facebookresearch/mobile-vision mobile_cv/arch/fbnet_v2/fbnet_modeldef_cls_fbnet.py "fbnet_a".
    # The c16 layer is "skip" (identity: stem 16 -> 16, stride 1); head 1504 (not 1984).
    "fbnet_a": {
        "space": "fbnet",
        "config": _config(16, None, _stages(*_FBNET_STAGES), 1504, "relu", pw_at_e1=True),
        "layers": ["skip",
                   "k3e3", "k3e1", "skip", "skip",
                   "k5e6", "k3e3", "k5e1", "k3e3",
                   "k5e6", "k5e3", "k5e1_g2", "k5e6",
                   "k3e6", "k5e1_g2", "k5e3", "k3e1_g2",
                   "k5e6", "k5e6", "k5e3", "k5e6",
                   "k5e6"],
    },
    # facebookresearch/mobile-vision mobile_cv/arch/fbnet_v2/fbnet_modeldef_cls_fbnet.py "fbnet_b".
    "fbnet_b": {
        "space": "fbnet",
        "config": _config(16, None, _stages(*_FBNET_STAGES), 1984, "relu", pw_at_e1=True),
        "layers": ["k3e1",
                   "k3e6", "k5e1", "k3e1", "k3e1",
                   "k5e6", "k5e3", "k3e6", "k5e6",
                   "k5e6", "k5e6", "skip", "k5e3",
                   "k5e6", "k3e1", "k5e1", "k5e3",
                   "k5e6", "k5e1", "k5e6", "k5e6",
                   "k3e6"],
    },
    # facebookresearch/mobile-vision mobile_cv/arch/fbnet_v2/fbnet_modeldef_cls_fbnet.py "fbnet_c";
    # same net as osmr/imgclsmob pytorchcv/models/fbnet.py fbnet_cb and timm fbnetc_100.
    "fbnet_c": {
        "space": "fbnet",
        "config": _config(16, None, _stages(*_FBNET_STAGES), 1984, "relu", pw_at_e1=True),
        "layers": ["k3e1",
                   "k3e6", "skip", "k3e1", "k3e1",
                   "k5e6", "k5e3", "k5e6", "k3e6",
                   "k5e6", "k5e3", "k5e6", "k5e6",
                   "k5e6", "k5e6", "k5e6", "k5e3",
                   "k5e6", "k5e6", "k5e6", "k5e6",
                   "k3e6"],
    },
    # osmr/imgclsmob pytorch/pytorchcv/models/spnasnet.py (= timm spnasnet_100). The c24 stage of
    # the released net has 3 layers; the space has 4, so its 4th is "skip".
    "spnas": {
        "space": "spnas",
        "config": _config(32, {"token": "k3e1", "c": 16}, _stages(*_PROXYLESS_STAGES), 1280, "relu"),
        "layers": ["k3e3", "k3e3", "k3e3", "skip",
                   "k5e6", "k3e3", "k3e3", "k3e3",
                   "k5e6", "k3e3", "k3e3", "k3e3",
                   "k5e6", "k5e3", "k5e3", "k5e3",
                   "k5e6", "k5e6", "k5e6", "k5e6",
                   "k3e6"],
    },
    # Sandler et al. 2018 Table 2 / torchvision.models.mobilenet_v2: t=6 everywhere after the
    # first bottleneck (t=1, c16), kernel 3, ReLU6.
    "mobilenetv2": {
        "space": "proxyless",
        "config": _config(32, {"token": "k3e1", "c": 16},
                          _stages((24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)),
                          1280, "relu6"),
        "layers": ["k3e6"] * 16,
    },
}


# Published parameter counts (conv weights + BN affine + classifier weight and bias; BN running
# stats are buffers and not counted) and ImageNet top-1 (%). ``params_exact``: an integer asserted
# by a released implementation. Otherwise ``params_rounded_m`` is a README/paper figure in millions
# to ``rounding_m``; the mobile-vision README figures fit our counts truncated to 0.1M
# (FBNet-A 4.32 -> 4.3, FBNet-B 4.86 -> 4.8, FBNet-C 5.57 -> 5.5), so a count matches when it is
# within ``rounding_m`` of the figure.
_IMGCLSMOB = "osmr/imgclsmob pytorch/pytorchcv/models/"
_MOBILE_VISION_README = "facebookresearch/mobile-vision README.md, Pytorch Pre-trained Models table"
_FBNET_PAPER = "Wu et al. CVPR 2019, Table 2 / Sec. 4.2"

PUBLISHED: dict[str, dict] = {
    "proxyless_gpu": {
        "params": 7_119_848, "params_exact": True, "includes_classifier": True, "top1": 75.1,
        "source": f"params: {_IMGCLSMOB}proxylessnas.py _test (weight_count == 7119848); "
                  "mit-han-lab/proxylessnas logs/imagenet_gpu_log.txt 'Total training params: 7.12M'. "
                  "top-1: Cai et al. ICLR 2019 and the repo README (75.1; released model's log 75.084)",
    },
    "proxyless_cpu": {
        "params": 4_361_648, "params_exact": True, "includes_classifier": True, "top1": 75.3,
        "source": f"params: {_IMGCLSMOB}proxylessnas.py _test (weight_count == 4361648); "
                  "mit-han-lab/proxylessnas logs/imagenet_cpu_log.txt 'Total training params: 4.36M'. "
                  "top-1: Cai et al. ICLR 2019 (75.3; released model's log 75.290)",
    },
    "proxyless_mobile": {
        "params": 4_080_512, "params_exact": True, "includes_classifier": True, "top1": 74.6,
        "source": f"params: {_IMGCLSMOB}proxylessnas.py _test (weight_count == 4080512); "
                  "mit-han-lab/proxylessnas logs/imagenet_mobile_log.txt 'Total training params: 4.08M'. "
                  "top-1: Cai et al. ICLR 2019 (74.6; released model's log 74.594)",
    },
    "fbnet_a": {
        "params": 4_300_000, "params_exact": False, "params_rounded_m": 4.3, "rounding_m": 0.1,
        "includes_classifier": True, "top1": 73.0,
        "source": f"params: {_MOBILE_VISION_README} (fbnet_a: 4.3M). top-1: {_FBNET_PAPER} (73.0)",
    },
    "fbnet_b": {
        "params": 4_800_000, "params_exact": False, "params_rounded_m": 4.8, "rounding_m": 0.1,
        "includes_classifier": True, "top1": 74.1,
        "source": f"params: {_MOBILE_VISION_README} (fbnet_b: 4.8M). top-1: {_FBNET_PAPER} (74.1)",
    },
    "fbnet_c": {
        "params": 5_572_200, "params_exact": True, "params_rounded_m": 5.5, "rounding_m": 0.1,
        "includes_classifier": True, "top1": 74.9,
        "source": f"params: {_IMGCLSMOB}fbnet.py _test (fbnet_cb: weight_count == 5572200); "
                  f"{_MOBILE_VISION_README} (fbnet_c: 5.5M). top-1: {_FBNET_PAPER} (74.9)",
    },
    "spnas": {
        "params": 4_421_616, "params_exact": True, "includes_classifier": True, "top1": 74.96,
        "source": f"params: {_IMGCLSMOB}spnasnet.py _test (weight_count == 4421616; timm spnasnet_100 "
                  "lists 4.42M). top-1: Stamoulis et al. ECML-PKDD 2019, abstract (74.96)",
    },
    "mobilenetv2": {
        "params": 3_504_872, "params_exact": True, "includes_classifier": True, "top1": 72.0,
        "source": "params: sum of torchvision.models.mobilenet_v2() parameters (3504872, torchvision 0.29). "
                  "top-1: Sandler et al. CVPR 2018 (72.0; torchvision IMAGENET1K_V1 weights 71.878)",
    },
}


def get_preset(name: str) -> dict:
    """A deep copy of preset ``name`` (safe to modify); raises KeyError naming the available ones."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
