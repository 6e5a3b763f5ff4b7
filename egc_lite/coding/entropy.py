"""Entropy models: helpers over CompressAI's ``EntropyBottleneck`` and ``GaussianConditional``.

The codecs own their entropy models as submodules (CompressAI style); the functions here
quantize, count bits, build and load the probability tables and fit a factorized prior;
:mod:`.range_coding` turns symbols into bytes with those tables.

Bit-exact decoding across machines
    Everything that decides which bits are written runs on the CPU in float32:
    tables are built on a CPU float32 copy of the module (:func:`update_tables`), and
    the symbols, medians, means and the scale-to-table indexes are computed from
    ``.detach().to("cpu", torch.float32)`` copies of the inputs. The integer tables
    (``_quantized_cdf``, ``_cdf_length``, ``_offset``, and ``scale_table``) are buffers,
    so they travel in the ``state_dict``: a decoder should *load* them
    (:func:`fit_table_buffers` makes ``load_state_dict`` accept their sizes) rather
    than rebuild them, because a rebuild on another CPU may differ in the last bit
    of a float and change a table entry. What this module cannot fix is a caller that
    computes ``scales`` differently on the two sides (e.g. a hyperprior decoder run on
    a GPU at encode time and on a CPU at decode time): compute the scales the same
    way on both sides (on the CPU, float32), since a scale that lands on the other
    side of a table boundary desynchronises the decoder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from ..errors import ParameterError

__all__ = [
    "CODER_PRECISION",
    "estimate_bits_factorized",
    "estimate_bits_gaussian",
    "fit_factorized",
    "bin_probabilities",
    "fit_table_buffers",
    "likelihood_bits",
    "quantize",
    "scale_indexes",
    "tables_ready",
    "update_tables",
]

CODER_PRECISION = 16  # compressai.ans works at 16-bit probability precision


_TABLE_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")


_CPU = torch.device("cpu")


def quantize(x: Tensor, mode: Literal["noise", "round", "ste"], means: Tensor | None = None) -> Tensor:
    """Quantize ``x`` for training or coding.

    ``"noise"``: ``x + U(-0.5, 0.5)`` (the differentiable training proxy; ``means`` does
    not change its distribution and is ignored). ``"round"``: ``round(x - means) + means``.
    ``"ste"``: the rounded value in the forward pass with the identity gradient
    (straight-through estimator).
    """
    if mode == "noise":
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    if mode not in ("round", "ste"):
        raise ParameterError(f"unknown quantization mode {mode!r}: use 'noise', 'round' or 'ste'")
    q = torch.round(x - means) + means if means is not None else torch.round(x)
    if mode == "round":
        return q
    return x + (q - x).detach()


def likelihood_bits(likelihoods: Tensor | Iterable[Tensor] | Mapping[str, Tensor]) -> Tensor:
    """Total information ``-sum(log2(p))`` of one or several likelihood tensors, differentiable.

    Accepts a tensor, an iterable of tensors, or a mapping such as CompressAI's
    ``{"y": ..., "z": ...}``; returns a 0-dim tensor (float32 or wider).
    """
    if isinstance(likelihoods, Tensor):
        items: list[Tensor] = [likelihoods]
    elif isinstance(likelihoods, Mapping):
        items = list(likelihoods.values())
    else:
        items = list(likelihoods)
    total: Tensor | None = None
    for p in items:
        bits = -torch.log2(p).sum()
        total = bits if total is None else total + bits
    return total if total is not None else torch.zeros(())


def _is_entropy_model(m: nn.Module) -> bool:
    return isinstance(m, (EntropyBottleneck, GaussianConditional))


def check_not_meta(module: nn.Module) -> None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_meta:
            raise ParameterError(
                f"{type(module).__name__} has tensors on the 'meta' device: load its weights before coding"
            )


def _cpu_float32(m: nn.Module) -> nn.Module:
    """``m`` itself if it already lives on the CPU in float32, else a CPU float32 deep copy."""
    check_not_meta(m)
    tensors = list(m.parameters()) + list(m.buffers())
    if all(t.device == _CPU and (not t.is_floating_point() or t.dtype == torch.float32) for t in tensors):
        return m
    return copy.deepcopy(m).to(_CPU, torch.float32)


def _default_scale_table() -> list[float]:
    from compressai.models.base import get_scale_table

    return [float(s) for s in get_scale_table()]


def update_tables(module: nn.Module, force: bool = True, update_quantiles: bool = False) -> None:
    """Build the CDF tables of every ``EntropyBottleneck`` / ``GaussianConditional`` inside ``module``.

    Tables are computed on a CPU float32 copy and written back into the module's buffers
    (on the module's device). A ``GaussianConditional`` with an empty ``scale_table``
    gets CompressAI's default table (64 scales from 0.11 to 256). With ``force=False``
    models whose tables exist are left alone. ``update_quantiles=True`` first refits an
    ``EntropyBottleneck``'s quantiles by bisection (more exact than the auxiliary loss).
    Call this after training, before coding, and save the ``state_dict`` afterwards.
    """
    for m in module.modules():
        if not _is_entropy_model(m):
            continue
        if not force and m._offset.numel() > 0:
            continue
        if getattr(m, "entropy_coder_precision", CODER_PRECISION) != CODER_PRECISION:
            raise ParameterError(f"entropy_coder_precision must be {CODER_PRECISION} for compressai.ans")
        check_not_meta(m)
        work = copy.deepcopy(m).to(_CPU, torch.float32)
        with torch.no_grad():
            if isinstance(m, EntropyBottleneck):
                work.update(force=True, update_quantiles=update_quantiles)
                if update_quantiles:
                    m.quantiles.data.copy_(work.quantiles.data.to(m.quantiles.device, m.quantiles.dtype))
            else:
                if work.scale_table.numel() == 0:
                    work.update_scale_table(_default_scale_table(), force=True)
                else:
                    work.update()
                m.scale_table = work.scale_table.to(m.scale_table.device, m.scale_table.dtype)
        device = m._offset.device
        for name in _TABLE_BUFFERS:
            setattr(m, name, getattr(work, name).to(device))


def tables_ready(module: nn.Module) -> bool:
    """Whether every entropy model inside ``module`` has its CDF tables built."""
    return all(m._offset.numel() > 0 for m in module.modules() if _is_entropy_model(m))


def fit_table_buffers(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
    """Resize the table buffers of the entropy models in ``module`` to their sizes in ``state_dict``.

    ``nn.Module.load_state_dict`` refuses buffers whose size changed (an unbuilt table is
    empty); call this first, then ``module.load_state_dict(state_dict)``. ``prefix`` is
    the key prefix of ``module`` inside ``state_dict`` (e.g. ``"codec."``).
    """
    for name, m in module.named_modules():
        if not _is_entropy_model(m):
            continue
        base = f"{prefix}{name}." if name else prefix
        names = _TABLE_BUFFERS + (("scale_table",) if isinstance(m, GaussianConditional) else ())
        for buf in names:
            key = base + buf
            if key in state_dict:
                old = getattr(m, buf)
                new = state_dict[key]
                if old.shape != new.shape:
                    setattr(m, buf, torch.empty(new.shape, dtype=old.dtype, device=old.device))


def as_cpu_float32(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ParameterError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ParameterError(f"{what} is on the 'meta' device")
    out = x.detach().to(_CPU, torch.float32)
    if not bool(torch.isfinite(out).all()):
        raise ParameterError(f"{what} holds NaN or infinite values")
    return out


def medians(bottleneck: EntropyBottleneck) -> Tensor:
    return bottleneck.quantiles.detach()[:, 0, 1].to(_CPU, torch.float32)  # (C,)


def check_bottleneck(bottleneck: EntropyBottleneck) -> None:
    if not isinstance(bottleneck, EntropyBottleneck):
        raise ParameterError(f"expected an EntropyBottleneck, got {type(bottleneck).__name__}")


def bin_probabilities(bottleneck: EntropyBottleneck, values: Tensor) -> Tensor:
    """:math:`P_c(v) = F_c(v + \\frac12) - F_c(v - \\frac12)` under the learned CDF of every channel ``c``, for each
    value ``v`` of the 1-D ``values``: shape ``(C, len(values))``. The continuous function the factorized
    tables are built from (CompressAI's ``EntropyBottleneck._likelihood``), without gradients."""
    channels = bottleneck.quantiles.shape[0]
    with torch.no_grad():
        lik, _, _ = bottleneck._likelihood(values.reshape(1, 1, -1).expand(channels, 1, -1).contiguous(), stop_gradient=True)
    return lik[:, 0, :]


def estimate_bits_factorized(bottleneck: EntropyBottleneck, x: Tensor) -> float:
    """Bits the bottleneck's (continuous) model assigns to ``round(x - medians)`` (eval mode, CPU float32)."""
    check_bottleneck(bottleneck)
    x = as_cpu_float32(x, "x")
    if x.dim() < 2:
        raise ParameterError(f"expected a tensor of shape (N, C, ...), got {tuple(x.shape)}")
    m = _cpu_float32(bottleneck)
    with torch.no_grad():
        _, lik = m(x, training=False)
    return float(likelihood_bits(lik.double()))


def check_conditional(conditional: GaussianConditional) -> None:
    if not isinstance(conditional, GaussianConditional):
        raise ParameterError(f"expected a GaussianConditional, got {type(conditional).__name__}")


def scale_indexes(conditional: GaussianConditional, scales: Tensor) -> Tensor:
    """Table index of each scale, as ``GaussianConditional.build_indexes``, on the CPU in float32."""
    table = conditional.scale_table.detach().to(_CPU, torch.float32).reshape(-1)
    if table.numel() == 0:
        raise ParameterError("the GaussianConditional has an empty scale_table: call update_tables(model) first")
    bound = conditional.lower_bound_scale.bound.detach().to(_CPU, torch.float32).reshape(-1)[0]
    s = torch.maximum(scales, bound).reshape(-1).contiguous()
    # Index = number of table entries (all but the last) strictly below the scale.
    return torch.searchsorted(table[:-1].contiguous(), s, right=False).to(torch.int64)


def means_like(means: Tensor | None, like: Tensor) -> Tensor | None:
    if means is None:
        return None
    m = as_cpu_float32(means, "means")
    try:
        return m.expand_as(like)
    except RuntimeError as exc:
        raise ParameterError(f"means of shape {tuple(m.shape)} do not broadcast to {tuple(like.shape)}") from exc


def estimate_bits_gaussian(
    conditional: GaussianConditional, y: Tensor, scales: Tensor, means: Tensor | None = None
) -> float:
    """Bits the Gaussian model assigns to ``round(y - means)`` (eval mode, CPU float32)."""
    check_conditional(conditional)
    y = as_cpu_float32(y, "y")
    s = as_cpu_float32(scales, "scales")
    mu = means_like(means, y)
    m = _cpu_float32(conditional)
    with torch.no_grad():
        _, lik = m(y, s, mu, training=False)
    return float(likelihood_bits(lik.double()))


def fit_factorized(bottleneck: EntropyBottleneck, sample: Callable[[torch.Generator], Tensor], steps: int,
                   seed: int = 0, lr: float = 0.02, aux_lr: float = 0.05) -> EntropyBottleneck:
    """Fit a factorized prior to data drawn by ``sample(generator)`` for ``steps`` steps (rate
    :math:`-\\log_2 p(\\tilde y)` per symbol, plus CompressAI's auxiliary quantile loss on its own
    optimizer), then build its tables. For demonstrations, tests and benchmarks."""
    torch.manual_seed(seed)
    main = torch.optim.Adam([p for n, p in bottleneck.named_parameters() if n != "quantiles"], lr=lr)
    aux = torch.optim.Adam([bottleneck.quantiles], lr=aux_lr)
    g = torch.Generator().manual_seed(seed + 1)
    bottleneck.train()
    for _ in range(steps):
        x = sample(g)
        _, lik = bottleneck(x)
        loss = likelihood_bits(lik) / x.numel()
        main.zero_grad()
        loss.backward()
        main.step()
        aux.zero_grad()
        bottleneck.loss().backward()
        aux.step()
    bottleneck.eval()
    update_tables(bottleneck, update_quantiles=True)
    return bottleneck
