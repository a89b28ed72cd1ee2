r"""Train a Vision Transformer on CIFAR-10 and log per-epoch metrics, the best model and test results.

    python train_vit.py --layers 4 --optimizer adamw
    python train_vit.py --layers 6 --block postnorm --epochs 50 --data_folder ./data/cifar10
    python train_vit.py --recipe improved --layers 6 --epochs 50   # runs.sh's vit_L6_adamw_improved_s42

Writes <log_dir>/<exp_id>/{config.json, metrics.csv, best.pt, summary.json}, and checkpoint.pt while
it runs (kept at the end with --keep_checkpoint).
`--data_folder` is an ImageFolder tree (train/<class>/*, test/<class>/*) or a folder for
torchvision's CIFAR-10 (downloaded there when missing).
"""
import dataclasses
import math

import torch.nn.functional as F

from augment import AUGMENTS, augment, mix, normalize
from config import TrainConfig, option, parse_config
from data import index_batches, load_cifar10
from engine import check_fits, train
from models import VisionTransformer, count_params
from utils import check, cli, epoch_generator, first_process_first, log


@dataclasses.dataclass
class Config(TrainConfig):
    layers: int = option(2, "number of transformer blocks", group="model")
    batch_size: int = option(128, "images per optimizer step", group="optimisation")
    lr: float = option(3e-4, "learning rate", group="optimisation")
    data_folder: str = option("./data/cifar10", "ImageFolder tree or torchvision CIFAR-10 folder", group="data",
                              role="context")
    embed_dim: int = option(256, "token width", group="model")
    hidden_dim: int = option(512, "MLP hidden width", group="model")
    num_heads: int = option(8, "attention heads", group="model")
    patch_size: int = option(4, "patch side in pixels", group="model")
    label_smoothing: float = option(0.0, "label smoothing of the training loss (evaluation stays plain)",
                                    group="optimisation")
    drop_path: float = option(0.0, "stochastic depth: the last block's drop rate, earlier blocks linearly less",
                              group="model")
    augment: str = option("reference", "training augmentation: reference (flip + resized crop), or strong "
                          "(also pad-4 translation and one TrivialAugment operation per image)", list(AUGMENTS),
                          group="data")
    mixup: float = option(0.0, "MixUp alpha (0: off); with --cutmix too, each batch uses one of the two", group="data")
    cutmix: float = option(0.0, "CutMix alpha (0: off)", group="data")

    def validate(self):
        super().validate()
        check(self.embed_dim % self.num_heads == 0,
              f"--embed_dim {self.embed_dim} is not divisible by --num_heads {self.num_heads}")
        check(32 % self.patch_size == 0,
              f"--patch_size must divide the image size 32, got {self.patch_size}")
        check(0 <= self.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(0 <= self.drop_path < 1, f"--drop_path must be in [0, 1), got {self.drop_path}")
        check(0 <= self.mixup < math.inf and 0 <= self.cutmix < math.inf,
              f"--mixup and --cutmix are Beta alphas >= 0, got {self.mixup} and {self.cutmix}")

    PREFIX = "vit"
    # Lee et al. (2021)'s small-dataset recipe, shortened to 50 epochs
    RECIPES = {"improved": dict(lr=1e-3, weight_decay=0.05, decay_exempt=True, scheduler="cosine", warmup_epochs=5.0,
                                min_lr=1e-5, label_smoothing=0.1, drop_path=0.1, augment="strong", mixup=0.8,
                                cutmix=1.0, ema=0.999, grad_clip=1.0, grad_norms=True)}


class ImageTask:
    """CIFAR-10 classification: augmented (and optionally mixed) shuffled batches for training, plain
    ones otherwise. A batch is (images, labels, labels_b, lam, count): the loss is
    lam * CE(labels) + (1 - lam) * CE(labels_b), with lam = 1 and labels_b = labels when unmixed."""
    metric, label, maximize, digits, unit = "acc", "accuracy", True, 4, "images"
    title, scoring, alike, warnings = "Vision Transformer (CIFAR-10)", None, None, ()

    def __init__(self, data, batch_size, seed, label_smoothing=0.0, augment="reference", mixup=0.0, cutmix=0.0):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.label_smoothing, self.augment, self.mixup, self.cutmix = label_smoothing, augment, mixup, cutmix

    def num_batches(self, split):
        return math.ceil(len(self.data.splits[split][1]) / self.batch_size)

    def batch_sizes(self, split):
        """The sizes of the split's batches: full ones, and a smaller last one where it does not divide."""
        return {self.batch_size, len(self.data.splits[split][1]) % self.batch_size or self.batch_size}

    def batches(self, split, epoch):
        images, labels = self.data.splits[split]
        train = split == "train"
        mixing = train and (self.mixup > 0 or self.cutmix > 0)
        shuffle = epoch_generator(self.seed, epoch, "shuffle") if train else None
        aug = epoch_generator(self.seed, epoch, "augment") if train else None
        mixer = epoch_generator(self.seed, epoch, "mix") if mixing else None
        for idx, _ in index_batches(len(labels), self.batch_size, shuffle, labels.device):
            x, y = images.index_select(0, idx), labels.index_select(0, idx)  # whole images, not element-wise
            x = augment(x, aug, policy=self.augment) if train else normalize(x)
            # Mixed on the global batch, before any split over processes: results do not depend on them.
            x, y_b, lam = mix(x, y, mixer, self.mixup, self.cutmix) if mixing else (x, y, 1.0)
            yield x, y, y_b, lam, len(idx)

    def loss(self, model, batch):
        images, labels, labels_b, lam, count = batch  # count: the whole batch's, though this may be a slice
        logits = model(images).float()
        smoothing = self.label_smoothing if model.training else 0.0  # valid and test losses stay comparable
        loss = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=smoothing)
        hits = logits.argmax(1)
        correct = (hits == labels).sum()
        if lam != 1.0:  # each image carries label mass lam and 1 - lam: the loss and accuracy split alike
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits, labels_b, reduction="sum",
                                                            label_smoothing=smoothing)
            correct = lam * correct + (1 - lam) * (hits == labels_b).sum()
        return loss, count, correct

    def metric_value(self, loss, accuracy):
        return accuracy


