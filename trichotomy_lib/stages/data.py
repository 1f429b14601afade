"""Stage ``data``: the dataset, split patient-disjointly (DESIGN step 1)."""

from __future__ import annotations

from ..data.build import build_dataset
from ..data.imageset import ImageSet
from ..pipeline import Pipeline, StageContext, stage

SPLITS = ("train", "val", "test")


@stage("data", keys=("seed", "data", "data_root"), version=2)  # 2: PhantomCXR identity cues
def data_stage(ctx: StageContext) -> None:
    """Build PhantomCXR (or read a file list) and write each split as an ImageSet."""
    splits = build_dataset(ctx.params["data"] or {}, ctx.params["data_root"], seed=ctx.params["seed"])
    for name, imageset in splits.items():
        imageset.save(ctx.out / name)


def load_splits(pipe: Pipeline, mmap: bool = False) -> dict[str, ImageSet]:
    """The dataset's splits (computed on first use, then read from the cache)."""
    path = pipe.get("data")
    return {name: ImageSet.load(path / name, mmap=mmap) for name in SPLITS if (path / name).exists()}
