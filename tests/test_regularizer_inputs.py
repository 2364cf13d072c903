"""Input checks of the public penalties: every bad input is one GradregError naming the argument,
valid inputs give exactly what the unchecked ``Regularizer.raw`` gives, and ``options()`` lists
exactly the keywords a user may set."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import Tensor, nn

from gradreg import models, regularizers
from gradreg.errors import GradregError
from gradreg.seeds import SeedStack

NAMES = regularizers.names()
B = 3                                            # batch size of the valid calls
NoneType = type(None)

torch.manual_seed(0)
MLP = models.build("mlp")                        # [B, 784] -> [B, 10]
LENET = models.build("lenet")                    # [B, 1, 28, 28] -> [B, 10]
TOY = models.build("toy", hidden=8, depth=1)     # [B, 1] -> [B, 1]: regression


def _options(name: str, loss: str = "cross_entropy") -> dict:
    """What the training loop would pass: loss= to DataGrad, a seeded generator= to the random ones."""
    reg = regularizers.get(name)
    opts: dict = {"loss": loss} if reg.needs_loss else {}
    if reg.random:
        opts["generator"] = torch.Generator().manual_seed(0)
    return opts


def _mlp(name: str) -> tuple[nn.Module, Tensor, Tensor, dict]:
    """A valid call on the MLP: (model, x, y, options)."""
    gen = torch.Generator().manual_seed(1)
    return MLP, torch.randn(B, 784, generator=gen), torch.randint(10, (B,), generator=gen), _options(name)


def _toy(name: str) -> tuple[nn.Module, Tensor, Tensor, dict]:
    """A valid call on the toy regression net (Onehot gets class 0 of its single output)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, 1, generator=gen)
    y = torch.zeros(B, dtype=torch.long) if name == "onehot" else torch.randn(B, 1, generator=gen)
    return TOY, x, y, _options(name, loss="squared_error")


# ------------------------------------------------------------------ bad inputs: one case per function
# Each case maps a regularizer name to (positional args, keyword options, regex the message must
# match — the argument's name), or None where the case does not apply to that regularizer.

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _uses_classes(name: str) -> bool:
    return name in ("datagrad", "onehot")


def _input_grad(name: str) -> bool:
    return regularizers.get(name).input_grad


@case
def x_int(name):
    model, x, y, opts = _mlp(name)
    return (model, x.long(), y), opts, r"x must be a floating-point tensor"


@case
def x_bool(name):
    model, x, y, opts = _mlp(name)
    return (model, x > 0, y), opts, r"x must be a floating-point tensor"


@case
def x_list(name):
    model, x, y, opts = _mlp(name)
    return (model, x.tolist(), y), opts, r"x must be a torch\.Tensor; got list"


@case
def x_numpy(name):
    model, x, y, opts = _mlp(name)
    return (model, x.numpy(), y), opts, r"x must be a torch\.Tensor; got numpy\.ndarray"


@case
def x_empty_batch(name):
    model, x, y, opts = _mlp(name)
    return (model, x[:0], y[:0]), opts, r"x must have a batch dimension with at least one row"


@case
def x_scalar(name):
    model, _, y, opts = _mlp(name)
    return (model, torch.tensor(1.0), y), opts, r"x must have a batch dimension"


@case
def x_cifar_shape_into_lenet(name):
    _, _, y, opts = _mlp(name)
    return (LENET, torch.randn(B, 3, 32, 32), y), opts, r"model\(x\) failed for x of shape \(3, 3, 32, 32\)"


@case
def x_flat_into_lenet(name):
    _, x, y, opts = _mlp(name)
    return (LENET, x, y), opts, r"model\(x\) failed for x of shape \(3, 784\)"


@case
def x_wrong_width_into_toy(name):
    model, x, y, opts = _toy(name)
    return (model, torch.randn(B, 5), y), opts, r"model\(x\) failed for x of shape \(3, 5\): mat1"


@case
def x_wrong_width_into_mlp(name):
    model, _, y, opts = _mlp(name)
    return (model, torch.randn(B, 5), y), opts, r"model\(x\) failed for x of shape \(3, 5\)"


@case
def x_1d_into_mlp(name):  # torch raises IndexError here, not RuntimeError
    model, _, y, opts = _mlp(name)
    return (model, torch.randn(B), y), opts, r"model\(x\) failed for x of shape \(3,\)"


@case
def y_wrong_batch(name):
    model, x, y, opts = _mlp(name)
    return (model, x, y[:2]), opts, r"y must have the batch size of x \(3\)"


