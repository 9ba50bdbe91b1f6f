"""End-to-end slide training (seed 002, "Beyond MIL"): a tile encoder and a slide aggregator trained
jointly on K tiles per slide, on one process (`train`) or on 1 aggregator + N encoder processes with
torch.distributed (`distributed`), with the gradient-equivalence check between the two."""

from maga.e2e.data import BagDataset, SlideBag, TileBag, cohort_bags, slide_bag
from maga.e2e.sampling import part_slice, sample_tiles, split_counts
from maga.e2e.train import E2EConfig, E2EResult, train

__all__ = ["BagDataset", "E2EConfig", "E2EResult", "SlideBag", "TileBag", "cohort_bags", "part_slice",
           "sample_tiles", "slide_bag", "split_counts", "train"]
