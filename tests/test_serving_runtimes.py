"""Inference runtimes: export, int8 calibration, agreement with the eager model, refusal, and optional installs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dogclf.errors import (
    AgreementError,
    ArtifactError,
    ConfigError,
    DataNotFoundError,
    MissingExtraError,
    RuntimeExportError,
)
from dogclf.serving import BreedPredictor, EndpointDeployer, ServerConfig, handler, runtimes
from dogclf.serving.testing import make_artifact, synthetic_photo

torch.set_num_threads(1)
ort = pytest.importorskip("onnxruntime", reason="the ONNX runtimes need dogclf[onnx]")
export = pytest.importorskip("dogclf.serving.export")
LABELS = [f"breed_{i}" for i in range(10)]


def _served_logits(model, bodies):
    """Logits of encoded photos through the handler, as an endpoint computes them."""
    batch = torch.cat([handler.input_fn(body, "image/jpeg").batch for body in bodies])
    return np.concatenate([handler.predict_fn(handler.InferenceInput(batch=batch[i:i + 16]), model).logits.numpy()
                           for i in range(0, len(batch), 16)])


def _agreement(reference, logits):
    return float(np.mean(reference.argmax(1) == logits.argmax(1))), float(np.abs(reference - logits).max())


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from dogclf.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("rt") / "data", n_classes=10, image_size=96,
                                  per_class={"train": 8, "valid": 4, "test": 4})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small artifact with its fp32 ONNX export (checked on synthetic pattern images: no calibration photos)."""
    folder = make_artifact(tmp_path_factory.mktemp("rt") / "model", LABELS)
    export.export_runtimes(folder, "onnx")
    return folder


def _photos(shared, data):
    """(calibration source, held-out encoded photos): real photos when ../shared is there, else synthetic ones."""
    if shared:
        root = shared / "data"
        held = sorted((root / "dogs10" / "test").rglob("*.jpg")) + sorted((root / "dogs10" / "valid").rglob("*.jpg"))
        held += sorted((root / "pet_images").glob("*.jpg")) + sorted((shared / "seed" / "test-photos-of-dogs").glob("*"))
        return root / "dogs10", [p.read_bytes() for p in held]
    held = sorted((data.root / "valid").rglob("*.jpg")) + sorted((data.root / "test").rglob("*.jpg"))
    return data.root, [p.read_bytes() for p in held]


@pytest.mark.slow
@pytest.mark.parametrize("photos", ["synthetic", "real"])
def test_exports_agree_with_the_eager_model_on_held_out_photos(photos, synthetic_data, tmp_path, request):
    shared = request.getfixturevalue("shared_dir") if photos == "real" else None
    calibration, held_out = _photos(shared, synthetic_data)
    folder = make_artifact(tmp_path / "model", LABELS)
    agreements = export.export_runtimes(folder, ["onnx", "onnx-int8"], calibration=calibration, calibration_count=64)
    manifest = runtimes.read_manifest(folder)
    for name, agreement in agreements.items():
        assert agreement.passed and agreement.images == 64
        assert manifest["runtimes"][name]["agreement"] == agreement.to_dict()
        assert (folder / runtimes.RUNTIME_FILES[name]).is_file()
    assert manifest["runtimes"]["onnx-int8"]["quantization"]["format"] == "QDQ"
    assert (folder / "runtimes" / "model.int8.onnx").stat().st_size < (folder / "model.pt").stat().st_size / 3
    # Held-out photos, through the endpoint's own decoding, against the eager model.
    eager = _served_logits(handler.load_model(folder, "torch"), held_out)
    for name, threshold in (("onnx", 0.99), ("onnx-int8", 0.97)):
        top1, max_diff = _agreement(eager, _served_logits(handler.load_model(folder, name), held_out))
        print(f"{photos} photos, {name}: top-1 agreement {top1:.2%} of {len(held_out)}, max |logit diff| "
              f"{max_diff:.3g}")
        assert top1 >= threshold
        assert max_diff < (1e-3 if name == "onnx" else 0.2 * np.abs(eager).max())


def _outlier_artifact(path):
    """A model whose last block has one channel 10^4 times larger than the others (the head compensates, so the
    fp32 model is ordinary): per-tensor int8 activations cannot hold both, the way real outlier channels break
    int8 quantization."""
    from dogclf.models import ResNetBreedModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResNetBreedModel(LABELS, backbone="resnet18", weights=None).build()
    with torch.no_grad():
        bn = model.module_.layer4[1].bn2
        bn.weight[0] *= 1e4
        bn.bias[0] = bn.bias[0].abs() * 1e4
        model.module_.fc.weight[:, 0] /= 1e4
    return model.save(path)


