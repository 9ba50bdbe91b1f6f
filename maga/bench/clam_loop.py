"""The CLAM-style extraction loop that `maga bench extract --baseline` times against ours, written from
CLAM's description (not its code): its dataset and the batch and reader processes it runs with."""

from __future__ import annotations


class ClamStylePatches:
    """The CLAM loop's dataset, written from its description: OpenSlide read_region of every 256 px
    patch at level 0, RGB, PIL-resized to 224 px, ToTensor and ImageNet normalisation."""

    def __init__(self, slide: str, coords, size: int = 256, target: int = 224):
        self.slide, self.coords, self.size, self.target = slide, coords, size, target
        self._osr = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int):
        import openslide
        from torchvision.transforms import functional as TF

        if self._osr is None:
            self._osr = openslide.OpenSlide(self.slide)
        x, y = (int(v) for v in self.coords[i])
        img = self._osr.read_region((x, y), 0, (self.size, self.size)).convert("RGB")
        img = img.resize((self.target, self.target))
        return TF.normalize(TF.to_tensor(img), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def clam_loop_settings(workers: int, device: str) -> dict[str, int]:
    """What the CLAM-style loop runs with, as CLAM's feature extraction does: on CUDA batch 256 and 8
    DataLoader processes (CLAM's defaults there); on CPU batch 64 and our reader count. Each DataLoader
    process runs one torch thread (PyTorch sets it), so processes x threads never oversubscribe the cores."""
    if device.startswith("cuda"):
        return {"batch_size": 256, "workers": max(1, min(8, workers))}
    return {"batch_size": 64, "workers": workers}
