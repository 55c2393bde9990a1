"""Object detection from scratch: a small anchor-free, CenterNet-style detector.

Images are read as RGB, stretched to ``image_size`` x ``image_size``, scaled to [0, 1]
and normalised with the training split's mean and std (the same ``preprocess`` as the
image classifiers, plus ``"resize": "stretch"``). A small convolutional backbone with a
top-down path gives stride-4 maps; three heads predict, per output cell:

- ``heatmap`` [batch, classes, S/4, S/4]: how likely an object's centre is in the cell
  (the artifact outputs probabilities; training uses the logits with a focal loss
  against Gaussian bumps at the true centres);
- ``size`` [batch, 2, S/4, S/4]: the box width and height, in output cells (x 4 = pixels
  of the resized input);
- ``offset`` [batch, 2, S/4, S/4]: where the centre lies inside its cell (0..1, x then y).

The artifact is those three maps, nothing data-dependent inside; ``decode`` (plain torch,
here) turns them into boxes: peaks of the heatmap (a 3x3 max filter), the top ``top_k``
above ``score_threshold``, boxes as [x, y, w, h] fractions of the image (what a bbox
annotation with ``normalized: true`` holds; multiply by the original width and height for
pixels). The artifact's ``decode`` metadata holds those settings; the model server calls
``decode`` with them.

Boxes are taken from every trusted annotation with a ``bbox`` (bbox, and polygon or mask
annotations that carry one, as COCO imports do), pixel or normalized; crowd regions and
rotated boxes are left out. An image with no box annotations counts as one with no
objects. Metrics: mAP at IoU 0.5 (VOC all-point interpolation, detections matched
greedily by score), computed from per-class score histograms so it sums over batches and
ranks.
"""

from __future__ import annotations

from typing import Any

from loophub.training.context import TrainContext
from loophub.training.loop import (
    LoopConfig,
    evaluate_split,
    fit,
    recipe_random,
    seed_everything,
)
from loophub.training.recipes import Recipe
from loophub.training.recipes.image import ImageSource, normalize, open_image
from loophub.training.recipes.labels import trusted

STRIDE = 4
SCORE_BINS = 1000          # histogram bins for mAP (score resolution 0.001)
EVAL_THRESHOLD = 0.01      # detections kept when measuring mAP
EVAL_TOP_K = 100
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0

PARAMS = {
    "epochs": (40, "passes over the training split"),
    "batch_size": (16, "images per step on each rank"),
    "lr": (5e-3, "peak learning rate (one-cycle)"),
    "weight_decay": (1e-4, "AdamW weight decay"),
    "image_size": (128, "images are stretched to image_size x image_size (a multiple of 16)"),
    "width": (32, "channels of the first backbone stage (later stages: 2x, 4x)"),
    "flip": (True, "random horizontal flips while training"),
    "score_threshold": (0.3, "the served model's detections: peaks scoring at least this"),
    "top_k": (100, "the served model's detections: at most this many per image"),
    "seed": (0, "random seed"),
    "checkpoint_every": (0, "steps between checkpoints (0: at each epoch's end)"),
    "num_workers": (0, "DataLoader worker processes per rank"),
}


def box_annotations(record: dict) -> list[dict]:
    """The record's annotations that carry a box (any type), crowd and rotated ones not."""
    return [a for a in record.get("annotations") or ()
            if isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4 and a.get("label")
            and not a.get("iscrowd") and not a.get("rotation")]


def usable(record: dict) -> bool:
    """An image whose boxes are people's: trusted boxes, or no box annotation at all (an
    image with no objects); not one whose only boxes are a model's or rejected ones."""
    if not (record.get("media") or {}).get("sha256"):
        return False
    found = box_annotations(record)
    return not found or any(trusted(a) for a in found)


