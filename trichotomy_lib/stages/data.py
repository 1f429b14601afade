"""Stage ``data``: the dataset, split patient-disjointly (DESIGN step 1)."""

from __future__ import annotations

from ..config import register_section
from ..data.build import build_dataset, validate_data_cfg
from ..data.imageset import ImageSet
from ..pipeline import Pipeline, StageContext, stage

SPLITS = ("train", "val", "test")

register_section("data")(lambda cfg: validate_data_cfg(cfg.get("data")))


@stage("data", keys=("seed", "data", "data_root"), version=4)
def data_stage(ctx: StageContext) -> None:
    """Build PhantomCXR (or read a file list) and write each split as an ImageSet."""
    # decoded images of a file list are cached once per run directory (keyed by the list's content)
    splits = build_dataset(ctx.config["data"], ctx.config["data_root"], seed=ctx.config["seed"],
                           cache_dir=ctx.pipeline.run_dir / "image_cache")
    for name, imageset in splits.items():
        imageset.save(ctx.out / name)


def load_splits(pipe: Pipeline, mmap: bool = False) -> dict[str, ImageSet]:
    """The dataset's splits (computed on first use, then read from the cache)."""
    path = pipe.get("data")
    return {name: ImageSet.load(path / name, mmap=mmap) for name in SPLITS if (path / name).exists()}
