"""Batched training augmentation on device tensors: RandomResizedCrop and flip (the reference's),
a zero-padded translation and one TrivialAugment operation per image (the strong policy), MixUp
and CutMix, and the per-channel normalisation. Every random number comes from a given CPU
generator (the same draws on every device); the work is done for the whole batch at once.

    >>> x = augment(uint8_images, torch.Generator().manual_seed(0), policy="strong")
"""
import functools
import math

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
AUGMENTS = ("reference", "strong")


def to_device(tensor, device):
    """A small host tensor on `device`; through pinned memory to CUDA, so the copy does not block."""
    device = torch.device(device)
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


@functools.lru_cache(maxsize=None)
def _standardise(device, mean=CIFAR_MEAN, std=CIFAR_STD):
    """(scale, shift) per channel from 0..255 to standardised values; cached, since making a CUDA
    tensor from Python numbers is a blocking copy."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return scale, shift


def normalize(images, mean=CIFAR_MEAN, std=CIFAR_STD):
    """Pixel values 0..255 (B, C, H, W), uint8 or float -> standardised floats."""
    scale, shift = _standardise(images.device, tuple(mean), tuple(std))
    return torch.addcmul(shift, images.float(), scale)


def crop_params(n, height, width, generator, scale=(0.8, 1.0), ratio=(0.9, 1.1), attempts=10):
    """RandomResizedCrop's boxes (top, left, h, w) for n images at once, as torchvision draws them:
    the first of `attempts` (area, log-aspect) draws that fits, else the whole image."""
    u = torch.rand(n, 2 * attempts + 2, generator=generator, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, :attempts]) * (height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, attempts:2 * attempts])
    w, h = torch.round(torch.sqrt(area * aspect)).long(), torch.round(torch.sqrt(area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first, fits = ok.long().argmax(1, keepdim=True), ok.any(1)
    h = torch.where(fits, h.gather(1, first).squeeze(1), height)
    w = torch.where(fits, w.gather(1, first).squeeze(1), width)
    top = torch.floor(u[:, -2] * (height - h + 1)).long()
    left = torch.floor(u[:, -1] * (width - w + 1)).long()
    return top, left, h, w


def _sample_points(start, length, size, shift, flip):
    """Where output pixel i reads its input, in grid_sample's coordinates: the crop [start, start +
    length) resized to `size`, flipped where `flip`, shifted by `shift`; and whether i is still inside
    the image (else zero padding). (B,) tensors -> (B, size) coordinates and mask."""
    i = torch.arange(size, dtype=torch.float32, device=start.device) - shift[:, None]
    inside = (i >= 0) & (i < size)
    i = torch.where(flip[:, None], size - 1 - i, i)
    src = start[:, None] + (i + 0.5) * (length[:, None] / size) - 0.5  # input pixel coordinate
    return (2 * src + 1) / size - 1, inside


def augment(images, generator, flip=True, scale=(0.8, 1.0), ratio=(0.9, 1.1), policy="reference", pad=4):
    """The training augmentation of a uint8 batch (B, C, H, W) into normalised floats: per-image
    parameters from `generator`, one grid_sample for the batch. reference: the reference's
    RandomHorizontalFlip and RandomResizedCrop (bilinear, no antialias; a pixel at the box's edge may
    read one beyond it). strong: then a translation by up to `pad` pixels with zero padding (in the
    same grid) and one TrivialAugment operation per image."""
    if policy not in AUGMENTS:
        raise ValueError(f"unknown augmentation {policy!r}; choose from {', '.join(AUGMENTS)}")
    B, _, H, W = images.shape
    strong = policy == "strong"
    top, left, h, w = crop_params(B, H, W, generator, scale, ratio)
    flips = torch.rand(B, generator=generator) < 0.5 if flip else torch.zeros(B, dtype=torch.bool)
    pad = pad if strong else 0
    shift = torch.randint(-pad, pad + 1, (2, B), generator=generator) if strong else torch.zeros(2, B, dtype=torch.long)
    params = to_device(torch.stack([top, left, h, w, shift[0], shift[1], flips.long()]), images.device)
    top, left, h, w, shift_y, shift_x, flips = params
    y, inside_y = _sample_points(top, h, H, shift_y, torch.zeros_like(flips, dtype=torch.bool))
    x, inside_x = _sample_points(left, w, W, shift_x, flips.bool())
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), -1)  # (B, H, W, 2) as (x, y)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if strong:
        out = trivial_augment(out.mul_((inside_y[:, None, :, None] & inside_x[:, None, None, :]).float()),
                              generator)
    norm_scale, norm_shift = _standardise(images.device)
    return out.mul_(norm_scale).add_(norm_shift)  # in place: out is this function's own


# TrivialAugment (Mueller & Hutter 2021): one operation per image, drawn uniformly, with a magnitude
# drawn uniformly in [0, 1] (and a random sign where it has one), scaled to the operation's range.
# The ranges are RandAugment's (TrivialAugment's "RA" space), milder than torchvision's "Wide" one,
# which suits a small ViT trained for tens of epochs. Magnitude 0 is the identity for every
# operation that has one; autocontrast has none (as in torchvision).
TA_OPS = ("identity", "brightness", "contrast", "saturation", "sharpness", "posterize", "solarize",
          "autocontrast", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
TA_RANGES = dict(brightness=0.9, contrast=0.9, saturation=0.9, sharpness=0.9,  # factor 1 +- 0.9 m
                 posterize=4,          # bits 8 - round(4 |m|), 8 (identity) down to 4
                 solarize=255.0,       # invert pixels above 255 (1 - |m|)
                 rotate=30.0,          # degrees
                 shear_x=0.3, shear_y=0.3,
                 translate_x=150 / 331, translate_y=150 / 331)  # fraction of the side, in whole pixels
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # last in TA_OPS: one block


def trivial_augment(x, generator, ops=None, magnitudes=None):
    """One TrivialAugment operation per image of x (float (B, C, H, W), 0..255), grouped by operation
    (drawn on the host: no device sync), the geometric ones in one grid_sample (nearest, zero fill).
    `ops` (indices into TA_OPS) and signed `magnitudes` in [-1, 1] may be given instead of drawn."""
    B = x.shape[0]
    if ops is None:
        ops = torch.randint(len(TA_OPS), (B,), generator=generator)
        sign = torch.randint(2, (B,), generator=generator) * 2 - 1
        magnitudes = torch.rand(B, generator=generator) * sign
    ops, magnitudes = torch.as_tensor(ops), torch.as_tensor(magnitudes, dtype=torch.float32)
    order = torch.argsort(ops, stable=True)
    counts = torch.bincount(ops, minlength=len(TA_OPS)).tolist()  # host tensors: no sync
    unsort = torch.argsort(order)
    packed = to_device(torch.stack([order.float(), unsort.float(), magnitudes[order]]), x.device)
    order_dev, unsort_dev, m = packed[0].long(), packed[1].long(), packed[2]
    # index_select copies whole images; x[index] and index_copy_ go element by element
    xs = x.index_select(0, order_dev)
    start, geo_start = 0, None
    for name, n in zip(TA_OPS, counts):
        if name == GEOMETRIC[0]:
            geo_start = start
        if n and name not in GEOMETRIC and name != "identity":
            xs[start:start + n] = _COLOUR_OPS[name](xs[start:start + n], m[start:start + n])
        start += n
    if geo_start < B:
        xs[geo_start:] = _affine(xs[geo_start:], ops[order[geo_start:]], m[geo_start:])
    return xs.index_select(0, unsort_dev)


def _grey(x):  # (n, 3, H, W) -> (n, 1, H, W), ITU-R 601 luma as PIL and torchvision
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x


def _blend(x, other, factor):  # other + factor (x - other), clamped; factor 1 is the identity
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp_(0, 255)


def _sharpen_base(x):
    """PIL's SMOOTH filter on the interior, the border kept (torchvision's adjust_sharpness): a 3 x 3
    box plus 4 x the centre, over 13, as four slice adds instead of a grouped conv2d."""
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # (n, C, H - 2, W)
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * x[:, :, 1:-1, 1:-1]) / 13
    return blurred


def _posterize(x, m):
    step = 2.0 ** torch.round(TA_RANGES["posterize"] * m.abs()).view(-1, 1, 1, 1)  # 2^(8 - bits)
    return torch.where(step > 1, torch.floor(x / step) * step, x)


def _autocontrast(x, m):
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, ((x - lo) * (255 / (hi - lo).clamp(min=1e-6))).clamp_(0, 255), x)


_COLOUR_OPS = {
    "brightness": lambda x, m: _blend(x, torch.zeros_like(x), 1 + TA_RANGES["brightness"] * m),
    "contrast": lambda x, m: _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), 1 + TA_RANGES["contrast"] * m),
    "saturation": lambda x, m: _blend(x, _grey(x), 1 + TA_RANGES["saturation"] * m),
    "sharpness": lambda x, m: _blend(x, _sharpen_base(x), 1 + TA_RANGES["sharpness"] * m),
    "posterize": _posterize,
    "solarize": lambda x, m: torch.where(x > TA_RANGES["solarize"] * (1 - m.abs()).view(-1, 1, 1, 1), 255 - x, x),
    "autocontrast": _autocontrast,
}


@functools.lru_cache(maxsize=8)
def _pixel_grid(H, W, device):
    """(H*W, 3): every pixel centre's (x, y, 1) in [-1, 1], the base grid of F.affine_grid."""
    ys, xs = torch.meshgrid((torch.arange(H, device=device) * 2 + 1) / H - 1,
                            (torch.arange(W, device=device) * 2 + 1) / W - 1, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], -1).view(H * W, 3)


