"""Step 1: stage a dataset with :class:`dogclf.data.DatasetStager`.

The seed notebook downloaded ``dogImages.zip``, unzipped it and ran ``aws s3 sync``. Here one ``run()`` gets the
data (folder, zip, URL or S3), validates it (three splits, the same classes in each, every image decodes) and puts
it at its target with a manifest; a second run with the same source is a no-op::

    python examples/stage_dataset.py                                   # a synthetic dataset, staged locally
    python examples/stage_dataset.py --data ~/Downloads/dogImages.zip --labels dogimages-133
    python examples/stage_dataset.py --data https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip \\
        --target s3://my-bucket/dogImages --labels dogimages-133
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from dogclf.data import DatasetStager, make_synthetic_dataset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/stage"), help="folder for the outputs")
    p.add_argument("--data", default=None, help="folder, .zip, URL or s3:// prefix (default: synthetic)")
    p.add_argument("--target", default=None, help="folder or s3://bucket/prefix (default: <out>/dogImages)")
    p.add_argument("--labels", default=None, help="label set the classes must match, e.g. dogimages-133")
    p.add_argument("--tiny", action="store_true", help="the smallest synthetic dataset (CI)")
    args = p.parse_args(argv)

    source = args.data
    if source is None:
        source = make_synthetic_dataset(args.out / "synthetic", n_classes=3 if args.tiny else 10,
                                        per_class=2 if args.tiny else 8, image_size=32 if args.tiny else 64,
                                        overwrite=True)
        print(f"made a synthetic dataset of {source.n_images()} images at {source.root}")

    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase not in bars:
            bars[phase] = tqdm(total=total, desc=phase, unit="file")
        bar = bars[phase]
        bar.n = done
        bar.refresh()

    stager = DatasetStager(source, args.target or args.out / "dogImages", labels=args.labels, progress=progress)
    staged = stager.run()
    for bar in bars.values():
        bar.close()

    print(f"staged {staged.n_images} images of {len(staged.labels)} breeds at {staged.uri}"
          f"{' (already there: nothing to do)' if staged.noop else ''}")
    for split, uri in staged.channels.items():
        print(f"  channel {split:5s} {uri}  ({sum(staged.counts[split].values())} images)")
    print(f"  manifest {staged.manifest_uri}")
    print(f"  first breeds: {', '.join(stager.labels_.display_name(i) for i in range(min(3, len(staged.labels))))}")
    # A training job takes these channels as they are: TrainingJobSpec(channels=staged.channels, ...)


if __name__ == "__main__":
    main()
