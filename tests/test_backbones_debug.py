"""The seed's Debugger collections and the tensor rules on every built-in backbone (tiny inputs, a few steps).

Each run trains a :class:`~dogclf.models.BreedModel` (random weights, 32x32 inputs) through the project's tiny
training loop with the real smdebug hook and in-process rules, then reads the trial back and evaluates every tensor
rule: tensor names come from the network's own module names (``fc``, ``layer4``, ``_blocks.N``), so nothing may
assume a ResNet.
"""

from __future__ import annotations

import pytest
import torch

from dogclf.debug import DebuggerConfig, RuleConfig, evaluate_trial, open_trial
from dogclf.models import BreedModel

from test_debug_rules import TENSOR_RULES, train

BUILTINS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet34", "resnet50",
            "resnet101", "resnet152"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTINS)
def test_collections_and_rules_work_on_every_builtin_backbone(tmp_path, name):
    torch.manual_seed(0)
    model = BreedModel(["a", "b", "c", "d"], backbone=name, weights=None, freeze="last-block",
                       preprocess={"resize": 32, "crop": 32}).build()
    net = torch.nn.Sequential(torch.nn.Unflatten(1, (3, 32, 32)), model.module_)
    config = DebuggerConfig(profiler=None, rules=("ClassImbalance", "ExplodingTensor"))
    ctx, out = train(tmp_path, config, model=net, features=3 * 32 * 32, epochs=2, train_steps=12, eval_steps=2,
                     batch_size=4, lr=0.01)
    assert not ctx.stop_training
    trial = open_trial(out / "tensors")
    names = set(trial.tensor_names())
    prefix = "Sequential_1."
    trained = [n for n, p in model.module_.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.module_.named_parameters() if not p.requires_grad]
    assert f"{prefix}fc.weight" in names and f"gradient/{prefix}fc.weight" in names
    last = model.trainable_prefixes()[0]  # "layer4." or the last stage's "_blocks.N."
    assert any(n.startswith(f"gradient/{prefix}{last}") for n in names)
    assert all(f"gradient/{prefix}{n}" not in names for n in frozen)  # frozen parameters have no gradient
    sample = f"{prefix}{frozen[0]}"
    assert trial.tensor(sample).steps() == [0]  # a frozen weight is saved once, at its first save step
    assert len(trial.tensor(f"{prefix}{trained[-2]}").steps()) > 1
    assert any("CrossEntropyLoss_output_0" in n for n in names)
    rules = [RuleConfig(r, {"samples": 50}) if r == "ClassImbalance" else RuleConfig(r) for r in TENSOR_RULES]
    findings = evaluate_trial(trial, rules)
    assert [f.rule for f in findings] == TENSOR_RULES
    for f in findings:
        assert f.datapoints > 0, f"{f.rule} judged nothing on {name}"
    by_rule = {f.rule: f for f in findings}
    assert not by_rule["ExplodingTensor"].triggered and not by_rule["VanishingGradient"].triggered
    if name.startswith("efficientnet_lite"):
        # the last block's projection BatchNorm bias feeds the head's BatchNorm through a 1x1 convolution only: its
        # gradient is zero by construction, which VanishingGradient must not report as a vanishing signal
        bias = trial.tensor(f"gradient/{prefix}{last}_bn2.bias")
        assert float(bias.value(bias.steps()[0]).__abs__().mean()) < 1e-7
