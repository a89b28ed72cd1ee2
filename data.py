"""Datasets as device tensors: Wikitext-2 (token files or word-level text) and CIFAR-10 (torchvision
download or an ImageFolder tree), batch iteration from seeded generators, and batched augmentation.

    >>> corpus = load_wikitext("../shared/data/wikitext2", torch.device("cpu"))
    >>> images = load_cifar10("../shared/data/cifar10-jpeg", torch.device("cpu"))

Everything a model sees is decoded once and kept on the training device; a batch is an index
gather, never a per-sample Python call.
"""
import functools
import hashlib
import io
import math
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import UserError, check

# ------------------------------------------------------------------------------------ Wikitext-2

TOKEN_FILES = {"train": "wiki.train.npz", "valid": "wiki.validation.npz", "test": "wiki.test.npz"}
TEXT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
GPT1_VOCAB_SIZE = 40479  # OpenAI GPT-1 BPE, as the reference model (ids 1..40472 occur)
# The Wikitext-2 word-level archive (Merity et al.); MD5 as published by torchtext.
WIKITEXT_URLS = ("https://wikitext.smerity.com/wikitext-2-v1.zip",
                 "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip")
WIKITEXT_MD5 = "542ccefacc6c27f945fb54453812b3cd"
WIKITEXT_MEMBERS = {"train": "wikitext-2/wiki.train.tokens", "valid": "wikitext-2/wiki.valid.tokens",
                    "test": "wikitext-2/wiki.test.tokens"}


@dataclass
class Corpus:
    splits: dict          # split -> 1-D int64 token stream on the device
    vocab_size: int
    vocab: list = None    # id -> word for word-level text; None for token-id files
    source: str = ""


def load_wikitext(folder, device, download=True):
    """Token files if the folder has them, else word-level text, else download the text."""
    folder = Path(folder)
    if all((folder / f).exists() for f in TOKEN_FILES.values()):
        return _load_token_files(folder, device)
    if not all((folder / f).exists() for f in TEXT_FILES.values()):
        present = [f for f in list(TOKEN_FILES.values()) + list(TEXT_FILES.values()) if (folder / f).exists()]
        if present or not download:
            missing = [f for f in TEXT_FILES.values() if not (folder / f).exists()]
            raise UserError(f"{folder} is incomplete: has {', '.join(present) or 'nothing'}; put either "
                            f"{', '.join(TOKEN_FILES.values())} or {', '.join(TEXT_FILES.values())} there "
                            f"(missing: {', '.join(missing)})")
        download_wikitext(folder)
    return _load_text_files(folder, device)


def _read_npz(path):
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as d:
            check("tokens" in d.files, f"{path} has no 'tokens' array (it has: {', '.join(d.files) or 'none'})")
            tokens = d["tokens"]
            vocab_size = int(d["vocab_size"]) if "vocab_size" in d.files else None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle and format errors all mean a bad file
        raise UserError(f"{path} is not a readable .npz file (truncated or corrupt?): {e}") from None
    check(tokens.ndim == 1 and tokens.size > 1 and np.issubdtype(tokens.dtype, np.integer),
          f"{path}: 'tokens' must be a 1-D integer array of at least 2 ids, got {tokens.dtype} {tokens.shape}")
    return tokens, vocab_size


def _load_token_files(folder, device):
    arrays, sizes = {}, set()
    for split, name in TOKEN_FILES.items():
        arrays[split], size = _read_npz(folder / name)
        sizes.add(size)
    vocab_size = max(sizes - {None}, default=GPT1_VOCAB_SIZE)
    for split, tokens in arrays.items():
        check(tokens.min() >= 1 and tokens.max() < vocab_size,
              f"{folder / TOKEN_FILES[split]}: token ids must lie in 1..{vocab_size - 1} (0 is padding), "
              f"found {tokens.min()}..{tokens.max()}")
    splits = {s: torch.from_numpy(t.astype(np.int64)).to(device) for s, t in arrays.items()}
    return Corpus(splits, vocab_size, None, f"token files (wiki.*.npz) in {folder}")


def tokenize(path):
    """Whitespace words with <eos> ending every line, as pytorch/examples word_language_model."""
    with open(path, encoding="utf-8-sig") as f:  # -sig: the real files begin with a byte-order mark
        words = [w for line in f for w in line.split() + ["<eos>"]]
    check(any(w != "<eos>" for w in words), f"{path} is empty")
    return words


