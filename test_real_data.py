"""The test accuracy train_vit.py reports on the real CIFAR-10, against an evaluation that shares none
of its data code: torchvision's own reader. Skipped without the data (the other tests need none);
after a first run has downloaded it, `python -m unittest test_real_data` checks the pipeline on it.
The LM's exact perplexity is checked on fixtures (test_train.TestExactMetrics)."""
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import engine
import train_vit
from data import load_cifar10

HERE = Path(__file__).resolve().parent
# CIFAR-10 where the trainer puts it (torchvision's batches or image folders), and a JPEG copy beside the project
FOLDERS = [f for f in (HERE / "data" / "cifar10", HERE.parent / "shared" / "data" / "cifar10-jpeg")
           if (f / "test").is_dir() or (f / "cifar-10-batches-py").is_dir()]
CPU = torch.device("cpu")


def plain_test_set(folder):
    """CIFAR-10's test images as torchvision reads them, normalised as is usual for CIFAR-10 (the
    statistics written out, not imported from augment: the check shares nothing with the trainer)."""
    import torchvision
    from torchvision import transforms
    to_input = transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    if (folder / "test").is_dir():
        return torchvision.datasets.ImageFolder(folder / "test", to_input)
    return torchvision.datasets.CIFAR10(folder, train=False, transform=to_input)


@unittest.skipUnless(FOLDERS, "no CIFAR-10 in ./data/cifar10: train_vit.py downloads it there")
class TestCifarTestAccuracy(unittest.TestCase):
    def test_equals_torchvisions_over_all_10000_test_images(self):
        for folder in FOLDERS:
            with self.subTest(folder=str(folder)):
                self.check(folder)

    def check(self, folder):
        with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, XDG_CACHE_HOME=cache):
            images = load_cifar10(folder, CPU, download=False)  # decoded afresh, where no cache is beside the data
        self.assertEqual({s: len(y) for s, (_, y) in images.splits.items()}, dict(train=45_000, valid=5_000,
                                                                                    test=10_000))
        torch.manual_seed(0)
        model = train_vit.build_model(dict(layers=1, block="prenorm", embed_dim=32, hidden_dim=64, num_heads=2,
                                           patch_size=4, dropout=0.0, drop_path=0.0, num_classes=10)).eval()
        ours = engine.run_epoch(model, train_vit.ImageTask(images, 500, seed=0), "test")

        plain = plain_test_set(folder)
        self.assertEqual(plain.classes, images.classes)
        loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(plain, batch_size=500):
                logits = model(x)
                loss += F.cross_entropy(logits.double(), y, reduction="sum").item()
                correct += int((logits.argmax(1) == y).sum())
        self.assertEqual(ours["count"], 10_000)
        self.assertEqual(round(ours["metric"] * 10_000), correct)
        self.assertAlmostEqual(ours["loss"], loss / 10_000, places=5)


if __name__ == "__main__":
    unittest.main()
