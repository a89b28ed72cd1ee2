"""Datasets as device tensors: Wikitext-2 (token files or word-level text) and CIFAR-10 (torchvision
download or an ImageFolder tree), and batch iteration from seeded generators.

    >>> corpus = load_wikitext("./data/wikitext2", torch.device("cpu"))
    >>> images = load_cifar10("./data/cifar10", torch.device("cpu"))

Everything a model sees is decoded once and kept on the training device; a batch is an index
gather, never a per-sample Python call.
"""
import contextlib
import hashlib
import io
import json
import math
import operator
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augment import to_device
from rundir import advisory_lock, atomic_bytes, atomic_write
from utils import UserError, check, fetch, file_in_the_way, first_line, log, reason

# ------------------------------------------------------------------------------------ Wikitext-2

TOKEN_FILES = {"train": "wiki.train.npz", "valid": "wiki.validation.npz", "test": "wiki.test.npz"}
# The reference report's token files, from a pinned public copy, verified by sha256 before use.
TOKEN_URL = "https://raw.githubusercontent.com/SamuelA-L/IFT6135-HW2/5b174a84d83334f273cdded5965f609e5a111274/data/"
TOKEN_SHA256 = {"wiki.train.npz": "64513a83b2f7bc952318aea06c63e9fabf349352ccdcc972cf7d40a0522f1131",
                "wiki.validation.npz": "b1ac035ce1b48ef98bb64cc58e48eadcb12c9affaf38ba6a32f287a8c3501ab3",
                "wiki.test.npz": "8222625565bfb25cb36f5135c2a9c9c9934ba305cf02d004edfc8a2e3df58152"}
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
    sha256: str = ""      # of the vocabulary and every split's tokens: the data's identity, wherever they lie
    unseen: dict = None   # split -> its words that train.txt lacks, read as <unk> (word-level text)


def load_wikitext(folder, device, data_format="auto", download=True):
    """The reference's token files (GPT-1 ids) or word-level text, whichever `data_format` asks for
    (auto: token files first). What is missing is downloaded: the token files, else (auto) the text."""
    folder = Path(folder)
    file = file_in_the_way(folder)
    check(file is None, f"{folder}" + f": {file}" * (file != folder) + " is a file, not the data's folder")
    files, load = {"tokens": TOKEN_FILES, "words": TEXT_FILES}, {"tokens": _load_token_files, "words": _load_text_files}
    wanted = ["tokens", "words"] if data_format == "auto" else [data_format]
    have = {k: [f for f in files[k].values() if (folder / f).exists()] for k in wanted}
    for kind in wanted:
        if len(have[kind]) == len(files[kind]):
            return load[kind](folder, device)
    names = " or ".join(", ".join(files[k].values()) + (" (GPT-1 token ids, the reference's)" if k == "tokens"
                                                        else " (word-level text)") for k in wanted)
    missing = [f for k in wanted if have[k] for f in files[k].values() if f not in have[k]]  # of a format begun
    check(not any(have.values()), f"{folder} is incomplete: has {', '.join(sum(have.values(), []))}; put {names} "
          f"there (missing: {', '.join(missing)})")
    _data_not_below(folder, "Wikitext-2",
                    lambda p: any(all((p / f).exists() for f in files[k].values()) for k in wanted))
    archive = [Path(m).name for m in WIKITEXT_MEMBERS.values()]  # wiki.train.tokens, ...: the archive unpacked by hand
    where = next((p for p in (folder, folder / "wikitext-2") if all((p / name).exists() for name in archive)), None)
    check(where is None or "words" not in wanted, f"{where} holds Wikitext-2's own files ({', '.join(archive)}); "
          f"they are read as {', '.join(TEXT_FILES.values())} in {folder}: copy them there under those names")
    errors = []
    for kind in wanted if download else []:
        try:
            (download_token_files if kind == "tokens" else download_wikitext)(folder)
            return load[kind](folder, device)
        except OSError as e:
            errors.append(f"{kind}: {e}")
    failed = f" and the download failed ({'; '.join(errors)})" if errors else ""
    raise UserError(f"Wikitext-2 not found in {folder}{failed}; put {names} into {folder}")


def _data_not_below(folder, what, holds):
    """Refuse, before anything is downloaded into it, a folder whose sub-folder holds the data (./data
    given for ./data/cifar10)."""
    inner = next((p for p in sorted(folder.iterdir()) if p.is_dir() and holds(p)), None) if folder.is_dir() else None
    check(inner is None, f"{folder} holds no {what}, but {inner} in it does: give that folder instead")


