"""torch.compile readiness: the generator, the critics and the loss functions of a training step
trace to single graphs (no graph breaks), a compiled step gives the eager step's losses and
gradients, and ``model.compile=true`` trains to the eager run's weights. Cheap backends only
(dynamo's ``explain``, ``aot_eager``): what breaks compilation shows here without a compiler."""

from __future__ import annotations

import pytest
import torch

from deepfill import InpaintGenerator
from deepfill.models import GlobalCritic, LocalCritic
from deepfill.training.losses import LossConfig, StepOutputs, critic_loss, generator_loss
from helpers.tiny import make_data, make_module, make_trainer


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _case(height: int = 64, width: int = 64, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, height, width)
    mask[0, :, 8:40, 16:48] = 1
    mask[1:, :, 20:52, 4:36] = 1
    return image, mask


def _nets(size: int = 64):
    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8).train()
    return generator, GlobalCritic(size, cnum=8), LocalCritic(size // 2, cnum=8)


def _breaks(function, *args) -> tuple[int, list[str]]:
    explanation = torch._dynamo.explain(function)(*args)
    reasons = [
        f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
        for b in explanation.break_reasons
    ]
    return explanation.graph_count, reasons


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
@pytest.mark.parametrize("grad", [False, True])
def test_the_generator_forward_is_one_graph(height, width, grad) -> None:
    generator = _nets()[0].train(grad)
    image, mask = _case(height, width)
    with torch.set_grad_enabled(grad):
        graphs, reasons = _breaks(lambda x, m: generator(x, m, check_mask=False), image, mask)
    assert reasons == [] and graphs == 1


# Made once, outside the step, as the module makes it (constructing it inside would be traced).
CONFIG = LossConfig(patch_size=32)


def _generator_step(nets, image, mask):
    generator, global_critic, local_critic = nets
    x1, x2, _ = generator(image, mask, check_mask=False)
    step = StepOutputs.of(image, mask, x1, x2, CONFIG.patch_size)
    return generator_loss(step, CONFIG, (global_critic, local_critic)).total


def _critic_step(nets, image, mask, fake, alphas):
    _, global_critic, local_critic = nets
    step = StepOutputs.of(image, mask, fake, fake, CONFIG.patch_size)
    return critic_loss(global_critic, local_critic, step, CONFIG, *alphas).total


def _step_args(kind: str):
    nets = _nets()
    image, mask = _case()
    if kind == "generator":
        return _generator_step, (nets, image, mask), nets
    fake = torch.rand(image.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    alphas = (torch.tensor([0.3, 0.8]), torch.tensor([0.6, 0.1]))
    return _critic_step, (nets, image, mask, fake, alphas), nets


@pytest.mark.parametrize("kind", ["generator", "critic"])
def test_the_losses_of_a_training_step_are_one_graph(kind) -> None:
    step, args, _ = _step_args(kind)
    graphs, reasons = _breaks(step, *args)
    assert reasons == [] and graphs == 1


@pytest.mark.parametrize("kind", ["generator", "critic"])
def test_a_compiled_step_gives_the_eager_losses_and_gradients(kind) -> None:
    step, args, nets = _step_args(kind)
    params = [p for net in nets for p in net.parameters()]
    results = []
    for function in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        loss = function(*args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss.detach(), grads))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-7)
    assert [g is None for g in compiled_grads] == [g is None for g in eager_grads]
    # Every parameter the step trains has a gradient: the generator step reaches all three
    # networks (the adversarial terms), the critic step both critics.
    trained = params if kind == "generator" else [p for net in nets[1:] for p in net.parameters()]
    reached = {id(p) for p, g in zip(params, eager_grads, strict=True) if g is not None}
    assert all(id(p) in reached for p in trained)
    for ours, theirs in zip(compiled_grads, eager_grads, strict=True):
        if theirs is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


# Slow (a compiled fit, about a minute on one core): the compiled step's losses and gradients
# equal the eager step's in the fast suite (test_a_compiled_step_gives_the_eager_losses_and_gradients).
@pytest.mark.slow
def test_model_compile_trains_to_the_eager_weights(tmp_path) -> None:
    """Every phase of the schedule (coarse pre-training, reconstruction, adversarial) with the
    generator's stages and the critics compiled, against the same run in eager mode."""
    states = []
    for compile_ in (False, True):
        torch._dynamo.reset()
        module = make_module(
            n_critic=1,
            pretrain_coarse_steps=1,
            reconstruction_steps=1,
            lpips=False,
            compile=compile_,
            compile_options={"backend": "aot_eager"},
        )
        make_trainer(tmp_path / str(compile_), max_steps=3, limit_val_batches=0).fit(
            module, make_data(length=16, batch_size=2)
        )
        states.append(module.state_dict())
    eager, compiled = states
    assert eager.keys() == compiled.keys()  # compiled in place: same names, same checkpoints
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6, msg=name)