MODEL_ARGS = ("layers", "block", "embed_dim", "hidden_dim", "num_heads", "patch_size", "dropout", "drop_path")


def build_model(args):
    """The VisionTransformer from its saved arguments (config.json's model_args)."""
    return VisionTransformer(args["layers"], args["block"], args["embed_dim"], args["hidden_dim"], args["num_heads"],
                             args["patch_size"], num_classes=args["num_classes"], dropout=args["dropout"],
                             drop_path=args["drop_path"])


def build(cfg, device):
    with first_process_first():  # under torchrun one process downloads and caches, then the rest read
        data = load_cifar10(cfg.data_folder, device)
    sizes = {s: len(y) for s, (_, y) in data.splits.items()}
    log(f"data: {data.source}; " + ", ".join(f"{s} {n:,}" for s, n in sizes.items())
        + f"; {len(data.classes)} classes: {', '.join(data.classes)}")
    smallest = min(sizes, key=sizes.get)
    check(cfg.batch_size <= sizes[smallest], f"--batch_size {cfg.batch_size} is larger than the smallest split "
          f"({smallest}: {sizes[smallest]} image{'s' * (sizes[smallest] != 1)})")
    check(tuple(data.splits["train"][0].shape[1:]) == (3, 32, 32),
          f"expected 3 x 32 x 32 images, found {tuple(data.splits['train'][0].shape[1:])}")
    model_args = dict({k: getattr(cfg, k) for k in MODEL_ARGS}, num_classes=len(data.classes))
    check_fits(lambda n: build_model(dict(model_args, layers=n)), cfg.layers, device)
    model = build_model(model_args)
    log(f"model: ViT, {cfg.layers} {cfg.block} block{'s' * (cfg.layers > 1)}, {count_params(model):,} parameters")
    task = ImageTask(data, cfg.batch_size, cfg.seed, cfg.label_smoothing, cfg.augment, cfg.mixup, cfg.cutmix)
    return task, model, dict(task="vit", model_args=model_args, classes=data.classes, data_source=data.source,
                             data_kind="images", data_sha256=data.sha256, data_sizes=sizes), {}


@cli
def main(argv=None):
    return train(parse_config(Config, argv, __doc__), build)


if __name__ == "__main__":
    main()