def record_boxes(record: dict, width: int, height: int, index: dict[str, int]
                 ) -> list[tuple[int, float, float, float, float]]:
    """(class, x, y, w, h) in fractions of the image, of the record's trusted boxes of
    known classes; pixel boxes are divided by the image's WIDTH and HEIGHT, and every box
    is clipped to the image."""
    out = []
    for annotation in box_annotations(record):
        if not trusted(annotation) or annotation["label"] not in index:
            continue
        x, y, w, h = (float(v) for v in annotation["bbox"])
        if not annotation.get("normalized"):
            x, y, w, h = x / width, y / height, w / width, h / height
        x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
        x1, y1 = min(max(x + w, 0.0), 1.0), min(max(y + h, 0.0), 1.0)
        if x1 - x0 > 0 and y1 - y0 > 0:
            out.append((index[annotation["label"]], x0, y0, x1 - x0, y1 - y0))
    return out


def load_rgb(source: ImageSource, size: int):
    """The image SOURCE (a path, its bytes, a binary file or a PIL image) as a float
    tensor [3, SIZE, SIZE] in [0, 1] (stretched, bilinear), and its original width and
    height."""
    import numpy as np
    import torch
    from PIL import Image

    with open_image(source) as image:
        width, height = image.size
        pixels = image.convert("RGB").resize((size, size), Image.BILINEAR)
        array = np.asarray(pixels, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), width, height


def prepare_image(source: ImageSource, preprocess: dict) -> tuple[Any, int, int]:
    """The detector's input for one image as the artifact's PREPROCESS says (RGB,
    stretched to a square of ``size``, scaled to [0, 1], normalised by mean and std),
    with the image's original width and height (decode's boxes are fractions of those):
    what training feeds the model and what loophub.models.predictor feeds the artifact."""
    pixels, width, height = load_rgb(source, int(preprocess["size"][0]))
    return normalize(pixels, preprocess["mean"], preprocess["std"]), width, height