@case
def y_scalar(name):
    model, x, _, opts = _mlp(name)
    return (model, x, torch.tensor(1)), opts, r"y must have the batch size of x"


@case
def y_float_for_classes(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y.float()), opts, r"y must be integer class indices") if _uses_classes(name) else None


@case
def y_bool_for_classes(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y > 4), opts, r"y must be integer class indices") if _uses_classes(name) else None


@case
def y_2d_for_classes(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y[:, None]), opts, r"y must be integer class indices of shape \[B\] = \[3\]"
            ) if _uses_classes(name) else None


@case
def y_label_10(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, torch.tensor([0, 10, 3])), opts, r"y must hold class indices in 0\.\.9"
            ) if _uses_classes(name) else None


@case
def y_label_minus_1(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, torch.tensor([0, -1, 3])), opts, r"y must hold class indices in 0\.\.9"
            ) if _uses_classes(name) else None


@case
def y_label_1_for_one_output(name):
    model, x, _, opts = _toy(name)
    return ((model, x, torch.ones(B, dtype=torch.long)), opts, r"y must hold class indices in 0\.\.0"
            ) if name == "onehot" else None


@case
def y_none_where_needed(name):
    model, x, _, opts = _mlp(name)
    return ((model, x, None), opts, r"y must be a torch\.Tensor") if _uses_classes(name) else None


@case
def y_missing_where_needed(name):
    model, x, _, opts = _mlp(name)
    return ((model, x), opts, r"missing a required argument: 'y'") if _uses_classes(name) else None


@case
def y_list(name):
    model, x, y, opts = _mlp(name)
    return (model, x, y.tolist()), opts, r"y must be a torch\.Tensor"


@case
def y_int_for_squared_error(name):
    model, x, y, opts = _toy(name)
    y = torch.zeros(B, 1, dtype=torch.long)
    return ((model, x, y), opts, r"y must be a floating-point regression target") if name == "datagrad" else None


@case
def y_too_many_values_for_squared_error(name):
    model, x, y, opts = _toy(name)
    return ((model, x, torch.randn(B, 2)), opts, r"y must hold 1 value\(s\) per example"
            ) if name == "datagrad" else None


@case
def unknown_option(name):
    model, x, y, opts = _mlp(name)
    return (model, x, y), {**opts, "foo": 1}, r"unknown option 'foo'; known: .*logits"


@case
def option_passed_positionally(name):
    model, x, y, opts = _mlp(name)
    return (model, x, y, None), opts, r"too many positional arguments .*options by keyword"


@case
def model_not_a_module(name):
    _, x, y, opts = _mlp(name)
    return (lambda t: MLP(t), x, y), opts, r"model must be a torch\.nn\.Module; got function"


@case
def model_none(name):
    _, x, y, opts = _mlp(name)
    return (None, x, y), opts, r"model must be a torch\.nn\.Module; got NoneType"


@case
def model_output_1d(name):
    _, x, y, opts = _mlp(name)
    model = nn.Sequential(MLP, nn.Flatten(0))
    return (model, x, y), opts, r"model\(x\) must be floating-point logits of shape \[B, K\]"


@case
def model_output_3d(name):
    _, x, y, opts = _mlp(name)
    return (nn.Sequential(MLP, nn.Unflatten(1, (2, 5))), x, y), opts, r"model\(x\) must be floating-point logits"


@case
def logits_not_a_tensor(name):
    model, x, y, opts = _mlp(name)
    logits = [[0.0] * 10] * B
    return (model, x.requires_grad_(), y), {**opts, "logits": logits}, r"logits must be a torch\.Tensor or None"


@case
def logits_wrong_batch(name):
    model, x, y, opts = _mlp(name)
    x.requires_grad_()
    return (model, x, y), {**opts, "logits": model(x)[:2]}, r"logits must be floating-point logits .* B = 3"


@case
def logits_1d(name):
    model, x, y, opts = _mlp(name)
    x.requires_grad_()
    return (model, x, y), {**opts, "logits": model(x)[:, 0]}, r"logits must be floating-point logits"


@case
def logits_without_x_requiring_grad(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "logits": model(x)}, r"logits=\.\.\. needs the x that produced them"
            ) if _input_grad(name) else None


@case
def r_wrong_shape(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "r": torch.randn(3)}, r"r has shape \(3,\), expected \(10,\) or \(3, 10\)"
            ) if name == "spectreg" else None


