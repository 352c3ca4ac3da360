"""BreedPredictor: every kind of input, batches, folders with true labels, galleries, endpoints."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf import images
from dogclf.errors import ConfigError, DataNotFoundError, InvalidRequestError, NotFittedError
from dogclf.labels import get_labels
from dogclf.serving import BreedPredictor, Prediction
from dogclf.serving.predictor import true_breed_of
from dogclf.serving.testing import make_artifact, synthetic_photo

torch.set_num_threads(1)
LABELS = ("Beagle", "Pug", "Golden_retriever")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("predictor") / "model", LABELS)


@pytest.fixture(scope="module")
def predictor(artifact):
    return BreedPredictor(artifact, k=2)


def test_every_input_kind_gives_the_same_prediction(predictor, tmp_path):
    data = synthetic_photo(160, 120, fmt="PNG", seed=5)
    path = tmp_path / "dog.png"
    path.write_bytes(data)
    by_path = predictor.predict(path)
    assert isinstance(by_path, Prediction) and by_path.breed in LABELS and len(by_path.top_k) == 2
    assert by_path.top_k[0].breed == by_path.breed and by_path.top_k[0].probability == by_path.probability
    assert by_path.top_k[0].probability >= by_path.top_k[1].probability
    assert predictor.predict(str(path)) == by_path
    assert predictor.predict(data) == by_path
    preprocessed = images.preprocess_image(data)
    for x in (preprocessed, preprocessed[None], torch.from_numpy(preprocessed)):
        same = predictor.predict(x)
        assert same.index == by_path.index and same.probability == pytest.approx(by_path.probability, abs=1e-5)
    image = Image.open(io.BytesIO(data))
    array = np.array(image.convert("RGB"))
    for x in (image, array, torch.from_numpy(array).permute(2, 0, 1)):
        assert predictor.predict(x) == by_path  # decoded photos are used as they are: the same numbers
    assert len(predictor.predict(path, k=3).top_k) == 3


def test_predict_batch_keeps_order_and_counts_array_images(predictor):
    bodies = [synthetic_photo(70, 50, seed=i) for i in range(5)]
    singles = [predictor.predict(b) for b in bodies]
    batch = predictor.predict_batch(bodies)
    assert [p.index for p in batch] == [p.index for p in singles]  # batched maths differs in the last bits only
    assert [p.probability for p in batch] == pytest.approx([p.probability for p in singles], abs=1e-5)
    stacked = images.collate(bodies[:3])
    batch = predictor.predict_batch([stacked, bodies[3]])
    assert len(batch) == 4 and [p.index for p in batch] == [p.index for p in singles[:4]]


def test_bad_inputs(predictor, tmp_path):
    with pytest.raises(DataNotFoundError):
        predictor.predict(tmp_path / "missing.jpg")
    with pytest.raises(InvalidRequestError) as info:
        predictor.predict(b"\xff\xd8\xff broken jpeg")
    assert info.value.code == "corrupt_image"
    with pytest.raises(ConfigError, match="predict_batch"):
        predictor.predict(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(ConfigError, match="cannot predict"):
        predictor.predict(12)
    with pytest.raises(ConfigError, match="shape"):
        predictor.predict(np.zeros((5, 5), np.float32))
    with pytest.raises(InvalidRequestError) as info:
        predictor.predict(synthetic_photo(), k=4)
    assert info.value.code == "bad_k"
    with pytest.raises(ConfigError):
        predictor.predict(synthetic_photo(), k=0)


@settings(max_examples=50, deadline=None)
@given(breed=st.sampled_from(get_labels("dogimages-133").names), number=st.integers(0, 99999),
       ext=st.sampled_from([".jpg", ".JPG", ".png"]))
def test_true_breed_from_file_name_prefix_and_dogimages_folder(breed, number, ext):
    labels = get_labels("dogimages-133")
    assert true_breed_of(f"/x/{breed.replace(' ', '_')}_{number:05d}{ext}", labels) == breed
    folder = labels.folder_name(breed)
    assert true_breed_of(f"/data/test/{folder}/IMG_{number}{ext}", labels) == breed


def test_no_true_breed_for_other_names():
    labels = get_labels("dogimages-133")
    for name in ("cat_01.jpg", "gecko_80.jpg", "dog1.png", "12345.jpg"):
        assert true_breed_of(name, labels) is None


def test_predict_folder_table_confusion_and_gallery(predictor, tmp_path):
    root = tmp_path / "photos"
    for i, breed in enumerate(LABELS):
        folder = root / "test" / f"{i + 1:03d}.{breed}"
        folder.mkdir(parents=True)
        for j in range(2):
            (folder / f"{breed}_{j}.jpg").write_bytes(synthetic_photo(60, 45, seed=10 * i + j))
    (root / "unlabelled.png").write_bytes(synthetic_photo(50, 50, fmt="PNG"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    (root / "notes.txt").write_text("not a photo")
    gallery = tmp_path / "results_inference"
    with pytest.raises(NotFittedError):
        predictor.table_
    table = predictor.predict_folder(root, gallery_dir=gallery)
    assert len(table) == 8 and set(table.columns) >= {"file", "true_breed", "breed", "probability", "correct",
                                                       "top_k", "error", "annotated"}
    broken = table.set_index("file").loc["broken.jpg"]
    assert pd.isna(broken["breed"]) and "corrupt" in broken["error"]
    ok = table[table["error"].isna()]
    assert len(ok) == 7 and ok["breed"].isin(LABELS).all()
    labelled = ok[ok["true_breed"].notna()]
    assert len(labelled) == 6 and (labelled["correct"] == (labelled["true_breed"] == labelled["breed"])).all()
    assert pd.isna(ok.set_index("file").loc["unlabelled.png", "correct"])
    confusion = predictor.confusion_matrix_
    assert int(confusion.values.sum()) == 6
    for true, pred, count in predictor.most_confused_:
        assert true != pred and confusion.loc[true, pred] == count
    assert sum(c for *_, c in predictor.most_confused_) == int((~labelled["correct"].astype(bool)).sum())
    written = sorted(p.name for p in gallery.iterdir())
    assert len(written) == 7
    for name in written:
        match = re.match(r"predicted_(.+?)_(test_.+|unlabelled\.png)$", name)
        assert match and match.group(1) in LABELS
    row = ok.iloc[0]
    with Image.open(row["annotated"]) as annotated, Image.open(root / row["file"]) as original:
        assert annotated.size == original.size
        assert np.asarray(annotated)[:5].mean() != pytest.approx(np.asarray(original.convert("RGB"))[:5].mean())
    with pytest.raises(DataNotFoundError):
        predictor.predict_folder(tmp_path / "nowhere")


@pytest.mark.slow
def test_predictor_through_a_local_endpoint_matches_in_process(artifact, predictor):
    from dogclf.serving import EndpointDeployer

    bodies = [synthetic_photo(80, 60, seed=i) for i in range(6)]
    with EndpointDeployer(max_batch_size=4, max_delay_ms=20, backend="local").deploy(artifact) as endpoint:
        remote = BreedPredictor(endpoint, k=2, concurrency=3)
        got = remote.predict_batch(bodies)
        assert remote.predict(bodies[0]).breed == got[0].breed
        photo = Image.open(io.BytesIO(synthetic_photo(80, 60, fmt="JPEG", seed=9)))
        sent = remote.predict(photo)  # a decoded photo travels as lossless PNG: the same pixels
    here = predictor.predict(photo)
    assert sent.index == here.index and sent.probability == pytest.approx(here.probability, abs=1e-4)
    expected = predictor.predict_batch(bodies)
    assert [p.index for p in got] == [p.index for p in expected]
    for g, e in zip(got, expected):
        assert g.probability == pytest.approx(e.probability, abs=1e-4)


@pytest.mark.shared
@pytest.mark.slow
def test_seed_photos_and_pet_images(seed_photos, pet_images, tmp_path):
    artifact = make_artifact(tmp_path / "model133", "dogimages-133")
    predictor = BreedPredictor(artifact, k=3, batch_size=8)
    seed_table = predictor.predict_folder(seed_photos, gallery_dir=tmp_path / "seed_gallery")
    assert len(seed_table) == 7 and seed_table["error"].isna().all()  # RGBA PNGs and large JPEGs alike
    assert seed_table["true_breed"].isna().all() and predictor.confusion_matrix_ is None
    names = {p.name for p in (tmp_path / "seed_gallery").iterdir()}
    assert {re.sub(r"^predicted_.+?_(dog\d\.\w+)$", r"\1", n) for n in names} == set(seed_table["file"])

    pets = predictor.predict_folder(pet_images, gallery_dir=tmp_path / "pet_gallery")
    assert len(pets) == 40 and pets["error"].isna().all()
    assert pets["true_breed"].notna().sum() == 30  # 30 dogs of 16 breeds, 10 other animals
    assert pets.loc[pets["file"] == "Golden_retriever_05182.jpg", "true_breed"].item() == "Golden_retriever"
    assert predictor.confusion_matrix_.shape[0] == 16
    assert len(list((tmp_path / "pet_gallery").iterdir())) == 40


def test_two_models_with_different_preprocessing_share_a_process(tmp_path, predictor):
    from dogclf.models import ResNetBreedModel

    small = ResNetBreedModel(list(LABELS), backbone="resnet18", weights=None,
                             preprocess={"resize": 144, "crop": 128}).build().save(tmp_path / "small")
    small_predictor = BreedPredictor(small)
    body = synthetic_photo(90, 70)
    assert small_predictor.predict(body).breed in LABELS
    assert predictor.predict(body).breed in LABELS  # still 224 px for the first model, loaded earlier
    assert small_predictor.predict(body).breed in LABELS
    assert small_predictor.endpoint.model.crop == 128 and predictor.endpoint.model.crop == 224


def test_large_batches_are_processed_in_chunks_in_order(artifact):
    small = BreedPredictor(artifact, batch_size=2)  # chunks of 64 inputs
    bodies = [synthetic_photo(32, 32, seed=i % 4) for i in range(70)]
    got = small.predict_batch(bodies)
    firsts = small.predict_batch(bodies[:4])
    assert len(got) == 70 and [p.index for p in got[64:68]] == [p.index for p in firsts]
    assert [p.probability for p in got[64:68]] == pytest.approx([p.probability for p in firsts], abs=1e-5)
    assert len({round(p.probability, 6) for p in firsts}) == 4  # four different photos, four different answers
