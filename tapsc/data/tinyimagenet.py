"""TinyImageNet from the official archive's layout (tiny-imagenet-200.zip, unpacked):

    <root>/tiny-imagenet-200/wnids.txt                 class order, one wnid a line
    <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <root>/tiny-imagenet-200/val/images/*.JPEG
    <root>/tiny-imagenet-200/val/val_annotations.txt   "<file>\t<wnid>\t<box...>"

``<root>`` may also be the tiny-imagenet-200 folder itself. The official test split
has no labels, so the validation split serves as the test set (as in the paper).
Images are decoded lazily with torchvision's image loader (PIL) and converted to RGB
(a few are greyscale), giving (3, 64, 64) tensors in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader
from torchvision.transforms.functional import to_tensor

from tapsc.data.base import loader, missing_dataset, unreadable_dataset

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"


class ImageFiles(Dataset):
    """A list of (image path, label), decoded on access."""

    def __init__(self, samples: list[tuple[Path, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = default_loader(str(path)).convert("RGB")
        except OSError as error:
            raise unreadable_dataset("TinyImageNet", path, error) from None
        return to_tensor(image), label


def _base(root: Path) -> Path:
    for base in (root / FOLDER, root):
        if (base / "wnids.txt").is_file():
            return base
    raise missing_dataset("TinyImageNet", root / FOLDER, URL,
                          f"{root / FOLDER}/wnids.txt, train/<wnid>/images/*.JPEG and "
                          "val/val_annotations.txt with val/images/*.JPEG (unzip the archive into "
                          f"{root})")


def _train_samples(base: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    samples = []
    for wnid, label in index.items():
        folder = base / "train" / wnid / "images"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not files:
            raise unreadable_dataset("TinyImageNet", folder, ValueError(f"no images for class {wnid}"))
        samples.extend((path, label) for path in files)
    return samples


def _val_samples(base: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise unreadable_dataset("TinyImageNet", annotations, FileNotFoundError("missing annotations"))
    samples = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise unreadable_dataset("TinyImageNet", annotations,
                                     ValueError(f"line {number} names no class of wnids.txt: {line!r}"))
        samples.append((base / "val" / "images" / fields[0], index[fields[1]]))
    return samples


@loader("tinyimagenet")
def load_tinyimagenet(root: Path, train: bool) -> ImageFiles:
    """TinyImageNet train, or its labelled val split as the test set."""
    base = _base(root)
    wnids = [w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()]
    index = {wnid: label for label, wnid in enumerate(wnids)}
    return ImageFiles(_train_samples(base, index) if train else _val_samples(base, index))
