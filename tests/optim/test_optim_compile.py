"""torch.compile of a training step, for every optimizer of the contract table
(tests/optim/test_optim_contract.py), torch's SGD and Adam alongside.

Under torch.compile our steps keep their scalar arithmetic in 0-d float64 tensors (the
accelerator path of gradflow_exp/optim/base.py) instead of Python floats, so the step
traces into one graph: reading a float out of a tensor would break it. The graph-break
counts are in docs/speed.md ("torch.compile").
"""
from __future__ import annotations

import copy

import pytest
import torch

from gradflow_exp.losses import MSELoss
from gradflow_exp.optim import BatchClosure
from test_optim_contract import INFOS, build, classes_of, flat, loss_of, problem, step

# SPM over torch's SGD: torch.randn with an explicit generator (the perturbations') is not
# traced; around our optimizers the same draw sits inside a frame Dynamo traces whole.
STEP_BREAKS = {"SPM(SGD)": 1}


def explain_step(info, lr_tensor=False, warm=0):
    """Dynamo's account of ``opt.step`` alone (after an eager backward; a BatchClosure's
    step for IEQ and SPM, which evaluate the loss themselves), after ``warm`` eager steps
    (a relaxed method's later steps start from the relaxation the last one left)."""
    torch._dynamo.reset()
    inp = info.inputs[0]
    model, x, y = problem()
    lr = inp.kwargs["lr"]
    opt = build(info, inp, model.parameters(), lr=torch.tensor(lr) if lr_tensor else lr)
    for _ in range(warm):
        step(opt, info, inp, model, x, y)
    if info.functional:
        closure = BatchClosure(model, MSELoss(), x, y)
        return torch._dynamo.explain(lambda: opt.step(closure))()
    opt.zero_grad()
    loss = loss_of(model, x, y)
    loss.backward()
    if info.control:
        return torch._dynamo.explain(lambda: opt.step())()
    return torch._dynamo.explain(lambda l: opt.step(loss=l))(loss)


@pytest.mark.parametrize("lr_tensor, warm", [(False, 0), (True, 2)], ids=["first step", "third step, tensor lr"])
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_the_optimizer_step_traces_without_graph_breaks(info, lr_tensor, warm):
    out = explain_step(info, lr_tensor, warm)
    assert out.graph_break_count <= STEP_BREAKS.get(info.name, 0), [r.reason[:200] for r in out.break_reasons]


# inductor (compiled C++ kernels) for the plain, relaxed, adaptive and SPM SAV; the others through
# AOTAutograd's functionalized graphs without the C++ compile (backend "aot_eager"), which
# traces what inductor would compile at a tenth of the time
INDUCTOR = ("SAV", "RelSAV", "ASAV", "SPM(RelSAV)")


@pytest.mark.slow
@pytest.mark.parametrize("info", classes_of(INFOS))
def test_a_compiled_training_step_equals_eager(info):
    """The whole step (closure with zero_grad, forward, backward, and the optimizer) under
    torch.compile, against the same steps in eager mode: equal to rounding."""
    torch._dynamo.reset()
    inp = info.inputs[0]
    model, x, y = problem()
    opt = build(info, inp, model.parameters())
    eager_model, eager_opt = copy.deepcopy((model, opt))
    backend = "inductor" if info.name in INDUCTOR else "aot_eager"
    compiled = torch.compile(lambda: step(opt, info, inp, model, x, y), backend=backend)
    for _ in range(4):
        compiled()
        step(eager_opt, info, inp, eager_model, x, y)
    torch.testing.assert_close(flat(model), flat(eager_model), rtol=1e-12, atol=1e-14)
    torch._dynamo.reset()