def image_stats(ctx: TrainContext, size: int, limit: int = 256
                ) -> tuple[list[float], list[float]]:
    """Mean and std per channel over the first LIMIT training images."""
    import torch

    seen = []
    for record in ctx.version.records("train"):
        path = ctx.version.media_path(record)
        if path is not None:
            seen.append(load_rgb(path, size)[0])
            if len(seen) >= limit:
                break
    if not seen:
        return [0.5] * 3, [0.5] * 3
    stack = torch.stack(seen)
    return (stack.mean(dim=(0, 2, 3)).tolist(),
            stack.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def targets_for(boxes: list, classes: int, size: int) -> dict[str, Any]:
    """Training targets on the stride-4 grid for BOXES (class, x, y, w, h fractions):
    a Gaussian bump per object at its centre cell in its class's heatmap (1 at the
    centre; spread alpha * size / 6 per axis, as TTFNet), the size in cells and the
    centre's offset inside the cell there, and a mask of those cells."""
    import torch

    cells = size // STRIDE
    heat = torch.zeros(classes, cells, cells)
    regress = torch.zeros(4, cells, cells)
    mask = torch.zeros(1, cells, cells)
    axis = torch.arange(cells, dtype=torch.float32)
    # larger boxes first, so a small box's centre cell keeps its own size
    for cls, x, y, w, h in sorted(boxes, key=lambda b: -b[3] * b[4]):
        cx, cy = (x + w / 2) * cells, (y + h / 2) * cells
        ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
        sx, sy = max(0.54 * w * cells / 6, 0.4), max(0.54 * h * cells / 6, 0.4)
        bump = torch.exp(-((axis - ix)[None, :] ** 2) / (2 * sx * sx)
                         - ((axis - iy)[:, None] ** 2) / (2 * sy * sy))
        heat[cls] = torch.maximum(heat[cls], bump)
        heat[cls, iy, ix] = 1.0
        regress[:, iy, ix] = torch.tensor([w * cells, h * cells, cx - ix, cy - iy])
        mask[0, iy, ix] = 1.0
    return {"heat": heat, "regress": regress, "mask": mask}


def detector_model(classes: int, width: int):
    """Backbone at strides 2/4/8/16, a top-down path back to stride 4 (nearest
    upsampling plus lateral 1x1 convolutions), and three heads."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv(inp: int, out: int, stride: int = 1):
        return nn.Sequential(nn.Conv2d(inp, out, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(out), nn.ReLU())

    def head(out: int, bias: float = 0.0):
        layers = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(),
                               nn.Conv2d(2 * width, out, 1))
        nn.init.constant_(layers[-1].bias, bias)
        return layers

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.stage1 = nn.Sequential(conv(3, w, 2), conv(w, w))               # /2
            self.stage2 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w))   # /4
            self.stage3 = nn.Sequential(conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w))  # /8
            self.stage4 = nn.Sequential(conv(4 * w, 4 * w, 2), conv(4 * w, 4 * w))  # /16
            self.lateral3 = nn.Conv2d(4 * w, 4 * w, 1)
            self.lateral2 = nn.Conv2d(2 * w, 4 * w, 1)
            self.smooth3 = conv(4 * w, 4 * w)
            self.smooth2 = conv(4 * w, 2 * w)
            self.heat = head(classes, bias=-2.19)   # prior 0.1
            self.size = head(2)
            self.offset = head(2)

        def forward(self, x):
            c2 = self.stage2(self.stage1(x))
            c3 = self.stage3(c2)
            c4 = self.stage4(c3)
            p3 = self.smooth3(self.lateral3(c3) + F.interpolate(c4, scale_factor=2.0,
                                                                mode="nearest"))
            p2 = self.smooth2(self.lateral2(c2) + F.interpolate(p3, scale_factor=2.0,
                                                                mode="nearest"))
            return self.heat(p2), self.size(p2), torch.sigmoid(self.offset(p2))

    return Detector()


def servable(model):
    """MODEL with the heatmap as probabilities: what the artifact holds."""
    import torch
    import torch.nn as nn

    class Served(nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            heat, size, offset = self.inner(x)
            return torch.sigmoid(heat), size, offset

    return Served(model)


def detection_loss(outputs, targets):
    """Focal loss on the heatmap (CenterNet's: alpha 2, beta 4, over the objects) plus L1
    on the size (x 0.1) and offset at the objects' centre cells."""
    import torch
    import torch.nn.functional as F

    logits, size, offset = outputs
    heat, regress, mask = targets["heat"], targets["regress"], targets["mask"]
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1).float()
    objects = positive.sum().clamp_min(1.0)
    pos_loss = F.logsigmoid(logits) * (1 - p) ** 2 * positive
    neg_loss = F.logsigmoid(-logits) * p ** 2 * (1 - heat) ** 4 * (1 - positive)
    focal = -(pos_loss.sum() + neg_loss.sum()) / objects
    size_loss = (F.l1_loss(size, regress[:, :2], reduction="none") * mask).sum() / objects
    offset_loss = (F.l1_loss(offset, regress[:, 2:], reduction="none") * mask).sum() / objects
    return focal + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * offset_loss


def decode(heatmap, size, offset, *, score_threshold: float = 0.3, top_k: int = 100,
           peak_kernel: int = 3) -> list[dict[str, Any]]:
    """Detections from the artifact's outputs (heatmap as probabilities [B, C, H, W],
    size and offset [B, 2, H, W]), per image: ``boxes`` [K, 4] as [x, y, w, h] fractions
    of the image, ``scores`` [K] and ``labels`` [K] (class indices into the artifact's
    labels), best first. A detection is a heatmap cell that is the maximum of its
    PEAK_KERNEL x PEAK_KERNEL neighbourhood, among the TOP_K best, scoring at least
    SCORE_THRESHOLD; its box is centred at (cell + offset) and sized by ``size``, both in
    output cells (divided by the grid's width and height: fractions of the image).

    The artifact's metadata ``decode`` names this function and holds the served
    SCORE_THRESHOLD, TOP_K and PEAK_KERNEL to call it with."""
    import torch
    import torch.nn.functional as F

    batch, classes, height, width = heatmap.shape
    pooled = F.max_pool2d(heatmap, peak_kernel, 1, peak_kernel // 2)
    peaks = heatmap * (pooled == heatmap)
    scores, where = peaks.reshape(batch, -1).topk(min(top_k, classes * height * width))
    out = []
    for b in range(batch):
        keep = scores[b] >= score_threshold
        s, w = scores[b][keep], where[b][keep]
        label = torch.div(w, height * width, rounding_mode="floor")
        cell = w % (height * width)
        y = torch.div(cell, width, rounding_mode="floor")
        x = cell % width
        cx = (x.to(heatmap.dtype) + offset[b, 0].reshape(-1)[cell]) / width
        cy = (y.to(heatmap.dtype) + offset[b, 1].reshape(-1)[cell]) / height
        bw = size[b, 0].reshape(-1)[cell].clamp_min(0) / width
        bh = size[b, 1].reshape(-1)[cell].clamp_min(0) / height
        x0, y0 = (cx - bw / 2).clamp(0, 1), (cy - bh / 2).clamp(0, 1)
        x1, y1 = (cx + bw / 2).clamp(0, 1), (cy + bh / 2).clamp(0, 1)
        out.append({"boxes": torch.stack([x0, y0, x1 - x0, y1 - y0], 1), "scores": s,
                    "labels": label})
    return out


def iou_xywh(a, b):
    """IoU of every box in A [N, 4] with every box in B [M, 4] (x, y, w, h): [N, M]."""
    import torch

    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = (torch.minimum(ax1[:, None], bx1[None]) - torch.maximum(a[:, None, 0], b[None, :, 0])
          ).clamp_min(0)
    ih = (torch.minimum(ay1[:, None], by1[None]) - torch.maximum(a[:, None, 1], b[None, :, 1])
          ).clamp_min(0)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / union.clamp_min(1e-12)


def match_counts(detections: list[dict], truth, classes: int, iou: float = 0.5
                 ) -> dict[str, Any]:
    """Per class, true and false positives by score bin, and the true boxes: detections
    best first, each matched to the unmatched true box of its class it overlaps most, if
    by IoU >= IOU (VOC/COCO matching). TRUTH: [B, N, 5] (class, x, y, w, h; class -1 pads)."""
    import torch

    tp = torch.zeros(classes, SCORE_BINS, dtype=torch.float64)
    fp = torch.zeros(classes, SCORE_BINS, dtype=torch.float64)
    gt = torch.zeros(classes, dtype=torch.float64)
    truth = truth.cpu()
    for b, found in enumerate(detections):
        real = truth[b][truth[b, :, 0] >= 0]
        true_cls = real[:, 0].long()
        gt += torch.bincount(true_cls, minlength=classes).to(torch.float64)
        boxes, scores, labels = (found["boxes"].cpu(), found["scores"].cpu(),
                                 found["labels"].cpu())
        overlaps = iou_xywh(boxes, real[:, 1:]) if len(real) and len(boxes) else None
        used = torch.zeros(len(real), dtype=torch.bool)
        bins = (scores * SCORE_BINS).long().clamp(0, SCORE_BINS - 1)
        for k in range(len(boxes)):  # already best first
            cls = int(labels[k])
            hit = False
            if overlaps is not None:
                candidates = overlaps[k].clone()
                candidates[(true_cls != cls) | used] = -1
                best = int(candidates.argmax())
                if float(candidates[best]) >= iou:
                    used[best] = hit = True
            (tp if hit else fp)[cls, bins[k]] += 1
    return {"tp": tp, "fp": fp, "gt": gt, "images": float(len(detections))}


def average_precision(tp, fp, gt: float) -> float:
    """VOC all-point interpolated AP from true/false positives per score bin."""
    import torch

    tp, fp = tp.flip(0).cumsum(0), fp.flip(0).cumsum(0)  # from the best scores down
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), tp / gt])
    precision = torch.cat([torch.ones(1, dtype=torch.float64),
                           tp / (tp + fp).clamp_min(1)])
    envelope = precision.flip(0).cummax(0).values.flip(0)
    return float(((recall[1:] - recall[:-1]) * envelope[1:]).sum())