@case
def r_3d(name):
    model, x, y, opts = _mlp(name)
    r = torch.randn(1, B, 10)
    return ((model, x, y), {**opts, "r": r}, r"r has shape \(1, 3, 10\)") if name == "spectreg" else None


@case
def r_list(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "r": [1.0] * 10}, r"r must be a torch\.Tensor or None; got list"
            ) if name == "spectreg" else None


@case
def r_integer_with_spherical(name):
    model, x, y, opts = _mlp(name)
    r = torch.ones(10, dtype=torch.long)
    return ((model, x, y), {**opts, "r": r, "spherical": True}, r"r must be floating point to be normalised"
            ) if name == "spectreg" else None


@case
def spherical_not_a_bool(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "spherical": 1}, r"spherical must be a bool; got int 1"
            ) if name == "spectreg" else None


@case
def vectorized_not_a_bool(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "vectorized": "yes"}, r"vectorized must be a bool or None; got str 'yes'"
            ) if name in ("frobreg", "jacreg") else None


@case
def vectorized_through_custom_conv_on_cpu(name):
    _, _, y, opts = _mlp(name)
    return ((LENET, torch.randn(B, 1, 28, 28), y), {**opts, "vectorized": True}, r"vectorized=True on CPU"
            ) if name in ("frobreg", "jacreg") else None


@case
def generator_not_a_generator(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "generator": 0}, r"generator must be a torch\.Generator or None; got int 0"
            ) if regularizers.get(name).random else None


@case
def loss_unknown(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "loss": "mse"}, r"unknown loss 'mse'; known: cross_entropy"
            ) if name == "datagrad" else None


@case
def loss_not_a_name(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "loss": nn.functional.cross_entropy}, r"loss must be a str; got function"
            ) if name == "datagrad" else None


# --- inputs the argument checks cannot foresee: torch's errors from inside, or specific pre-checks

class _Constant(nn.Module):
    """Ignores x: the logits are a parameter (so they require grad, but not through x)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.b.expand(len(x), 10)


class _Detaching(nn.Module):
    """Detaches x before a linear layer: the logits require grad through the weights only."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x):
        return self.linear(x.detach())


