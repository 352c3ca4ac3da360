"""Steps 5 and 6: deploy an endpoint with :class:`dogclf.serving.EndpointDeployer`, predict with
:class:`dogclf.serving.BreedPredictor`, tear it down.

The seed's ``PyTorchModel(...).deploy()`` plus its preprocess-and-predict loop that saved
``results_inference/predicted_<Breed>_<file>``. The endpoint runs the same inference handler locally (an HTTP
server on 127.0.0.1 with dynamic batching) and on SageMaker; the predictor sends the raw photo bytes and gets
breeds back; leaving the ``with`` block deletes the endpoint::

    python examples/deploy_and_predict.py --artifact runs/train/backend/jobs/<job>/model
    python examples/deploy_and_predict.py                  # an untrained model stands in (fast)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from dogclf.images import is_image_file
from dogclf.serving import BreedPredictor, EndpointDeployer

SEED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "test-photos-of-dogs"


def stand_in_model(path: Path) -> Path:
    """An untrained 133-breed resnet18 artifact (random weights: the breeds it names are meaningless)."""
    from dogclf.models import ResNetBreedModel

    model = ResNetBreedModel("dogimages-133", backbone="resnet18", weights=None,
                             preprocess={"resize": 64, "crop": 56}).build()
    return model.save(path)


def photos_folder(out: Path) -> Path:
    if SEED_PHOTOS.is_dir():
        return SEED_PHOTOS
    import numpy as np
    from PIL import Image

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"dog{i + 1}.jpg")
    print(f"../shared is absent: predicting generated images in {folder} instead of the seed's photos")
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/serve"), help="folder for the outputs")
    p.add_argument("--artifact", default=None, help="artifact folder or model.tar.gz (default: a stand-in)")
    p.add_argument("--photos", type=Path, default=None, help="folder of photos (default: the seed's)")
    p.add_argument("--tiny", action="store_true", help="accepted for symmetry with the other examples (CI)")
    args = p.parse_args(argv)

    artifact = args.artifact or stand_in_model(args.out / "model")
    photos = args.photos or photos_folder(args.out)
    first = sorted(f for f in photos.iterdir() if is_image_file(f))[0]

    deployer = EndpointDeployer(max_batch_size=8, max_delay_ms=5)
    with deployer.deploy(artifact) as endpoint:     # deleted when the block ends
        print(f"endpoint {endpoint.name} at {endpoint.url}")
        predictor = BreedPredictor(endpoint, k=3)

        prediction = predictor.predict(first)                       # one photo: path, bytes, PIL image, array
        print(f"{first.name}: {prediction}  top 3: {[s.display_name for s in prediction.top_k]}")

        with tqdm(total=None, desc="predict folder", bar_format="{desc} {elapsed}"):
            table = predictor.predict_folder(photos, args.out / "gallery")
        print(table[["file", "display_name", "probability", "annotated"]].to_string(index=False))
    print(f"endpoint deleted; gallery in {args.out / 'gallery'}")


if __name__ == "__main__":
    main()