def build_vocab(words):
    """id 0 is padding; then <unk>, <eos> and the training words in order of first appearance."""
    vocab = ["<pad>", "<unk>", "<eos>"]
    vocab += [w for w in dict.fromkeys(words) if w not in ("<pad>", "<unk>", "<eos>")]
    return vocab


def _load_text_files(folder, device):
    words = {s: tokenize(folder / f) for s, f in TEXT_FILES.items()}
    vocab = build_vocab(words["train"])
    index = {w: i for i, w in enumerate(vocab)}
    unk = index["<unk>"]
    splits = {s: torch.tensor([index.get(w, unk) for w in ws], dtype=torch.int64, device=device)
              for s, ws in words.items()}
    return Corpus(splits, len(vocab), vocab, f"word-level text (train/valid/test.txt) in {folder}")


def download_wikitext(folder, urls=None, md5=None):
    """Fetch the word-level archive over HTTPS, verify its checksum, then move the three files into
    place atomically. Offline, fail with a message naming the files to put where."""
    folder, urls, md5 = Path(folder), urls or WIKITEXT_URLS, md5 or WIKITEXT_MD5
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                blob = response.read()
        except OSError as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        digest = hashlib.md5(blob).hexdigest()
        if digest != md5:
            errors.append(f"{url}: checksum {digest} is not the expected {md5}")
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                for split, member in WIKITEXT_MEMBERS.items():
                    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                        tmp.write(z.read(member))
                    os.replace(tmp.name, folder / TEXT_FILES[split])
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"could not unpack Wikitext-2 into {folder}: {e}") from None
        print(f"data: downloaded Wikitext-2 from {url} into {folder}")
        return
    raise UserError(f"Wikitext-2 not found in {folder} and the download failed ({'; '.join(errors)}); put "
                    f"{', '.join(TOKEN_FILES.values())} (token ids) or {', '.join(TEXT_FILES.values())} "
                    f"(word-level text) into {folder}, or pass --data_folder")


class Windows:
    """A token stream cut into windows of `seq_len` inputs and the `seq_len` next tokens as targets
    (the reference's break_mode=none). The last window is padded with id 0, and padding is never a
    target, so every token after the first is scored exactly once per pass.

    With `streams` = B, the windows are also read as B contiguous streams of `per_stream` windows
    each (the number of windows is rounded up to B * per_stream, the extra ones all padding):
    `stream_order()` lists them so that consecutive groups of B are window s of every stream,
    s = 0, 1, ...: the standard batching of recurrent LMs, whose state flows from one window to
    the next of the same stream."""

    def __init__(self, stream, seq_len, streams=None):
        n = stream.numel()
        check(n >= 2, "a split needs at least 2 tokens")
        self.seq_len, self.num_targets = seq_len, n - 1
        self.num_windows = math.ceil((n - 1) / seq_len)
        if streams:
            self.per_stream = math.ceil(self.num_windows / streams)
            self.num_windows = streams * self.per_stream
        self.padded = F.pad(stream, (0, self.num_windows * seq_len + 1 - n))
        self.offsets = torch.arange(seq_len + 1, device=stream.device)

    def batch(self, idx):
        """Windows `idx` (a device tensor) -> inputs, targets (B, T) and the number of real targets."""
        seq = self.padded[idx[:, None] * self.seq_len + self.offsets]  # (B, T + 1)
        return seq[:, :-1], seq[:, 1:]

    def targets_in(self, idx_host):
        """Real (unpadded) targets in windows `idx_host`, counted on the host without a sync: window
        w holds those of positions w * seq_len + 1 ... (w + 1) * seq_len that exist."""
        return int((self.num_targets - idx_host * self.seq_len).clamp(0, self.seq_len).sum())

    def stream_order(self):
        """Window indices, B streams interleaved: stream k's window s comes at position s * B + k."""
        return torch.arange(self.num_windows).view(-1, self.per_stream).T.flatten()