def download_token_files(folder):
    """Fetch the reference's three token files, verify each against its pinned sha256, and move them
    into place only once all three are good: a failed or corrupt download leaves nothing behind."""
    contents = {}
    for name, digest in TOKEN_SHA256.items():
        contents[name] = fetch(TOKEN_URL + name)
        if (got := hashlib.sha256(contents[name]).hexdigest()) != digest:
            raise OSError(f"{TOKEN_URL + name}: sha256 {got} is not the pinned {digest}")
    for name, content in contents.items():
        atomic_bytes(Path(folder) / name, content)
    log(f"data: downloaded the reference's token files from {TOKEN_URL} into {folder}")


def read_tokens_npz(path):
    """The 'tokens' array of an .npz file (token ids, or an embedding table), or the array of an .npy
    file, and the file's other arrays; never a pickle. One line naming the file when it is missing,
    damaged or has no tokens."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):  # an .npy file: the one array
                return loaded, {}
            with loaded as d:
                arrays = {k: d[k] for k in d.files}
    except OSError as e:  # missing, a folder, or refused (its permissions, a file above it, a failing disk)
        said = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be read: {e.strerror or e}"
        raise UserError(f"{path} {'is a folder, not a file' if Path(path).is_dir() else said}") from None
    except Exception as e:  # noqa: BLE001 - zip, pickle and format errors all mean a bad file
        pickled = isinstance(e, ValueError) and "pickled" in str(e)  # in numpy 1's words and 2's
        raise UserError(f"{path} is not a readable {'.npy' if Path(path).suffix == '.npy' else '.npz'} file (truncated "
                        f"or corrupt?): {'not NumPy data' if pickled else str(e).splitlines()[0]}") from None
    check("tokens" in arrays, f"{path} has no 'tokens' array (it has: {', '.join(arrays) or 'none'})")
    return arrays.pop("tokens"), arrays


def _load_token_files(folder, device):
    arrays, stated = {}, {}  # stated: the files' own vocab_size, where they give one
    for split, name in TOKEN_FILES.items():
        arrays[split], rest = read_tokens_npz(path := folder / name)
        try:
            stated.update({name: operator.index(rest["vocab_size"].item())} if "vocab_size" in rest else {})
        except (TypeError, ValueError):  # a fraction, a string, several numbers
            raise UserError(f"{path}: its 'vocab_size' is not a whole number") from None
        t = arrays[split]
        check(t.ndim == 1 and t.size > 1 and np.issubdtype(t.dtype, np.integer),
              f"{path}: 'tokens' must be a 1-D integer array of at least 2 ids, got {t.dtype} {t.shape}")
    check(len(set(stated.values())) <= 1, f"the token files in {folder} disagree on the vocabulary size: "
          f"{', '.join(f'{name} {n}' for name, n in stated.items())}")
    vocab_size = max(stated.values(), default=GPT1_VOCAB_SIZE)
    check(1 < vocab_size < 2 ** 31, f"the vocabulary size {vocab_size} in {folder} is out of range")
    for split, tokens in arrays.items():
        check(tokens.min() >= 1 and tokens.max() < vocab_size,
              f"{folder / TOKEN_FILES[split]}: token ids must lie in 1..{vocab_size - 1} (0 is padding), "
              f"found {tokens.min()}..{tokens.max()}")
    splits = {s: torch.from_numpy(t.astype(np.int64)) for s, t in arrays.items()}
    return Corpus({s: t.to(device) for s, t in splits.items()}, vocab_size, None,
                  f"token files (wiki.*.npz) in {folder}", content_sha256(vocab_size, *splits.values()))


def tokenize(path):
    """Whitespace words with <eos> ending every line, as pytorch/examples word_language_model."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: the real files begin with a byte-order mark
            words = [w for line in f for w in line.split() + ["<eos>"]]
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    check(any(w != "<eos>" for w in words), f"{path} is empty")
    return words


def build_vocab(words):
    """id 0 is padding; then <unk>, <eos> and the training words in order of first appearance."""
    specials = ["<pad>", "<unk>", "<eos>"]
    return specials + [w for w in dict.fromkeys(words) if w not in specials]


def word_index(vocab):
    """word -> id, without the padding: a literal "<pad>" in a text is a word, and unknown."""
    return {w: i for i, w in enumerate(vocab) if i}


def _load_text_files(folder, device):
    words = {s: tokenize(folder / f) for s, f in TEXT_FILES.items()}
    index = word_index(vocab := build_vocab(words["train"]))
    unk, unseen = index["<unk>"], {s: sum(w not in index for w in ws) for s, ws in words.items() if s != "train"}
    splits = {s: torch.tensor([index.get(w, unk) for w in ws], dtype=torch.int64) for s, ws in words.items()}
    return Corpus({s: t.to(device) for s, t in splits.items()}, len(vocab), vocab, "word-level text "
                  f"(train/valid/test.txt) in {folder}", content_sha256(vocab, *splits.values()), unseen)