@pytest.mark.slow
def test_a_disagreeing_int8_export_is_refused_at_deploy_with_the_measured_agreement(tmp_path, synthetic_data):
    folder = _outlier_artifact(tmp_path / "model")
    assert export.ensure_runtime(folder, "onnx").passed  # the fp32 export of this model is fine
    with pytest.raises(AgreementError) as info:
        EndpointDeployer(runtime="onnx-int8", calibration=str(synthetic_data.root), backend="local").deploy(folder)
    error = info.value
    assert error.runtime == "onnx-int8" and error.top1_agreement < 0.97 and error.images == 80
    assert f"{error.top1_agreement:.2%}" in str(error) and "97%" in str(error)
    assert not (folder / "runtimes" / "model.int8.onnx").exists()
    assert "onnx-int8" not in runtimes.read_manifest(folder)["runtimes"]
    assert not list((folder / "runtimes").glob(".export-*"))  # no leftovers
    with pytest.raises(ArtifactError, match="no exported 'onnx-int8'"):
        handler.load_model(folder, "onnx-int8")
    with pytest.raises(AgreementError):  # in-process too; and again: a refusal is not remembered as a success
        BreedPredictor(folder, runtime="onnx-int8").predict(synthetic_photo())
    assert "onnx" in runtimes.read_manifest(folder)["runtimes"]  # what was accepted stays


def test_int8_needs_calibration_photos(exported, tmp_path):
    from dogclf.models import copy_artifact

    folder = copy_artifact(exported, tmp_path / "model")
    with pytest.raises(RuntimeExportError, match="calibration=") as info:
        export.export_runtimes(folder, "onnx-int8")
    assert not isinstance(info.value, AgreementError)
    with pytest.raises(DataNotFoundError, match="no/such"):
        export.export_runtimes(folder, "onnx-int8", calibration=tmp_path / "no" / "such")


def test_recorded_calibration_photos_are_the_endpoint_crops(exported, synthetic_data, tmp_path):
    from dogclf.models import copy_artifact

    folder = copy_artifact(exported, tmp_path / "model")
    path = export.record_calibration(folder, synthetic_data.root, count=12)
    with np.load(path, allow_pickle=False) as doc:
        names = [str(n) for n in doc["names"]]
        assert int(doc["crop"]) == 224 and doc["jpeg"].dtype == np.uint8 and len(doc["offsets"]) == 13
    assert len({name.split("_")[0] for name in names}) == 10  # every class folder before a second from any
    images, loaded_names = export.load_calibration(folder)
    assert loaded_names == names and images.shape == (12, 3, 224, 224) and images.dtype == np.float32
    first = next((synthetic_data.root / "train").rglob(names[0]))
    served = handler.input_fn(first.read_bytes(), "image/jpeg").batch[0].numpy()
    assert np.abs(images[0] - served).mean() < 0.05  # the same crop, give or take JPEG re-encoding
    assert path.stat().st_size < 12 * 30_000


def test_serving_loads_only_current_exports(exported, tmp_path):
    from dogclf.models import copy_artifact

    folder = copy_artifact(exported, tmp_path / "model")
    with pytest.raises(ArtifactError, match="export_runtimes"):
        handler.load_model(folder, "onnx")  # copied without its runtimes/
    folder = copy_artifact(exported, tmp_path / "stale")
    (folder / "runtimes").mkdir()
    for name in ("manifest.json", "model.onnx"):
        (folder / "runtimes" / name).write_bytes((exported / "runtimes" / name).read_bytes())
    assert handler.load_model(folder, "onnx").runtime == "onnx"
    make_artifact(tmp_path / "other", LABELS, seed=1)
    (folder / "model.pt").write_bytes((tmp_path / "other" / "model.pt").read_bytes())  # retrained
    with pytest.raises(ArtifactError, match="stale"):
        handler.load_model(folder, "onnx")
    export.ensure_runtime(folder, "onnx")  # exported again, from the new weights
    bodies = [synthetic_photo(120, 90, seed=i) for i in range(4)]
    eager = _served_logits(handler.load_model(folder, "torch"), bodies)
    assert np.allclose(_served_logits(handler.load_model(folder, "onnx"), bodies), eager, atol=1e-4)