def map_metrics(sums: dict) -> dict[str, float]:
    """mAP@0.5 over the classes with true boxes in the split, from summed counts."""
    gt = sums.get("gt")
    if gt is None or float(gt.sum()) == 0:
        return {"map50": 0.0, "images": sums.get("images", 0.0)}
    aps = [average_precision(sums["tp"][c], sums["fp"][c], float(gt[c]))
           for c in range(len(gt)) if float(gt[c]) > 0]
    return {"map50": sum(aps) / len(aps), "images": sums.get("images", 0.0)}


def train_detector(ctx: TrainContext) -> dict[str, Any]:
    import torch

    p = ctx.params
    labels = ctx.label_names
    if not labels:
        raise ValueError("the dataset's label schema has no classes; a detector needs the "
                         "object classes")
    size = int(p["image_size"])
    if size < 32 or size % 16:
        raise ValueError(f"params.image_size: {size} must be a multiple of 16, at least 32")
    index = {name: i for i, name in enumerate(labels)}
    mean, std = image_stats(ctx, size)
    preprocess = {"kind": "image", "mode": "RGB", "size": [size, size], "resize": "stretch",
                  "scale": 1 / 255, "mean": mean, "std": std}
    classes = len(labels)

    def sample(record: dict, version, training: bool) -> tuple:
        pixels, width, height = prepare_image(version.media_path(record), preprocess)
        boxes = record_boxes(record, width, height, index)
        if training and p["flip"] and recipe_random.random() < 0.5:
            pixels = pixels.flip(-1)  # after normalising: the same, it is per channel
            boxes = [(c, 1.0 - x - w, y, w, h) for c, x, y, w, h in boxes]
        target = targets_for(boxes, classes, size)
        target["boxes"] = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
        return pixels, target

    def collate(batch: list) -> tuple:
        longest = max(1, max(len(t["boxes"]) for _, t in batch))
        truth = torch.full((len(batch), longest, 5), -1.0)
        for row, (_, t) in enumerate(batch):
            truth[row, :len(t["boxes"])] = t["boxes"]
        return torch.stack([x for x, _ in batch]), {
            key: torch.stack([t[key] for _, t in batch]) for key in ("heat", "regress", "mask")
        } | {"boxes": truth}

    def evaluate(outputs, targets) -> dict[str, Any]:
        logits, box_size, offset = outputs
        found = decode(torch.sigmoid(logits), box_size, offset,
                       score_threshold=EVAL_THRESHOLD, top_k=EVAL_TOP_K)
        return match_counts(found, targets["boxes"], classes)

    def split(name: str, training: bool = False):
        return ctx.data(name, transform=lambda record, version: sample(record, version,
                                                                       training))

    seed_everything(int(p["seed"]))  # the same initial weights on every rank and run
    model = detector_model(classes, int(p["width"]))
    config = LoopConfig.from_params(p, checkpoint_every=int(p["checkpoint_every"]) or None)
    val = split("val") if ctx.version.count("val") else None
    best = fit(ctx, model, train=split("train", training=True), val=val,
               loss_fn=detection_loss, evaluate=evaluate, config=config, collate=collate,
               summarize=map_metrics, monitor="val_map50")
    final = dict(best)
    if ctx.version.count("test"):
        final.update(evaluate_split(ctx, model, split("test"), evaluate, config.batch_size,
                                    prefix="test", collate=collate, summarize=map_metrics))
    ctx.final(**final)
    cells = size // STRIDE
    ctx.save_model(servable(model), torch.zeros(1, 3, size, size), preprocess=preprocess,
                   labels=labels, extra={
                       "recipe": p.get("_recipe", ""),
                       "outputs": {
                           "heatmap": f"[batch, {classes}, {cells}, {cells}] probability of "
                                      "an object centre of each class in each cell",
                           "size": f"[batch, 2, {cells}, {cells}] box width, height in cells",
                           "offset": f"[batch, 2, {cells}, {cells}] centre x, y inside its "
                                     "cell (0..1)"},
                       "stride": STRIDE,
                       "decode": {"function": "loophub.training.recipes.detection:decode",
                                  "score_threshold": float(p["score_threshold"]),
                                  "top_k": int(p["top_k"]), "peak_kernel": 3,
                                  "boxes": "[x, y, w, h] fractions of the original image"}})
    return final


RECIPES = [
    Recipe("detector", ("object_detection",),
           "a small anchor-free detector (CenterNet-style: stride-4 centre heatmaps per "
           "class, box sizes and offsets) trained from scratch; mAP@0.5",
           params=dict(PARAMS), usable=usable, train=train_detector),
]
