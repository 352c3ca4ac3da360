"""The training recipe's parts on their own: schedules, stages and discriminative rates, augmentation, test-time
augmentation, mixed precision, best-epoch selection and the learning-rate finder's sweep."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.errors import ConfigError
from dogclf.models import ModelConfig, ResNetBreedModel
from dogclf.training import TrainingConfig, TrainingJobSpec
from dogclf.training.amp import Precision, resolve_amp
from dogclf.training.augment import Augmenter, average_views, decode_size
from dogclf.training.lr_finder import exponential_rates, suggest, sweep
from dogclf.training.optim import model_stages, param_groups, resolve, set_head_only, stage_rates, train_mode
from dogclf.training.schedule import ONECYCLE_DIV, LRSchedule, PhasePlan, lr_factor
from dogclf.training.selection import EpochSelector


# -- schedules ---------------------------------------------------------------------------------------------------
@given(total=st.integers(2, 400), warm_share=st.floats(0, 0.9))
@settings(max_examples=80, deadline=None)
def test_schedule_shapes(total, warm_share):
    warmup = int(warm_share * total)
    for kind in ("constant", "cosine", "onecycle"):
        f = [lr_factor(kind, s, total, warmup) for s in range(total)]
        assert all(0 < v <= 1 + 1e-12 for v in f), kind
        up, down = f[:warmup + 1], f[warmup:]
        assert all(a < b for a, b in zip(up, up[1:])), f"{kind}: warm-up must rise"
        assert max(f) == pytest.approx(1.0), f"{kind}: the peak is the configured rate"
        if kind == "constant":
            assert all(v == 1.0 for v in down)
        else:
            assert all(a >= b for a, b in zip(down, down[1:])), f"{kind}: after the warm-up the rate only falls"
            if total - warmup > 8:
                assert f[-1] < 0.05, f"{kind}: it ends near zero"
    if warmup:
        assert lr_factor("onecycle", 0, total, warmup) == pytest.approx(1 / ONECYCLE_DIV)
        assert lr_factor("cosine", 0, total, warmup) == pytest.approx(1 / (warmup + 1))


def test_schedule_is_per_batch_and_restarts_in_each_phase():
    training = TrainingConfig(schedule="onecycle", epochs=4, freeze_epochs=1)
    schedule = LRSchedule(training, steps_per_epoch=10)
    assert [(p.name, p.first, p.last) for p in schedule.plan.phases] == [("head", 1, 1), ("train", 2, 4)]
    head = [schedule.factor(1, s) for s in range(10)]
    rest = [schedule.factor(e, s) for e in (2, 3, 4) for s in range(10)]
    assert len(set(head)) == 10 and len(set(rest)) == 30  # a new rate every batch
    assert head[0] == rest[0] == pytest.approx(1 / ONECYCLE_DIV)  # each phase starts its own cycle
    assert max(rest) == pytest.approx(1.0) and rest[-1] < 1e-3
    assert schedule.warmups == {"head": round(0.25 * 10), "train": round(0.25 * 30)}
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.001}], lr=0.1)
    schedule.apply(opt, 3, 4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * rest[14], 0.001 * rest[14]])
    assert PhasePlan.of(3).phases[0].name == "train"


# -- stages and discriminative rates -----------------------------------------------------------------------------
def test_param_groups_give_earlier_stages_lower_rates_and_spare_biases_from_decay():
    model = ResNetBreedModel(["a", "b"], backbone="resnet18", weights=None, freeze="full").build()
    assert [name for name, _ in model_stages(model)] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    groups = param_groups(model, lr=0.01, lr_mult=100, weight_decay=0.01)
    peak = {}
    for g in groups:
        peak.setdefault(g["stage"], g["lr"])
        assert g["weight_decay"] == (0.01 if all(p.ndim > 1 for p in g["params"]) else 0.0)
    rates = [peak[s] for s in ("stem", "layer1", "layer2", "layer3", "layer4", "head")]
    assert rates == sorted(rates) and rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(0.01)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.module_.parameters())
    assert stage_rates(4, 1.0, 1.0) == [1.0] * 4
    # Under last-block only layer4 and the head train, at their stages' rates.
    frozen = ResNetBreedModel(["a", "b"], backbone="resnet18", weights=None, freeze="last-block").build()
    assert {g["stage"] for g in param_groups(frozen, 0.01, 100)} == {"layer4", "head"}


class _TwoStage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        self.neck = torch.nn.Linear(4, 4)
        self.fc = torch.nn.Linear(4, 2)


class _Backboned:
    """What a backbone registry's model offers: ``module_``, its stages, the freeze policy's methods."""

    def __init__(self, stages=None):
        self.module_ = _TwoStage()
        self._stages = stages

    def stages(self):
        return self._stages

    def apply_freeze(self):
        for p in self.module_.parameters():
            p.requires_grad_(True)

    def set_train_mode(self, mode=True):
        return self.module_.train(mode)


def test_a_model_can_give_its_own_stages_and_others_fall_back_to_their_children():
    own = _Backboned([("early", ("body.", "neck.")), ("head", ("fc.",))])
    groups = param_groups(own, 1.0, 10.0)
    assert [g["stage"] for g in groups] == ["early", "head"] and [g["lr"] for g in groups] == [0.1, 1.0]
    assert [n for n, _ in model_stages(own.module_)] == ["body", "neck", "fc"]  # no stages(): one per child
    with pytest.raises(ConfigError, match="stages"):
        model_stages(_Backboned([("early", ("body",))]))  # prefixes end with '.'
    # Head-only: only the head trains, the rest stays in eval mode; BatchNorm can keep its statistics.
    set_head_only(own, True)
    assert [n for n, p in own.module_.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    module = train_mode(own, head_only=True)
    assert module.fc.training and not module.body.training
    set_head_only(own, False)
    module = train_mode(own, frozen_batchnorm=True)
    assert module.body[0].training and not module.body[1].training and module.fc.training


def test_auto_settings_resolve_to_the_fine_tuning_defaults():
    fine = resolve(TrainingConfig(freeze_epochs=1, epochs=3, batch_size=16), ModelConfig(freeze="full"))
    assert fine == {"optimizer": "adamw", "weight_decay": 0.01, "lr_mult": 100.0, "batchnorm": "frozen"}
    head = resolve(TrainingConfig(), ModelConfig(freeze="head"))
    assert head["optimizer"] == "adam" and head["weight_decay"] == 0.0 and head["lr_mult"] == 1.0
    scratch = resolve(TrainingConfig(batch_size=8, freeze_epochs=1, epochs=2), ModelConfig(freeze="full", weights=None))
    assert scratch["batchnorm"] == "local" and scratch["lr_mult"] == 1.0  # nothing pretrained to keep
    assert resolve(TrainingConfig(optimizer="sgd", lr_mult=3), ModelConfig())["lr_mult"] == 3.0


# -- augmentation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", ["flip", "crop", "crop-flip", "rrc", "rrc-flip", "trivialaugment"])
def test_augmentations_are_uint8_crops_drawn_from_the_seed(augment):
    from dogclf.images import Preprocess

    pre = Preprocess(resize=40, crop=32)
    size = decode_size(augment, pre)
    assert size == (40 if augment != "flip" else 32)
    x = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8)
    aug = Augmenter(augment, crop=32, rrc_scale=0.3)
    outs = [aug.train(x, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert outs[0].dtype == torch.uint8 and tuple(outs[0].shape) == (6, 3, 32, 32)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    before = torch.get_rng_state()
    aug.train(x, torch.Generator().manual_seed(3))
    assert torch.equal(before, torch.get_rng_state())  # the global generator (dropout) is left alone
    if augment == "crop":  # a window of the image, never mirrored
        g = torch.Generator().manual_seed(5)
        i, j = (int(v) for v in torch.randint(0, 9, (2,), generator=torch.Generator().manual_seed(5)))
        assert torch.equal(aug.train(x, g), x[:, :, i:i + 32, j:j + 32])


def test_flip_tta_averages_the_probabilities_of_both_views():
    aug = Augmenter("none", crop=4, tta="flip")
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    views = aug.views(x)
    assert len(views) == 2 and torch.equal(views[1], views[0].flip(-1)) and tuple(views[0].shape) == (2, 3, 4, 4)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    mean = (a.softmax(-1) + b.softmax(-1)) / 2
    loss = torch.nn.functional.cross_entropy(average_views([a, b]), y)
    assert float(loss) == pytest.approx(float(-mean[torch.arange(5), y].log().mean()), rel=1e-5)
    assert torch.equal(average_views([a]), a)


# -- mixed precision ---------------------------------------------------------------------------------------------
def test_precision_bf16_autocast_and_fp16_scaler_run_on_any_device():
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    bf16 = Precision("bf16", "cpu", clip_grad=0.5)
    with bf16.autocast():
        out = net(x)
    assert out.dtype == torch.bfloat16 and bf16.scaler is None
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    norm = bf16.step(torch.nn.functional.cross_entropy(out.float(), y), opt)
    assert norm is not None and norm > 0 and not torch.equal(before, net.weight)
    # fp16 with a gradient scaler: the CUDA recipe, run here on the CPU through the same device-agnostic code.
    fp16 = Precision("fp16", "cpu")
    assert fp16.scaler is not None and fp16.dtype == torch.float16
    with fp16.autocast():
        loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    fp16.step(loss, opt)
    state = fp16.state_dict()
    assert state["scale"] > 0
    again = Precision("fp16", "cpu")
    again.load_state_dict(state)
    assert again.state_dict()["scale"] == state["scale"]
    assert Precision("off").dtype is None and resolve_amp("off", "cuda") == "off"
    assert resolve_amp("auto", "cuda") in ("bf16", "fp16")  # a GPU always gets mixed precision under auto


# -- selection ---------------------------------------------------------------------------------------------------
def test_selector_keeps_the_best_weights_on_disk_and_stops_after_the_patience(tmp_path):
    training = TrainingConfig(patience=2, monitor_metric="valid_acc")
    sel = EpochSelector(training, tmp_path)
    weights = {"w": torch.zeros(2)}
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.7], start=1):
        weights = {"w": torch.full((2,), float(epoch))}
        sel.update(epoch, {"valid_acc": acc, "valid_loss": 1.0}, lambda w=weights: dict(w))
        reason = sel.should_stop(epoch)
        sel.cleanup()
        assert reason is None or epoch == 4
    assert sel.best_epoch == 2 and "patience 2" in reason and sel.stopped_epoch == 4  # ties do not improve
    assert [p.name for p in tmp_path.iterdir()] == ["best-epoch-2.pt"]
    resumed = EpochSelector(training, tmp_path)
    resumed.load_state_dict(sel.state_dict())
    assert torch.equal(resumed.best_state["w"], torch.full((2,), 2.0))
    no_valid = EpochSelector(TrainingConfig(), tmp_path, has_valid=False)
    assert no_valid.select == "last"


# -- the learning-rate finder ------------------------------------------------------------------------------------
def test_lr_sweep_suggests_a_rate_that_trains_on_a_tiny_problem():
    """Least squares by gradient descent, where the stable rates are known: below 2 / (the largest eigenvalue of
    the Hessian) the loss falls, above it the iteration diverges. The suggestion must lie in the falling range,
    well below the divergence, and training at it must lower the loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.5])
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256, generator=g)
    limit = float(2 / torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max())  # the largest stable rate

    def fresh():
        w = torch.zeros(4, requires_grad=True)
        return w, torch.optim.SGD([w], lr=1.0)

    def stepper(w, opt):
        def step(lr):
            for group in opt.param_groups:
                group["lr"] = lr
            loss = ((x @ w - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.detach())
        return step

    result = sweep(stepper(*fresh()), start_lr=1e-6, end_lr=10.0, num_it=100)
    assert result.diverged and len(result.lrs) == len(result.losses) == len(result.raw_losses) < 100
    assert 1e-4 <= result.suggestion < limit, (result.suggestions, limit)
    w, opt = fresh()
    step = stepper(w, opt)
    start = step(0.0)
    for _ in range(100):
        step(result.suggestion)
    assert step(0.0) < 0.5 * start
    assert [f"{r:.0e}" for r in exponential_rates(1e-3, 1e-1, 3)] == ["1e-03", "1e-02", "1e-01"]
    with pytest.raises(ConfigError, match="finite"):
        suggest([1e-3, 1e-2], [math.nan, math.nan])


def test_bad_recipe_settings_fail_when_the_spec_is_made_naming_the_value():
    def spec(**training):
        return TrainingJobSpec({"backbone": "resnet18", "weights": None, "freeze": "full"}, "/data", training)

    cases = [
        (dict(warmup_epochs=3, epochs=3), r"warmup_epochs \(--warmup-epochs\) 3 is longer than the run"),
        (dict(warmup_epochs=1.5, epochs=4, freeze_epochs=1), r"warmup_epochs .* 1.5 .* head-only phase"),
        (dict(freeze_epochs=3, epochs=3),
         r"freeze_epochs \(--freeze-epochs\) 3 would unfreeze .* epoch 4, past the end"),
        (dict(patience=0), r"'patience' must be >= 1, got 0"),
        (dict(label_smoothing=1.0), r"'label_smoothing' .* must be < 1, got 1.0"),
        (dict(label_smoothing=-0.1), r"'label_smoothing' .* must be >= 0"),
        (dict(rrc_scale=0), r"'rrc_scale' .* must be > 0"),
        (dict(feature_cache="on", freeze_epochs=1, augment="rrc"), r"feature_cache .* 'on' needs"),
        (dict(schedule="linear"), r"'schedule' is 'linear'; choose one of 'constant', 'cosine', 'onecycle'"),
    ]
    for training, match in cases:
        with pytest.raises(ConfigError, match=match):
            spec(**training)
    with pytest.raises(ConfigError, match=r"freeze_epochs .* 1 needs a freeze policy"):
        TrainingJobSpec({"backbone": "resnet18", "weights": None, "freeze": "head"}, "/data", {"freeze_epochs": 1})
    assert spec(warmup_epochs=0.5, epochs=2, freeze_epochs=1, schedule="cosine").training.warmup_epochs == 0.5