def test_in_process_predictor_with_the_onnx_runtime(exported):
    bodies = [synthetic_photo(100, 80, seed=i) for i in range(3)]
    eager = BreedPredictor(exported, k=3).predict_batch(bodies)
    onnx = BreedPredictor(exported, k=3, runtime="onnx")
    assert onnx.endpoint.model.runtime == "onnx" and isinstance(onnx.endpoint.model.module, runtimes.OnnxModule)
    for a, b in zip(eager, onnx.predict_batch(bodies)):
        assert a.breed == b.breed and a.probability == pytest.approx(b.probability, abs=1e-4)
    with pytest.raises(ConfigError, match="runtime"):
        BreedPredictor(exported, runtime="tensorrt").predict(bodies[0])


def test_cli_predict_and_deploy_take_a_runtime(exported, tmp_path, capsys):
    from dogclf.cli import main

    photo = tmp_path / "dog.jpg"
    photo.write_bytes(synthetic_photo(120, 90))
    assert main(["predict", str(exported), str(photo), "--runtime", "onnx", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["breed"] in LABELS
    assert main(["predict", str(photo), "--endpoint", "e", "--runtime", "onnx"]) == 2
    assert "serves the runtime it was deployed with" in capsys.readouterr().err
    assert main(["deploy", str(exported), "--runtime", "int4"]) == 2


def test_choosing_onnx_without_onnxruntime_names_the_extra_and_torch_still_serves(exported):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["onnxruntime"] = None  # as if not installed: importing it raises ImportError
        from dogclf.errors import MissingExtraError
        from dogclf.serving import ServerConfig, handler
        from dogclf.serving.testing import synthetic_photo
        model = handler.load_model({str(exported)!r}, "torch")
        handler.predict_fn(handler.input_fn(synthetic_photo(), "image/jpeg"), model)
        ServerConfig(runtime="onnx")  # a config is only a choice
        try:
            handler.load_model({str(exported)!r}, "onnx")
        except MissingExtraError as exc:
            print("refused:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: dogclf's inference runtime 'onnx' needs onnxruntime" in done.stdout
    assert 'pip install "dogclf[onnx]"' in done.stdout


def test_missing_extra_error_is_an_import_error(monkeypatch, tmp_path):
    folder = make_artifact(tmp_path / "model", LABELS)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"dogclf\[onnx\]"):
        runtimes.import_onnxruntime("onnx-int8")
    with pytest.raises(MissingExtraError):
        export.export_runtimes(folder, "onnx")
    assert not (folder / "runtimes").exists()


@pytest.mark.parametrize("bad", ["onnx-fp16", "", None, "ONNX"])
def test_unknown_runtimes_are_refused_everywhere(bad):
    with pytest.raises(ConfigError, match="unknown runtime"):
        ServerConfig(runtime=bad)
    with pytest.raises(ConfigError, match="unknown runtime"):
        EndpointDeployer(runtime=bad).resolved_config()
    with pytest.raises(ConfigError, match="unknown runtime"):
        handler.load_model("/no/such/model", bad)


@given(runtime=st.sampled_from(runtimes.RUNTIMES), cpus=st.integers(1, 128),
       intra=st.none() | st.integers(1, 64), workers=st.none() | st.integers(1, 64))
def test_thread_plan_keeps_explicit_choices_and_fits_the_machine(runtime, cpus, intra, workers):
    planned_intra, planned_workers = runtimes.plan_threads(runtime, intra_op_threads=intra, workers=workers,
                                                           cpus=cpus)
    assert planned_workers == (workers if workers is not None else planned_workers) and planned_workers >= 1
    if intra is not None:
        assert planned_intra == intra
    elif runtime == "torch":
        assert planned_intra is None  # torch keeps its own default
    else:
        assert 1 <= planned_intra <= cpus
    if workers is None:
        assert planned_workers <= max(2, cpus)


def test_server_stats_name_the_runtime_and_threads(exported):
    import requests

    from dogclf.serving.server import create_app
    from dogclf.serving.testing import running_app

    model = handler.load_model(exported, "onnx", intra_op_threads=1)
    app = create_app(model, ServerConfig(runtime="onnx", intra_op_threads=1, workers=3))
    with running_app(app) as url:
        response = requests.post(f"{url}/invocations", data=synthetic_photo(), timeout=60,
                                 headers={"Content-Type": "image/jpeg", "Accept": "application/x-npy"})
        stats = requests.get(f"{url}/stats", timeout=10).json()
    assert response.status_code == 200 and np.load(io.BytesIO(response.content)).shape == (1, 10)
    assert (stats["runtime"], stats["intra_op_threads"], stats["workers"]) == ("onnx", 1, 3)