def _affine(x, ops, m):
    """Rotate, shear or translate each image by its own amount: one affine grid_sample (nearest,
    zero fill). ops: host TA_OPS indices, m: signed magnitudes on the device."""
    n, _, H, W = x.shape
    onehot = to_device(torch.stack([ops == TA_OPS.index(name) for name in GEOMETRIC]).float(), x.device)
    which = dict(zip(GEOMETRIC, onehot))
    angle = torch.deg2rad(TA_RANGES["rotate"] * m) * which["rotate"]
    # theta maps output to input coordinates in [-1, 1]; a translation by t whole pixels (truncated,
    # as torchvision's RandAugment) is 2 t / side.
    tx = torch.trunc(TA_RANGES["translate_x"] * W * m) * (2 / W) * which["translate_x"]
    ty = torch.trunc(TA_RANGES["translate_y"] * H * m) * (2 / H) * which["translate_y"]
    theta = torch.stack([
        torch.stack([torch.cos(angle), -torch.sin(angle) + TA_RANGES["shear_x"] * m * which["shear_x"], tx], 1),
        torch.stack([torch.sin(angle) + TA_RANGES["shear_y"] * m * which["shear_y"], torch.cos(angle), ty], 1),
    ], 1)  # (n, 2, 3)
    # One matmul against the shared pixel grid: F.affine_grid's batched matmul is slower on a CPU.
    grid = torch.einsum("pk,njk->npj", _pixel_grid(H, W, x.device), theta).view(n, H, W, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def mix(images, labels, generator, mixup=0.0, cutmix=0.0):
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) on a batch (with both, one of the two per
    batch): (images, labels_b, lam), the loss lam * CE(labels) + (1 - lam) * CE(labels_b). CutMix's
    lam is the exact fraction of pixels kept (its box is clipped at the border)."""
    B, _, H, W = images.shape
    use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # lam ~ Beta(alpha, alpha) = G1 / (G1 + G2), each G ~ Gamma(alpha) drawn as Gamma(alpha + 1) * U ** (1 / alpha)
    # in logs: exact for any alpha, where torch's Beta underflows below about 0.005 (lam 0.5 for alpha 1e-30).
    # torch draws a Gamma from the global generator only: seeded from this one, the global state kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        log_g = torch.distributions.Gamma(torch.full((2,), alpha + 1.0, dtype=torch.float64), 1.0).sample().log()
    log_u = (1 - torch.rand(2, generator=generator, dtype=torch.float64)).log()  # U in (0, 1]
    lam = float(torch.sigmoid(log_g[0] - log_g[1] + (log_u[0] - log_u[1]) / alpha))  # lam = 1 / (1 + G2 / G1)
    perm = to_device(torch.randperm(B, generator=generator), images.device)
    if use_cutmix:
        r = math.sqrt(1 - lam)
        ch, cw = int(H * r), int(W * r)
        cy, cx = int(torch.randint(H, (1,), generator=generator)), int(torch.randint(W, (1,), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, W)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = images[:, :, y0:y1, x0:x1].index_select(0, perm)
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        images = torch.lerp(images.index_select(0, perm), images, lam)  # lam * images + (1 - lam) * images[perm]
    return images, labels[perm], lam
