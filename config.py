"""Settings as dataclasses that become command-line flags: `option` declares one, `parse_config`
builds the argparse parser (flags grouped in --help) and validates, and `TrainConfig` holds what
both trainers share. Each trainer subclasses it with its own defaults.

    >>> cfg = parse_config(TrainConfig, ["--layers", "4"])
"""
import argparse
import dataclasses
import difflib
import hashlib
import math
import re
import textwrap
from pathlib import Path

from optim import OPTIMIZERS
from utils import UserError, check


ROLES = {
    "setting": "changes what the run computes: compared on resume and between runs, named where not the default",
    "context": "does not change what the run computes: may differ on resume, never named or compared",
    "seed": "the replicate: named as _s<seed>, compared on resume, averaged over between runs",
    "data": "a setting named and compared on resume by the data it resolves to, not by its own value",
}


def option(default, help, choices=None, group="run and output", role="setting", only_logs=False):
    """A dataclass field that becomes a command-line flag, shown under `group` in --help; its role
    (ROLES) says how resumes, run names and the report treat it. A setting that only_logs changes what
    the run writes, never a number it computes: the report compares its runs, the sweep sees twins."""
    assert role in ROLES, role
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                                        "role": role, "only_logs": only_logs})


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block; a misspelt flag's likely meaning
        given = message.removeprefix("unrecognized arguments:") if message.startswith("unrecognized") else ""
        unknown = re.findall(r"(?<!\S)--?[A-Za-z][\w-]*", given)  # --flag, --flag=value; not a value such as -1
        flags = [flag for action in self._actions for flag in action.option_strings]
        near = [m[0] for flag in unknown if (m := difflib.get_close_matches(flag, flags, 1, 0.75))]
        # raised, not printed: the CLI wrapper says it once, from the first of several processes
        raise UserError(message + f"; did you mean {', '.join(near)}?" * bool(near) + " (see --help)")


def _number(kind):
    def parse(text):
        value = kind(text)
        if kind is int and abs(value) >= 2 ** 63:
            raise argparse.ArgumentTypeError(f"{text} is out of range")
        if kind is float and value != value:
            raise argparse.ArgumentTypeError("nan is not a number")
        return value
    parse.__name__ = kind.__name__
    return parse


GROUPS = ("model", "optimisation", "data", "run and output", "performance")
NAME = r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*"  # a run's name: a folder, a table row, a line of the sweep's list
REPORT = "report"  # the folder plot.py writes into, beside the runs


def parse_config(cls, argv=None, description=None):
    """Build argparse from the dataclass `cls` (one flag per field, grouped), parse, validate. A
    `--recipe` replaces the defaults of the settings it names; flags given explicitly still win."""
    names = ["reference", *cls.RECIPES]
    pre = Parser(add_help=False)
    pre.add_argument("--recipe", default="reference", choices=names)
    recipe = cls.RECIPES.get(pre.parse_known_args(argv)[0].recipe, {})
    recipes = "".join("\n" + textwrap.fill(f"--recipe {name}: " + " ".join(flag_text(k, v) for k, v in values.items()),
                                            100, initial_indent="  ", subsequent_indent="      ")
                      for name, values in cls.RECIPES.items())
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=f"recipes (defaults that explicit flags override):{recipes}" if recipes else None)
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        where = groups[meta.get("group", "run and output")]
        default = recipe.get(f.name, f.default)
        if f.type in (bool, "bool"):
            where.add_argument(f"--{f.name}", action="store_true", default=default, help=meta.get("help"))
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        choices = names if f.name == "recipe" else meta.get("choices")
        shown = f" (default: {default})" if default not in ("", None) else ""
        where.add_argument(f"--{f.name}", type=_number(kind) if kind in (int, float) else kind, default=default,
                           choices=choices, help=f"{meta.get('help', '')}{shown}")
    cfg = cls(**vars(parser.parse_args(argv)))
    cfg.validate()
    return cfg


def flag_text(name, value):
    return f"--{name}" if value is True else f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"