def to_device(tensor, device):
    """A host tensor on `device`; to CUDA through pinned memory, so the copy does not block."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def index_batches(n, batch_size, generator=None, device="cpu", order=None):
    """Yield (device indices, host indices) over range(n) in batches; shuffled when a generator is
    given, in `order` when one is given. The last batch may be smaller, so every example is used
    exactly once."""
    if order is None:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order_dev = to_device(order, device)
    for start in range(0, n, batch_size):
        yield order_dev[start:start + batch_size], order[start:start + batch_size]


# -------------------------------------------------------------------------------------- CIFAR-10

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_SEED = 0  # the train/valid split is fixed, whatever --seed, so seeds compare on the same split
CACHE_NAME = "cifar10_uint8_cache.npz"


@dataclass
class ImageData:
    splits: dict    # split -> (uint8 images (N, C, H, W), int64 labels (N,)) on the device
    classes: list
    source: str = ""


def split_train_valid(n, valid_fraction=0.1, seed=SPLIT_SEED):
    """Disjoint train / valid indices (45,000 / 5,000 for CIFAR-10's 50,000), in a fixed random
    order: image folders list images by class, and a `--limit_batches` evaluation must still see
    every class."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(n * valid_fraction))
    return perm[n_valid:], perm[:n_valid]


def load_cifar10(folder, device, download=True):
    """An ImageFolder tree (train/<class>/*, test/<class>/*) if the folder holds one, else
    torchvision's CIFAR-10 (downloaded when missing). Returns train/valid/test on the device."""
    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        (train_x, train_y, test_x, test_y), classes = _load_image_folder(folder)
        source = f"image folders (train/, test/) in {folder}"
    else:
        (train_x, train_y, test_x, test_y), classes = _load_torchvision_cifar(folder, download)
        source = f"torchvision CIFAR-10 in {folder}"
    train_idx, valid_idx = split_train_valid(len(train_y))
    test_idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    arrays = dict(train=(train_x[train_idx], train_y[train_idx]), valid=(train_x[valid_idx], train_y[valid_idx]),
                  test=(test_x[test_idx], test_y[test_idx]))
    splits = {s: (x.to(device), y.to(device)) for s, (x, y) in arrays.items()}
    return ImageData(splits, classes, source)


def _load_torchvision_cifar(folder, download):
    import torchvision
    try:
        train = torchvision.datasets.CIFAR10(folder, train=True, download=download)
        test = torchvision.datasets.CIFAR10(folder, train=False, download=False)
    except Exception as e:  # noqa: BLE001 - network, integrity and format errors alike
        raise UserError(f"CIFAR-10 not found in {folder} and could not be downloaded ({str(e).splitlines()[0]}); "
                        f"put cifar-10-python.tar.gz or cifar-10-batches-py/ there, or point --data_folder at "
                        f"an image folder tree train/<class>/*.jpg, test/<class>/*.jpg") from None
    to_tensor = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))  # noqa: E731
    return (to_tensor(train), torch.tensor(train.targets), to_tensor(test), torch.tensor(test.targets)), train.classes


def _list_images(folder):
    check(folder.is_dir(), f"{folder} is missing")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(p, label) for label, c in enumerate(classes) for p in sorted((folder / c).iterdir())
             if p.suffix.lower() in IMAGE_EXTENSIONS]
    check(files, f"{folder} holds no images (expected {folder}/<class>/*.jpg)")
    return classes, files


def _fingerprint(files):
    h = hashlib.sha1()
    for p, label in files:
        st = p.stat()
        h.update(f"{p.parent.name}/{p.name}:{st.st_size}:{st.st_mtime_ns}:{label}\n".encode())
    return h.hexdigest()


def _cache_paths(folder):
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vit-lm-study"
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return [folder / CACHE_NAME, user_cache / f"cifar10_{key}.npz"]


def _load_image_folder(folder):
    train_classes, train_files = _list_images(folder / "train")
    test_classes, test_files = _list_images(folder / "test")
    check(train_classes == test_classes, f"train and test classes differ in {folder}: "
          f"{sorted(set(train_classes) ^ set(test_classes))}")
    fingerprint = _fingerprint(train_files + test_files)
    for path in _cache_paths(folder):  # decoded once, then read back in a second
        try:
            with np.load(path, allow_pickle=False) as d:
                if str(d["fingerprint"]) == fingerprint:
                    arrays = tuple(torch.from_numpy(d[k]) for k in ("train_x", "train_y", "test_x", "test_y"))
                    return arrays, train_classes
        except Exception:  # noqa: BLE001, S112 - a missing or stale cache is simply rebuilt
            continue
    train_x, test_x = _decode(train_files), _decode(test_files)
    check(train_x.shape[1:] == test_x.shape[1:], f"train and test images differ in size in {folder}")
    train_y = torch.tensor([label for _, label in train_files])
    test_y = torch.tensor([label for _, label in test_files])
    arrays = (train_x, train_y, test_x, test_y)
    for path in _cache_paths(folder):  # beside the data, else in the user's cache; never fatal
        if _save_cache(path, fingerprint, arrays):
            break
    return arrays, train_classes