class _Frozen(nn.Module):
    """Detaches x, no parameters: the logits do not require grad at all."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(784, 10))

    def forward(self, x):
        return x.detach() @ self.w


class _SparseOut(nn.Module):
    def forward(self, x):
        return MLP(x).to_sparse()


def _nested(rows: list[Tensor], layout: torch.layout = torch.jagged) -> Tensor:
    with warnings.catch_warnings():                     # the strided layout warns: "prototype stage"
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor(rows, layout=layout)


@case
def model_ignores_x(name):
    _, x, y, opts = _mlp(name)
    return ((_Constant(), x, y), opts, r"model\(x\) must depend on x to take input gradients .*not have been used"
            ) if _input_grad(name) else None


@case
def model_detaches_x(name):
    _, x, y, opts = _mlp(name)
    return ((_Detaching(), x, y), opts, r"model\(x\) must depend on x .*ignores or detaches x"
            ) if _input_grad(name) else None


@case
def model_output_without_grad(name):
    _, x, y, opts = _mlp(name)
    return ((_Frozen(), x, y), opts, r"model\(x\) must be differentiable with respect to x"
            ) if _input_grad(name) else None


@case
def model_takes_two_inputs(name):  # torch raises TypeError here: forward() is missing an argument
    _, x, y, opts = _mlp(name)
    return (nn.Bilinear(784, 784, 10), x, y), opts, r"model\(x\) failed for x of shape \(3, 784\): .*input2"


@case
def model_output_sparse(name):
    _, x, y, opts = _mlp(name)
    return (_SparseOut(), x, y), opts, r"model\(x\) must be a dense \(strided\) tensor; got a sparse_coo tensor"


@case
def x_created_in_inference_mode(name):
    model, x, y, opts = _mlp(name)
    with torch.inference_mode():
        x = x.clone()
    match = (r"x was created in torch\.inference_mode\(\), and input gradients cannot be taken" if _input_grad(name)
             else r"model\(x\) failed for x of shape \(3, 784\): Inference tensors")  # no input gradient
    return (model, x, y), opts, match


@case
def x_nested(name):  # the strided layout has no sizes: a RuntimeError from x.shape, before
    model, x, y, opts = _mlp(name)
    x = _nested(list(x), torch.strided)
    return (model, x, y), opts, r"x must be a dense \(strided\) tensor; got a nested tensor of dtype float32$"


@case
def x_nested_jagged(name):
    model, x, y, opts = _mlp(name)
    return (model, _nested(list(x)), y), opts, r"x must be a dense \(strided\) tensor; got a nested tensor"


@case
def x_sparse(name):
    model, x, y, opts = _mlp(name)
    return (model, x.to_sparse(), y), opts, r"x must be a dense \(strided\) tensor; got a sparse_coo tensor"


@case
def y_sparse(name):  # NotImplementedError from the label-range check, before
    model, x, y, opts = _mlp(name)
    return (model, x, y.to_sparse()), opts, r"y must be a dense \(strided\) tensor; got a sparse_coo tensor"


@case
def y_nested(name):
    model, x, y, opts = _mlp(name)
    return (model, x, _nested(list(y[:, None]))), opts, r"y must be a dense \(strided\) tensor; got a nested"


@case
def y_created_in_inference_mode_for_datagrad(name):  # caught from inside: cross_entropy saves y
    model, x, y, opts = _mlp(name)
    with torch.inference_mode():
        y = y.clone()
    return ((model, x, y), opts, r"computing the penalty failed: Inference tensors cannot be saved"
            ) if name == "datagrad" else None


@case
def logits_under_no_grad(name):
    model, x, y, opts = _mlp(name)
    x.requires_grad_()
    with torch.no_grad():
        logits = model(x)
    return ((model, x, y), {**opts, "logits": logits}, r"logits must come from model\(x\) with gradients enabled"
            ) if _input_grad(name) else None


@case
def logits_from_another_x(name):
    model, x, y, opts = _mlp(name)
    logits = model(x.clone().requires_grad_())
    return ((model, x.requires_grad_(), y), {**opts, "logits": logits},
            r"logits must depend on x .*or logits from another x\?\): .*not have been used in the graph"
            ) if _input_grad(name) else None


@case
def r_on_meta_device(name):  # NotImplementedError from r.to(g), before
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "r": torch.randn(10, device="meta")},
            r"r must be on the device of the model's output \(cpu\); got meta") if name == "spectreg" else None


@case
def r_sparse(name):
    model, x, y, opts = _mlp(name)
    return ((model, x, y), {**opts, "r": torch.randn(10).to_sparse()}, r"r must be a dense \(strided\) tensor"
            ) if name == "spectreg" else None


BAD = [(name, c) for name in NAMES for c, make in CASES.items() if make(name) is not None]


@pytest.mark.parametrize("name,case_name", BAD)
def test_bad_input_is_one_gradreg_error_naming_the_argument(name, case_name):
    """Through ``get(name).penalty``, which is the module-level function (checked below)."""
    args, kwargs, match = CASES[case_name](name)
    with pytest.raises(GradregError, match=match) as err:   # any other exception type fails the test
        regularizers.get(name).penalty(*args, **kwargs)
    message = str(err.value)
    assert message.startswith(f"{name}: ") and "\n" not in message, message


def test_every_regularizer_meets_the_general_cases():
    general = {"x_int", "x_list", "x_empty_batch", "x_cifar_shape_into_lenet", "x_wrong_width_into_toy",
               "y_wrong_batch", "unknown_option", "model_not_a_module", "model_output_1d", "logits_wrong_batch",
               "model_takes_two_inputs", "x_created_in_inference_mode", "x_nested", "x_sparse", "y_sparse"}
    input_grad = {"model_ignores_x", "model_detaches_x", "model_output_without_grad", "logits_under_no_grad",
                  "logits_from_another_x"}
    for name in NAMES:
        cases = {c for n, c in BAD if n == name}
        assert general <= cases and (input_grad <= cases) == _input_grad(name), name


def test_model_errors_keep_torch_s_error_as_the_cause():
    _, _, y, opts = _mlp("frobreg")
    with pytest.raises(GradregError) as err:
        regularizers.frobreg(LENET, torch.randn(B, 3, 32, 32), y)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "to have 1 channels, but got 3 channels" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_errors_from_inside_keep_torch_s_error_as_the_cause(name):
    """Model calls raising TypeError, and raw penalties failing after the checks, are wrapped too."""
    _, x, y, opts = _mlp(name)
    with pytest.raises(GradregError) as err:
        regularizers.get(name).penalty(nn.Bilinear(784, 784, 10), x, y, **opts)
    assert isinstance(err.value.__cause__, TypeError)
    if _input_grad(name):
        with pytest.raises(GradregError) as err:
            regularizers.get(name).penalty(_Constant(), x, y, **opts)
        assert isinstance(err.value.__cause__, RuntimeError)
        with pytest.raises(RuntimeError, match="not have been used in the graph"):   # raw: torch's own
            regularizers.get(name).raw(_Constant(), x, y, **opts)
    else:                                                  # no input gradient: a constant model is fine
        assert regularizers.get(name).penalty(_Constant(), x, y, **opts).shape == (B,)


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_is_refused_where_input_gradients_are_needed(name):
    model, x, y, opts = _mlp(name)
    with torch.inference_mode():
        if _input_grad(name):
            with pytest.raises(GradregError) as err:
                regularizers.get(name).penalty(model, x, y, **opts)
            assert str(err.value) == (f"{name}: input gradients cannot be taken in torch.inference_mode(); "
                                      "call it outside (torch.no_grad() is fine)")
        else:                                              # the confidence penalty: same value, no graph
            value = regularizers.get(name).penalty(model, x, y, **opts)
    if not _input_grad(name):
        assert torch.equal(value, regularizers.get(name).raw(model, x, y, **opts))


def test_a_seedstack_batch_error_passes_through():
    stack = SeedStack([models.build("mlp", in_features=4, hidden=3, depth=1) for _ in range(2)])
    with pytest.raises(GradregError, match="SeedStack of 2 members got a batch of 3 rows"):
        regularizers.frobreg(stack, torch.randn(3, 4))


# ------------------------------------------------------------------ valid inputs: exactly the raw value

def _lenet_dropout() -> nn.Module:
    torch.manual_seed(3)
    return models.build("lenet", head="dropout", filters=(3, 4)).train()


def _seedstack() -> nn.Module:
    torch.manual_seed(4)
    return SeedStack([models.build("mlp", in_features=6, hidden=5, depth=1, classes=4) for _ in range(2)])


SETUPS = {  # model, input shape, classes (None: regression, y float)
    "mlp": (lambda: MLP, (784,), 10),
    "lenet+dropout": (_lenet_dropout, (1, 28, 28), 10),
    "toy": (lambda: TOY, (1,), None),
    "seedstack": (_seedstack, (6,), 4),
}
VARIANTS = {  # extra user options per regularizer (K is filled in)
    "spectreg": [{}, {"spherical": True}, {"r": "K"}, {"r": "BK", "spherical": True}],
    "frobreg": [{}, {"vectorized": False}, {"vectorized": True}],
    "jacreg": [{}, {"vectorized": True}],
}


def _valid(name: str, setup: str, batch: int = 4):
    make, shape, classes = SETUPS[setup]
    model = make()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, *shape, generator=gen)
    if classes is None:
        y = torch.zeros(batch, dtype=torch.long) if name == "onehot" else torch.randn(batch, 1, generator=gen)
    else:
        y = torch.randint(classes, (batch,), generator=gen)
    return model, x, y, classes or 1


VALID = [(name, setup, i) for name in NAMES for setup in SETUPS for i in range(len(VARIANTS.get(name, [{}])))
         if not (setup == "lenet+dropout" and VARIANTS.get(name, [{}])[i].get("vectorized"))]  # CPU refuses


def _call(fn, name, model, x, y, K, variant, **extra):
    """Run ``fn`` from the same random state, with fresh generators: the values must agree bit for bit."""
    r = {"K": torch.linspace(-1, 1, K), "BK": torch.linspace(-1, 1, len(x) * K).view(len(x), K)}
    opts = {k: r[v] if k == "r" and isinstance(v, str) and v in r else v for k, v in variant.items()}
    reg = regularizers.get(name)
    if reg.needs_loss:
        opts["loss"] = "cross_entropy" if y.dtype == torch.long else "squared_error"
    if reg.random:
        opts["generator"] = torch.Generator().manual_seed(6)
    torch.manual_seed(7)                                   # dropout masks
    return fn(model, x, y, **opts, **extra)


@pytest.mark.parametrize("name,setup,variant", VALID)
def test_valid_inputs_give_exactly_the_raw_value(name, setup, variant):
    model, x, y, K = _valid(name, setup)
    reg, v = regularizers.get(name), VARIANTS.get(name, [{}])[variant]
    checked = _call(reg.penalty, name, model, x, y, K, v)
    raw = _call(reg.raw, name, model, x, y, K, v)
    assert checked.shape == (len(x),) and torch.equal(checked, raw)
    assert checked.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_shared_forward_pass_and_no_grad_give_the_raw_value(name):
    model, x, y, K = _valid(name, "lenet+dropout")
    reg = regularizers.get(name)
    x = x.requires_grad_(True)
    torch.manual_seed(8)
    g = model(x)                                          # one forward pass, one dropout mask
    shared = _call(reg.penalty, name, model, x, y, K, {}, logits=g)
    assert torch.equal(shared, _call(reg.raw, name, model, x, y, K, {}, logits=g))
    with torch.no_grad():
        checked = _call(reg.penalty, name, model, x, y, K, {})
        raw = _call(reg.raw, name, model, x, y, K, {})
    assert torch.equal(checked, raw) and checked.requires_grad == raw.requires_grad == reg.input_grad


def test_checked_class_labels_of_any_integer_dtype_are_cast_to_int64():
    model, x, y, K = _valid("onehot", "mlp")
    for dtype in (torch.int32, torch.uint8):
        for name in ("onehot", "datagrad"):
            reg = regularizers.get(name)
            assert torch.equal(reg.penalty(model, x, y.to(dtype)), reg.raw(model, x, y))


@pytest.mark.parametrize("name", NAMES)
def test_raw_is_the_unchecked_function(name):
    reg = regularizers.get(name)
    assert getattr(regularizers, name) is reg.penalty                  # module names are the checked ones
    assert reg.raw is not reg.penalty and reg.raw is getattr(regularizers, f"_{name}")
    assert reg.penalty.__wrapped__ is reg.raw and reg.penalty.__name__ == name
    assert inspect.signature(reg.penalty) == inspect.signature(reg.raw)
    model, x, y, _ = _valid(name, "mlp")
    with pytest.raises(Exception) as err:                  # raw: whatever torch or Python raises
        reg.raw(model, x.tolist(), y)
    assert not isinstance(err.value, GradregError)


# ------------------------------------------------------------------ options()

def test_options_lists_exactly_the_user_keywords():
    assert {name: regularizers.options(name) for name in NAMES} == {
        "datagrad": {}, "spectreg": {"r": (Tensor, NoneType), "spherical": (bool,)},
        "frobreg": {"vectorized": (bool, NoneType)}, "jacreg": {"vectorized": (bool, NoneType)},
        "onehot": {}, "random_onehot": {}, "confidence": {}}
    with pytest.raises(GradregError, match="unknown regularizer 'gradnorm'"):
        regularizers.options("gradnorm")


@pytest.mark.parametrize("lookup", [regularizers.get, regularizers.options])
@pytest.mark.parametrize("bad", [["frobreg"], {"frobreg": 1}, 3, None, b"frobreg"])
def test_lookup_by_a_non_str_name_is_one_gradreg_error(lookup, bad):
    with pytest.raises(GradregError, match=r"^regularizer name must be a str; got ") as err:
        lookup(bad)
    assert "\n" not in str(err.value)


def test_softmax_flag_marks_the_penalties_on_probabilities():
    assert {name for name in NAMES if regularizers.get(name).softmax} == {"jacreg", "confidence"}


@pytest.mark.parametrize("name", NAMES)
def test_softmax_penalties_are_identically_zero_for_one_output(name):
    """What the flag means: with K = 1, p ≡ 1; the other penalties do not vanish on the toy net."""
    model, x, y, opts = _toy(name)
    value = regularizers.get(name).penalty(model, x * 3, y, **opts)
    assert value.shape == (B,)
    assert bool((value == 0).all()) == regularizers.get(name).softmax


@pytest.mark.parametrize("name", NAMES)
def test_options_and_flags_cover_the_signature(name):
    """User options + what the loop supplies (logits always, loss / generator by flag) = the keywords."""
    reg = regularizers.get(name)
    keywords = {n for n, p in inspect.signature(reg.penalty).parameters.items() if p.kind is p.KEYWORD_ONLY}
    supplied = {"logits"} | ({"loss"} if reg.needs_loss else set()) | ({"generator"} if reg.random else set())
    assert keywords == set(regularizers.options(name)) | supplied
    assert reg.needs_labels == (name == "onehot")


@pytest.mark.parametrize("name", NAMES)
def test_options_types_are_what_the_checked_penalty_accepts(name):
    model, x, y, K = _valid(name, "mlp")
    good = {Tensor: torch.randn(K), NoneType: None, bool: True}
    for option, types in regularizers.options(name).items():
        for t in types:
            value = _call(regularizers.get(name).penalty, name, model, x, y, K, {option: good[t]})
            assert value.shape == (len(x),)
        with pytest.raises(GradregError, match=f"{option} must be"):
            _call(regularizers.get(name).penalty, name, model, x, y, K, {option: "bad"})