@dataclasses.dataclass
class TrainConfig:
    """Settings both trainers share. Each script subclasses it with its own defaults and fields."""
    layers: int = option(2, "recurrent layers or transformer blocks", group="model")
    block: str = option("prenorm", "transformer block: LayerNorm before (pre) or after (post) the residual",
                        ["prenorm", "postnorm"], group="model")
    dropout: float = option(0.0, "dropout probability", group="model")
    optimizer: str = option("adamw", "sgd: plain SGD; momentum: SGD with momentum; adam: Adam without weight "
                            "decay; adamw: AdamW", list(OPTIMIZERS), group="optimisation")
    batch_size: int = option(128, "examples (windows or images) per optimizer step", group="optimisation")
    epochs: int = option(10, "passes over the training split", group="optimisation", role="context")
    lr: float = option(3e-4, "learning rate", group="optimisation")
    momentum: float = option(0.9, "momentum of the 'momentum' optimizer", group="optimisation")
    weight_decay: float = option(5e-4, "weight decay (sgd, momentum, adamw; adam uses none)", group="optimisation")
    scheduler: str = option("constant", "learning rate after the warmup: constant, or cosine decay to --min_lr "
                            "(both per step)", ["constant", "cosine"], group="optimisation")
    warmup_epochs: float = option(0.0, "linear warmup from lr/steps to lr over this many epochs (per step)",
                                  group="optimisation")
    min_lr: float = option(0.0, "the cosine schedule's final learning rate", group="optimisation")
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0: off)", group="optimisation")
    ema: float = option(0.0, "keep an exponential moving average of the weights with this decay per step "
                        "(e.g. 0.999; 0: off), evaluated and logged beside the model", group="optimisation")
    decay_exempt: bool = option(False, "no weight decay on biases, LayerNorm weights, position embeddings and the "
                                "CLS token (as DeiT, timm and nanoGPT; the reference decayed every parameter)",
                                group="optimisation")
    seed: int = option(42, "seed of every random generator", group="optimisation", role="seed")
    recipe: str = option("reference", "the defaults to start from: the reference report's, or a stronger recipe "
                         "(listed below)", group="optimisation")
    data_folder: str = option("./data", "dataset folder", group="data", role="context")
    exp_id: str = option("", "run name; default: derived from the settings", role="context")
    log_dir: str = option("logs", "folder that holds one sub-folder per run", role="context")
    grad_norms: bool = option(False, "log each layer's gradient norm (mean over the epoch's steps, and the "
                              "first step as epoch 0) to grad_norms.csv", only_logs=True)
    limit_batches: int = option(0, "at most this many batches per split and epoch (0: all), for smoke runs")
    no_progress: bool = option(False, "no progress bars", role="context")
    resume: bool = option(False, "continue the run in <log_dir>/<exp_id> from its checkpoint", role="context")
    overwrite: bool = option(False, "replace an existing run of the same name with a new one (the old one is kept "
                             "until the new one has saved its first epoch)", role="context")
    keep_checkpoint: bool = option(False, "keep checkpoint.pt when the run finishes, so that it can be extended "
                                   "with --resume --epochs N (best weights and logs stay either way)", role="context")
    device: str = option("auto", "auto picks CUDA when there is one", ["auto", "cpu", "cuda"], group="performance",
                         role="context")
    precision: str = option("auto", "auto: bf16 on GPUs that run it natively (compute capability 8.0+), fp16 "
                            "with loss scaling on older GPUs, fp32 on CPU", ["auto", "fp32", "bf16", "fp16"],
                            group="performance")
    compile: bool = option(False, "torch.compile the model; the warm-up is timed apart from the epochs",
                           group="performance", role="context")

    RECIPES = {}  # name -> the settings it changes (each trainer's own)
    PREFIX = "run"  # the default name's start, formatted with the settings
    NAMED = ("model", "layers", "optimizer", "recipe", "seed")  # spelled out in every default name
    DATA_KIND = "images"  # the data of the reference report, not named in default names

    @classmethod
    def with_role(cls, *roles):
        """The names of the settings whose option() has one of these roles (ROLES)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("role", "setting") in roles)

    @classmethod
    def only_logs(cls):
        """The settings that change what a run writes, never a number it computes (option's only_logs)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("only_logs"))

    @staticmethod
    def fixed_epochs(saved):
        """The epochs a run of this saved config.json must keep on resume, or None: a cosine schedule's
        rate at each step depends on them, so more or fewer would make it no run of either."""
        return saved.get("epochs") if saved.get("scheduler") == "cosine" else None

    def data_kind(self):
        """What the data are, as --data_format and --data_folder resolve them (a name's part)."""
        return self.DATA_KIND

    def validate(self):
        # every count and width of the model too: a width of 0 builds a model that trains to chance
        sizes = [f.name for f in dataclasses.fields(self)
                 if f.metadata.get("group") == "model" and f.type in (int, "int")]
        for name in ("batch_size", "epochs", *sizes):
            check(getattr(self, name) >= 1, f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in sizes:  # where torch's sizes overflow, or a loop over layers would run for days
            check(getattr(self, name) < 2 ** 31, f"--{name} {getattr(self, name)} is beyond any model")
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr", "grad_clip", "dropout", "momentum"):
            check(math.isfinite(getattr(self, name)), f"--{name} must be a finite number, got {getattr(self, name)}")
        check(self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        check(self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.limit_batches >= 0, f"--limit_batches must be >= 0, got {self.limit_batches}")
        recipe = self.RECIPES.get(self.recipe, {}).get("warmup_epochs") == self.warmup_epochs  # not given: whose?
        check(0 <= self.warmup_epochs <= self.epochs, f"--warmup_epochs must be in [0, --epochs], got "
              f"{self.warmup_epochs} with --epochs {self.epochs}" + f" (--recipe {self.recipe} warms up for "
              f"{self.warmup_epochs:g} epochs unless --warmup_epochs says otherwise)" * recipe)
        check(0 <= self.min_lr <= self.lr, f"--min_lr must be in [0, --lr], got {self.min_lr}")
        check(self.grad_clip >= 0, f"--grad_clip must be >= 0, got {self.grad_clip}")
        check(0 <= self.ema < 1, f"--ema must be a decay in [0, 1), got {self.ema}")
        check(not (self.resume and self.overwrite), "--resume and --overwrite exclude each other")
        check(self.exp_id == "" or re.fullmatch(NAME, self.exp_id), f"--exp_id {self.exp_id!r} is not a plain name: "
              f"letters, digits and -_.=+, not starting with -.=+ (it names a folder and a table row)")
        check(self.exp_id != REPORT, f"--exp_id {REPORT} is the name of plot.py's report folder; choose another")
        check(len(self.exp_id.encode()) <= 200, f"--exp_id is {len(self.exp_id.encode())} bytes long; file systems "
              f"take at most 255 and the run's files need the rest: give a name of at most 200")
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        for name in ("log_dir", "data_folder"):  # not this one in silence: `--data_folder $DATA`, DATA unset
            check(getattr(self, name) != "", f"--{name} is empty; give a folder (. for this one)")

    def unused(self):
        """The settings this configuration does not use, each with why: {name: reason}."""
        takes = OPTIMIZERS[self.optimizer][1]
        uses = dict(momentum=("momentum" in takes, "only --optimizer momentum has momentum"),
                    weight_decay=("weight_decay" in takes, f"--optimizer {self.optimizer} has none, as in the "
                                  "reference (adamw has)"),
                    decay_exempt=("weight_decay" in takes and self.weight_decay > 0, "nothing is weight-decayed"),
                    min_lr=(self.scheduler == "cosine", "only --scheduler cosine decays to it"))
        return {name: why for name, (used, why) in uses.items() if not used}

    def ignored(self):
        """A line for each setting given a value this configuration does not use (its name keeps it)."""
        defaults, recipe = type(self)(), self.RECIPES.get(self.recipe, {})
        return [f"{flag_text(name, value)}{f' (--recipe {self.recipe})' * (recipe.get(name) == value)} changes "
                f"nothing here: {why}" for name, why in self.unused().items()
                if (value := getattr(self, name)) != getattr(defaults, name)]

    def default_exp_id(self):
        """The run's name, the sweep's too: <PREFIX>_L<layers>_<optimizer>, the recipe, every setting
        that differs from the recipe's default, the data's kind where it is not the report's, _s<seed>."""
        defaults = dataclasses.replace(type(self)(), **self.RECIPES.get(self.recipe, {}))

        def text(f, value):
            if isinstance(value, bool):
                return f.name  # a flag can only be turned on (store_true), never off
            if f.metadata.get("choices"):
                return value
            # a file by its stem, with what a run name may not hold as -
            return f"{f.name}-{re.sub(r'[^A-Za-z0-9_.=+-]', '-', Path(value).stem)}" if isinstance(value, str) \
                else f"{f.name}{value:g}"
        head = [self.PREFIX.format(**dataclasses.asdict(self)), f"L{self.layers}", self.optimizer]
        head += [self.recipe] * (self.recipe != "reference")
        unnamed = self.NAMED + self.with_role("context", "data")
        rest = [text(f, getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in unnamed and getattr(self, f.name) != getattr(defaults, f.name)]
        kind = self.data_kind()  # looks at the data folder: once
        rest += [kind] * (kind != self.DATA_KIND)
        name = "_".join(head + rest + [f"s{self.seed}"])
        if len(name.encode()) > 120:  # file systems take 255 bytes: the main settings and a hash of the rest
            name = "_".join(head + [hashlib.sha1("_".join(rest).encode()).hexdigest()[:10], f"s{self.seed}"])
        return name

    def naming(self):
        """What config.json says of the run's name and settings, so readers need no list of their own:
        the configuration's name (its seeds share it), the settings, those changed from the report's
        defaults, the keys that are not settings, those that may differ on resume and those that only log."""
        defaults, settings = type(self)(), self.with_role("setting")
        changed = {name: getattr(self, name) for name in settings if getattr(self, name) != getattr(defaults, name)}
        return dict(configuration=re.sub(rf"_s{self.seed}(?=_|$)", "", self.exp_id), changed=changed,
                    settings=list(settings), not_settings=list(self.with_role("context", "seed")),
                    may_differ_on_resume=list(self.with_role("context")), only_logs=list(self.only_logs()))