def _save_cache(path, fingerprint, arrays):
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A folder without write bits is read-only by intent, even for root (who may write anyway).
        if not path.parent.stat().st_mode & 0o222 or not os.access(path.parent, os.W_OK):
            return False
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            tmp = f.name
            np.savez(f, fingerprint=np.array(fingerprint),
                     **{k: a.numpy() for k, a in zip(("train_x", "train_y", "test_x", "test_y"), arrays)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # NamedTemporaryFile makes 0600; a cache may be shared
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        return False


def _decode(files):
    from PIL import Image
    images = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB")))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot decode image {p}: {str(e).splitlines()[0]}") from None
    shapes = {im.shape for im in images}
    check(len(shapes) == 1, f"images in {files[0][0].parent.parent} differ in size: {sorted(shapes)[:3]}")
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())  # (N, C, H, W)


def normalize(images, mean=CIFAR_MEAN, std=CIFAR_STD):
    """Pixel values 0..255 (B, C, H, W), uint8 or float -> float, scaled to [0, 1] then standardised
    per channel."""
    scale, shift = _standardise(images.device, tuple(mean), tuple(std))
    return torch.addcmul(shift, images.float(), scale)


@functools.lru_cache(maxsize=None)
def _standardise(device, mean=CIFAR_MEAN, std=CIFAR_STD):
    """x * scale + shift maps 0..255 pixel values to standardised ones, per channel. Cached: making
    a CUDA tensor from Python numbers is a blocking copy, which must not happen every batch."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return scale, shift


def crop_params(n, height, width, generator, scale=(0.8, 1.0), ratio=(0.9, 1.1), attempts=10):
    """RandomResizedCrop's boxes for n images at once: (top, left, h, w) int tensors (n,).

    As torchvision: draw area and log-aspect, round to whole pixels, keep the first of `attempts`
    draws that fits, else fall back to the whole image. The numbers are drawn from `generator` in
    one call; the arithmetic on these few small arrays is NumPy's, which has a fraction of torch's
    per-operation overhead."""
    return tuple(torch.from_numpy(a) for a in _crop_boxes(n, height, width, generator, scale, ratio, attempts))


def _crop_boxes(n, height, width, generator, scale, ratio, attempts=10):  # crop_params, as NumPy arrays
    u = torch.rand(n, 2 * attempts + 2, generator=generator, dtype=torch.float64).numpy()
    s = (scale[0] + (scale[1] - scale[0]) * u[:, :attempts]) * (height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = np.exp(lo + (hi - lo) * u[:, attempts:2 * attempts])
    w = np.round(np.sqrt(s * r)).astype(np.int64)
    h = np.round(np.sqrt(s / r)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first, fits = ok.argmax(1), ok.any(1)
    rows = np.arange(n)
    h = np.where(fits, h[rows, first], height)
    w = np.where(fits, w[rows, first], width)
    top = np.floor(u[:, -2] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, -1] * (width - w + 1)).astype(np.int64)
    return top, left, h, w


def resize_matrices(start, length, size, out_size, reverse=None, shift=None):
    """Bilinear interpolation (align_corners=False, edges clamped) as matrices: row i of matrix b
    weights the input pixels that output pixel i of the crop [start[b], start[b] + length[b]) reads;
    where reverse[b], row i reads what row out_size - 1 - i would (a flip, at no extra cost); with
    shift[b] = t, row i reads what row i - t would, and rows that fall outside are zero (a random
    translation with zero padding, as RandomCrop(padding=...) after the resize).
    (B,) int tensors -> (B, out_size, size)."""
    i = torch.arange(out_size, dtype=torch.float32, device=start.device)
    if shift is not None:
        i = i - shift[:, None]
        inside = ((i >= 0) & (i < out_size)).float()
    if reverse is not None:
        i = torch.where(reverse[:, None], out_size - 1 - i, i)
    src = start[:, None] + (i + 0.5) * (length[:, None].float() / out_size) - 0.5  # (B, out)
    # Bilinear weights are a tent: max(0, 1 - |src - j|) for input pixel j. Clamping src to the
    # image first gives an edge pixel all the weight, as clamped bilinear sampling does.
    j = torch.arange(size, dtype=torch.float32, device=start.device)
    m = (src.clamp_(0, size - 1)[..., None] - j).abs_().neg_().add_(1).clamp_(min=0)  # (B, out, size)
    return m * inside[..., None] if shift is not None else m


TABLE_BYTES = 64 * 2 ** 20  # the largest table of resize matrices kept (CIFAR: 4.3 MB, 39 MB with pad 4)


@functools.lru_cache(maxsize=None)
def _table_layout(size):
    """Where each (flip, shift, crop length, crop start) sits in the table of every column resize
    matrix for images `size` pixels wide: flip-major, then shift in -pad..pad, then length
    1..size, then start 0..size-length. Returns (boxes per flip and shift, offset of each length)."""
    lengths = np.arange(1, size + 1)
    offsets = np.concatenate([[0, 0], np.cumsum(size - lengths + 1)])[:-1]  # offsets[l]: first box of length l
    return int(size * (size + 1) // 2), offsets


@functools.lru_cache(maxsize=4)
def _resize_table(size, pad, device):
    """Every column matrix augment can draw for images `size` pixels wide, built once per device by
    resize_matrices itself (so a gathered matrix equals a computed one): a batch then gathers its
    B matrices in one index_select instead of building them in some 15 small operations."""
    boxes, _ = _table_layout(size)
    length = np.repeat(np.arange(1, size + 1), size - np.arange(1, size + 1) + 1)
    start = np.concatenate([np.arange(size - l + 1) for l in range(1, size + 1)])
    shifts = 2 * pad + 1
    params = np.stack([np.tile(start, 2 * shifts), np.tile(length, 2 * shifts),
                       np.repeat([0, 1], shifts * boxes), np.tile(np.repeat(np.arange(-pad, pad + 1), boxes), 2)])
    start, length, reverse, shift = torch.from_numpy(params).to(device)
    return resize_matrices(start, length, size, size, reverse=reverse.bool(), shift=shift if pad else None)


AUGMENTS = ("reference", "strong")


def _row_taps(start, length, size, shift=None):
    """resize_matrices along the rows, as the two pixels each output row reads: output row i of
    image b is (1 - weight) * row lo + weight * row hi of the input, times inside (0 where a shift
    moved it out). Bilinear weights are a tent one pixel wide, so no row reads more than two.
    (B,) int arrays -> (B, size) arrays lo, hi, weight, inside (NumPy, on the host)."""
    i = np.arange(size, dtype=np.float64) - (0 if shift is None else shift[:, None])
    inside = ((i >= 0) & (i < size)).astype(np.float32)
    src = np.clip(start[:, None] + (i + 0.5) * (length[:, None] / size) - 0.5, 0, size - 1)
    lo = np.floor(src).astype(np.int64)
    return lo, np.minimum(lo + 1, size - 1), (src - lo).astype(np.float32), np.broadcast_to(inside, src.shape)


def augment(images, generator, flip=True, scale=(0.8, 1.0), ratio=(0.9, 1.1), policy="reference", pad=4):
    """The training augmentation, batched: per-image parameters from `generator`, then the work for
    the whole batch on the images' device. uint8 (B, C, H, W) -> normalised float.

    reference: the reference's RandomHorizontalFlip and RandomResizedCrop (same size, bilinear).
    Bilinear resizing is separable, out = Ry @ image @ Rx^T: the rows as two gathered taps per
    output row, the columns (with the flip, which reverses the rows of Rx) as one batched matmul.
    Equal to torchvision's bilinear resize of the crop box (antialias off), except that pixels at
    the box's edge may read the pixel just beyond it, as grid_sample with border padding would.
    strong: the same, then a random translation by up to `pad` pixels with zero padding (pad and
    crop, folded into the same taps and matrices), then one TrivialAugment-style operation per
    image (see `trivial_augment`)."""
    if policy not in AUGMENTS:
        raise ValueError(f"unknown augmentation {policy!r}; choose from {', '.join(AUGMENTS)}")
    B, C, H, W = images.shape
    device, strong = images.device, policy == "strong"
    pad = pad if strong else 0
    # Every parameter comes from the CPU generator (the same numbers on every device) and is turned
    # into indices by NumPy; only those, and the row weights, cross to the device.
    top, left, h, w = _crop_boxes(B, H, W, generator, scale, ratio)
    flips = (torch.rand(B, generator=generator) < 0.5).numpy() if flip else np.zeros(B, dtype=bool)
    shift = (torch.randint(-pad, pad + 1, (2, B), generator=generator).numpy() if strong
             else np.zeros((2, B), dtype=np.int64))
    lo, hi, weight, inside = _row_taps(top, h, H, shift[0] if strong else None)
    first = (np.arange(B * C) * H).reshape(B, C, 1)  # each channel's first row in images.reshape(-1, W)
    indices = [(first + np.stack([lo, hi])[:, :, None]).ravel()]  # (2, B, C, H): every row's two taps
    boxes, offsets = _table_layout(W)
    gather = 2 * (2 * pad + 1) * boxes * W * W * 4 <= TABLE_BYTES  # float32 matrices: flips x shifts x boxes
    if gather:  # CIFAR-sized: the column matrices' places in the table of every one
        indices.append((flips * (2 * pad + 1) + shift[1] + pad) * boxes + offsets[w] + left)
    index = to_device(torch.from_numpy(np.concatenate(indices)), device)
    taps = np.broadcast_to(weight[:, None], (B, C, H)).reshape(-1, 1)
    if strong:
        taps = np.concatenate([taps, np.broadcast_to(inside[:, None], (B, C, H)).reshape(-1, 1)])
    taps = to_device(torch.from_numpy(taps), device)
    if gather:
        rx = _resize_table(W, pad, device).index_select(0, index[2 * B * C * H:])
    else:  # large images: build the matrices
        start, length, reverse, cshift = to_device(torch.from_numpy(np.stack([left, w, flips, shift[1]])), device)
        rx = resize_matrices(start, length, W, W, reverse=reverse.bool(), shift=cshift if pad else None)
    # Rows: both taps of every output row in one index_select of whole input rows (in the input's
    # dtype: uint8 moves a quarter of the bytes), converted into one float buffer of our own, then
    # blended in place. A matmul by Ry would do 16x the arithmetic for the same result, and the
    # weights (multiples of 1/64 for CIFAR crops) make both exact. Columns: (B, C*H, W) @ (B, W, W)
    # into the second half of the buffer, the matmul shape a CPU runs near its peak.
    n = B * C * H
    x = torch.empty(2 * n, W, device=device).copy_(images.reshape(n, W).index_select(0, index[:2 * n]))
    x[:n].lerp_(x[n:], taps[:n])
    if strong:
        x[:n].mul_(taps[n:])
    out = torch.bmm(x[:n].view(B, C * H, W), rx.transpose(1, 2), out=x[n:].view(B, C * H, W)).view(B, C, H, W)
    if strong:
        out = trivial_augment(out, generator)
    norm_scale, norm_shift = _standardise(device)
    return out.mul_(norm_scale).add_(norm_shift)  # in place: out is this function's own (addcmul is 4x slower here)


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
    """One TrivialAugment operation per image of x (float (B, C, H, W), pixel values 0..255), batched:
    the images are grouped by operation (the draws are on the host, so the grouping costs no device
    sync), each group is transformed at once, and the geometric ones share one grid_sample (nearest,
    zero fill, as torchvision's default). `ops` (indices into TA_OPS) and signed `magnitudes` in
    [-1, 1] (B,) may be given instead of drawn. Returns a new tensor."""
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
    # index_select copies whole images; x[index] and index_copy_ go element by element (on a CPU 7x
    # and 5x slower)
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
    """PIL's SMOOTH filter on the interior, the border kept (as torchvision's adjust_sharpness). The
    kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 is a 3 x 3 box plus 4 x the centre, and the box is
    separable: four slice adds, where a grouped conv2d took 0.5 ms for a dozen CIFAR images."""
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
    """(H*W, 3): every pixel centre's (x, y, 1) in [-1, 1] coordinates (align_corners=False), the
    base grid that F.affine_grid multiplies by theta. Cached per device, as _standardise."""
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
    # F.affine_grid's (n, H*W, 3) @ (n, 3, 2) bmm took 1.4 ms for 49 images on a CPU thread; one
    # matmul against the shared pixel grid gives the same grid in 0.07 ms.
    grid = torch.einsum("pk,njk->npj", _pixel_grid(H, W, x.device), theta).view(n, H, W, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def mix(images, labels, generator, mixup=0.0, cutmix=0.0):
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) on a whole batch: with both alphas set,
    one of the two per batch, each with probability 1/2. Returns (images, labels_b, lam): the loss
    is lam * CE(labels) + (1 - lam) * CE(labels_b). For CutMix, lam is the exact fraction of
    pixels left from the first image (the box is clipped at the border)."""
    B, _, H, W = images.shape
    use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # Beta is not drawn by torch generators: seed a NumPy generator from this one (reproducible).
    lam = float(np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=generator))).beta(alpha, alpha))
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