def content_sha256(*parts):
    """A checksum of tensors (their bytes, in order) and JSON-able values: what a dataset is."""
    digest = hashlib.sha256()
    for part in parts:
        tensor = torch.is_tensor(part)
        digest.update(memoryview(part.contiguous().numpy()).cast("B") if tensor else json.dumps(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def download_wikitext(folder):
    """Fetch the word-level archive over HTTPS, verify its checksum, then move the three files into
    place atomically. OSError naming every address tried when none gives the archive."""
    folder, errors = Path(folder), []
    for url in WIKITEXT_URLS:
        try:
            blob = fetch(url)
        except OSError as e:
            errors.append(str(e))
            continue
        digest = hashlib.md5(blob).hexdigest()
        if digest != WIKITEXT_MD5:
            errors.append(f"{url}: checksum {digest} is not the expected {WIKITEXT_MD5}")
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                members = {split: z.read(member) for split, member in WIKITEXT_MEMBERS.items()}
        except (KeyError, zipfile.BadZipFile) as e:
            raise OSError(f"{url}: not the Wikitext-2 archive ({e})") from None
        for split, content in members.items():
            atomic_bytes(folder / TEXT_FILES[split], content)
        log(f"data: downloaded Wikitext-2 from {url} into {folder}")
        return
    raise OSError("; ".join(errors))


class Windows:
    """A token stream cut into windows of `seq_len` inputs and their next tokens as targets (the
    reference's break_mode=none), padded with id 0, which is never a target: every token after the
    first is scored once per pass. Window `num_windows`, all padding, fills up a short last batch.
    With `streams` = B, the windows also form B contiguous streams (their number rounded up with
    padding) for recurrent LMs that carry their state from one window to the next."""

    def __init__(self, stream, seq_len, streams=None):
        n = stream.numel()
        check(n >= 2, "a split needs at least 2 tokens")
        self.seq_len, self.num_targets = seq_len, n - 1
        self.num_windows = math.ceil((n - 1) / seq_len)
        if streams:
            self.per_stream = math.ceil(self.num_windows / streams)
            self.num_windows = streams * self.per_stream
        self.padded = F.pad(stream, (0, (self.num_windows + 1) * seq_len + 1 - n))
        self.offsets = torch.arange(seq_len + 1, device=stream.device)

    def batch(self, idx):
        """Windows `idx` (a device tensor) -> inputs, targets (B, T) and the number of real targets."""
        seq = self.padded[idx[:, None] * self.seq_len + self.offsets]  # (B, T + 1)
        return seq[:, :-1], seq[:, 1:]

    def targets_in(self, idx_host):
        """Real (unpadded) targets in windows `idx_host`, counted on the host: no device sync."""
        return int((self.num_targets - idx_host * self.seq_len).clamp(0, self.seq_len).sum())

    def stream_order(self):
        """Window indices, B streams interleaved: stream k's window s comes at position s * B + k."""
        return torch.arange(self.num_windows).view(-1, self.per_stream).T.flatten()


def index_batches(n, batch_size, generator=None, device="cpu", order=None):
    """(device indices, host indices) over range(n) in batches, shuffled by `generator` or in `order`;
    a smaller last batch, so every example is used exactly once."""
    if order is None:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order_dev = to_device(order, device)
    for start in range(0, n, batch_size):
        yield order_dev[start:start + batch_size], order[start:start + batch_size]


# -------------------------------------------------------------------------------------- CIFAR-10

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_SEED = 0  # the train/valid split is fixed, whatever --seed, so seeds compare on the same split
CACHE_NAME = "cifar10_uint8_cache.npz"


@dataclass
class ImageData:
    splits: dict    # split -> (uint8 images (N, C, H, W), int64 labels (N,)) on the device
    classes: list
    source: str = ""
    sha256: str = ""  # of the class names and every split's images and labels


def split_train_valid(n, valid_fraction=0.1, seed=SPLIT_SEED):
    """Disjoint train / valid indices (45,000 / 5,000 of CIFAR-10's 50,000) in a fixed random order:
    a `--limit_batches` evaluation still sees every class."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(n * valid_fraction))
    return perm[n_valid:], perm[:n_valid]


def load_cifar10(folder, device, download=True):
    """An ImageFolder tree (train/<class>/*, test/<class>/*) if the folder holds one, else
    torchvision's CIFAR-10 (downloaded when missing). Returns train/valid/test on the device."""
    folder = Path(folder)
    file = file_in_the_way(folder)
    check(file is None, f"{folder}" + f": {file}" * (file != folder) + " is a file, not the data's folder")
    tree = [(folder / split).is_dir() for split in ("train", "test")]  # one alone: a tree half made, never CIFAR-10
    if all(tree) or any(tree) and not (folder / "cifar-10-batches-py").is_dir():
        (train_x, train_y, test_x, test_y), classes, jpeg = _load_image_folder(folder)
        source = f"{'JPEG (lossy) ' * jpeg}image folders (train/, test/) in {folder}"  # report.py reads the JPEG
    else:
        if not any((folder / name).exists() for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz")):
            _data_not_below(folder, "CIFAR-10", lambda p: all((p / s).is_dir() for s in ("train", "test"))
                            or (p / "cifar-10-batches-py").is_dir())
            inside = (folder / "data_batch_1").exists() or folder.name in ("train", "test") and all(
                (folder.parent / s).is_dir() for s in ("train", "test"))  # torchvision's folder, or a split's
            check(not inside, f"{folder} is a part of the data, not its folder: give {folder.parent} instead")
        (train_x, train_y, test_x, test_y), classes = _load_torchvision_cifar(folder, download)
        source = f"torchvision CIFAR-10 in {folder}"
    train_idx, valid_idx = split_train_valid(len(train_y))
    test_idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    arrays = dict(train=(train_x[train_idx], train_y[train_idx]), valid=(train_x[valid_idx], train_y[valid_idx]),
                  test=(test_x[test_idx], test_y[test_idx]))
    splits = {s: (x.to(device), y.to(device)) for s, (x, y) in arrays.items()}
    return ImageData(splits, classes, source, content_sha256(classes, *(t for pair in arrays.values() for t in pair)))


def _load_torchvision_cifar(folder, download):
    import torchvision
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # by torchvision's download, deepest first
    lock = folder / ".download.lock"
    ours = not lock.exists()  # left in a folder only beside the data it fetched
    try:
        with contextlib.ExitStack() as held:  # runs started together wait for one download (torchvision writes
            with contextlib.suppress(UserError):  # in place); a folder that cannot be written fetches nothing
                held.enter_context(advisory_lock(lock, "", str(folder), wait=True))
            train = torchvision.datasets.CIFAR10(folder, train=True, download=download)
            test = torchvision.datasets.CIFAR10(folder, train=False, download=False)
    except Exception as e:  # noqa: BLE001 - network, integrity and format errors alike
        for p in [lock] * ours + made:  # a failed download leaves neither its lock nor an empty folder behind
            with contextlib.suppress(OSError):
                p.unlink() if p == lock else p.rmdir()
        batches, archive = folder / "cifar-10-batches-py", folder / "cifar-10-python.tar.gz"
        found = (f"{batches} fails torchvision's checksums (incomplete or damaged)" if batches.is_dir() else
                 f"{archive} fails torchvision's checksum (incomplete or damaged)" if archive.exists() else
                 f"CIFAR-10 not found in {folder}")
        raise UserError(f"{found} and could not be downloaded ({reason(e)}); "
                        f"put cifar-10-python.tar.gz or cifar-10-batches-py/ there, or point --data_folder at "
                        f"an image folder tree train/<class>/*.jpg, test/<class>/*.jpg") from None
    to_tensor = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))  # noqa: E731
    return (to_tensor(train), torch.tensor(train.targets), to_tensor(test), torch.tensor(test.targets)), train.classes


def _list_images(folder):
    """(class names, [(image path, label)]): one class per visible sub-folder (not Jupyter's
    .ipynb_checkpoints); a class without images is refused, since it would shift every later label."""
    check(folder.is_dir(), f"{folder} is missing: an image folder tree holds train/<class>/* and test/<class>/*")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [(p, label) for label, c in enumerate(classes) for p in sorted((folder / c).iterdir())
             if not p.name.startswith(".")]
    nested = next((p for p, _ in found if p.is_dir()), None)  # torchvision's ImageFolder would read its images
    check(nested is None, f"{nested} is a folder inside a class folder; images are read from {folder}/<class>/* "
          f"only; move its images into the class folder, or the folder out")
    files = [(p, label) for p, label in found if p.suffix.lower() in IMAGE_EXTENSIONS]
    check(files, f"{folder} holds no images (expected {folder}/<class>/*.jpg)")
    empty = sorted(set(classes) - {classes[label] for _, label in files})
    check(not empty, f"{folder}: class folder{'s' * (len(empty) > 1)} without images: {', '.join(empty)}")
    return classes, files


def _fingerprint(files):
    h = hashlib.sha1()
    for p, label in files:
        try:
            st = p.stat()
        except OSError as e:  # a broken link, a file gone since the listing
            raise UserError(f"cannot read image {p}: {e.strerror or e}") from None
        h.update(f"{p.parent.name}/{p.name}:{st.st_size}:{st.st_mtime_ns}:{label}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


def _cache_paths(folder):
    """Beside the data, then in the user's cache: $XDG_CACHE_HOME where it is an absolute path (the XDG
    rule: an empty or relative one is ignored), else ~/.cache, else (no home folder) none."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    try:
        user_cache = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "vit-lm-study"
    except (RuntimeError, KeyError):  # HOME unset and a uid without a passwd entry
        return [folder / CACHE_NAME]
    key = hashlib.sha1(os.fsencode(folder.resolve())).hexdigest()[:16]
    return [folder / CACHE_NAME, user_cache / f"cifar10_{key}.npz"]


def _load_image_folder(folder):
    train_classes, train_files = _list_images(folder / "train")
    test_classes, test_files = _list_images(folder / "test")
    check(train_classes == test_classes, f"train and test classes differ in {folder}: "
          f"{sorted(set(train_classes) ^ set(test_classes))}")
    files = train_files + test_files
    fingerprint, jpeg = _fingerprint(files), any(p.suffix.lower() in (".jpg", ".jpeg") for p, _ in files)
    for path in _cache_paths(folder):  # decoded once, then read back in a second
        try:
            with np.load(path, allow_pickle=False) as d:
                arrays = tuple(torch.from_numpy(d[k]) for k in ("train_x", "train_y", "test_x", "test_y"))
                if str(d["fingerprint"]) == fingerprint and _cache_fits(arrays, train_files, test_files,
                                                                         len(train_classes)):
                    return arrays, train_classes, jpeg
        except Exception:  # noqa: BLE001, S112 - a missing or stale cache is simply rebuilt
            continue
    train_x, test_x = _decode(train_files), _decode(test_files)
    check(train_x.shape[1:] == test_x.shape[1:], f"train and test images differ in size in {folder}")
    train_y, test_y = (torch.tensor([label for _, label in files]) for files in (train_files, test_files))
    arrays = (train_x, train_y, test_x, test_y)
    for path in _cache_paths(folder):  # beside the data, else in the user's cache; never fatal
        if _save_cache(path, fingerprint, arrays):
            break
    return arrays, train_classes, jpeg


def _cache_fits(arrays, train_files, test_files, num_classes):
    """Whether a cache's arrays are what decoding would give: uint8 images, one per file, labels in range."""
    train_x, train_y, test_x, test_y = arrays
    return (train_x.dtype == test_x.dtype == torch.uint8 and train_x.dim() == test_x.dim() == 4
            and (len(train_x), len(train_y)) == (len(train_files),) * 2
            and (len(test_x), len(test_y)) == (len(test_files),) * 2
            and all(y.dtype == torch.int64 and (len(y) == 0 or 0 <= int(y.min()) <= int(y.max()) < num_classes)
                    for y in (train_y, test_y)))


def _save_cache(path, fingerprint, arrays):
    """Write the decoded images' cache; never fatal (on a full disk the next run decodes again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A folder without write bits is read-only by intent, even for root (who may write anyway).
        if not path.parent.stat().st_mode & 0o222 or not os.access(path.parent, os.W_OK):
            return False
        atomic_write(path, lambda f: np.savez(f, fingerprint=np.array(fingerprint), **{
            k: a.numpy() for k, a in zip(("train_x", "train_y", "test_x", "test_y"), arrays)}))
        return True
    except (OSError, UserError) as e:
        print(f"warning: the decoded images are not cached: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return False


def _decode(files):
    from PIL import Image
    images = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                deep = im.mode in ("I", "F") or im.mode.startswith("I;")  # PIL would clip them to 8 bits
                images.append(None if deep else np.asarray(im.convert("RGB")))
        except Exception as e:  # noqa: BLE001
            why = getattr(e, "strerror", None)  # the system refused it (its permissions): not a damaged image
            raise UserError(f"cannot {'read' if why else 'decode'} image {p}: {why or first_line(e)}") from None
        check(not deep, f"{p} has more than 8 bits per channel (mode {im.mode}); convert the images to 8-bit first")
    shapes = {im.shape for im in images}
    check(len(shapes) == 1, f"images in {files[0][0].parent.parent} differ in size: {sorted(shapes)[:3]}")
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())  # (N, C, H, W)
