"""Training FLOPs counted from the architecture, to check ``torch.utils.flop_counter.FlopCounterMode`` against.

Two formulas, both for one training step (forward + backward) and both counting only what FlopCounterMode
counts (matrix products and convolutions; norms, activations and the optimizer are left out):

- a transformer (:func:`transformer_train_flops`): 6 x N x L + 14 (or 12) x depth x L^2 x width, with N the weights of
  the linear layers every token passes through, L the tokens of a sample; 6 = 2 FLOPs per multiply-add x 3
  passes (forward, gradient of the input, gradient of the weight). The attention term: forward QK^T and AV
  (2 x L^2 x width each), backward five such products (the flash kernel recomputes QK^T, then the gradients
  of V, of the scores, of Q and of K; four on the math path, which keeps the probabilities), over the full L x L grid: the kernel computes every score, the mask
  only hides some. FlopCounterMode itself (torch 2.x) has no formula for the CPU attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) and counts 0 for it: :func:`flop_counter` adds one;
- a network of convolutions (:func:`layer_train_flops`): per layer, its multiply-adds in one forward (output
  elements x input channels per group x kernel size) x 2 x 3 for a layer that trains, x 2 x 2 for a layer
  with one gradient fewer to compute (the first layer, whose input needs none; a frozen perceptual network
  on the reconstruction: forward + input gradient), x 2 for a frozen one on a constant input; the layers'
  shapes come from one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils import flop_counter as fc

aten = torch.ops.aten


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def flop_counter() -> fc.FlopCounterMode:
    """A FlopCounterMode that also counts the CPU attention kernel (as the CUDA ones are counted)."""
    return fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def transformer_train_flops(model: nn.Module, tokens: int, width: int, depth: int,
                            skip: tuple[str, ...] = (), recompute_scores: bool = True) -> dict[str, float]:
    """FLOPs of one sample's training step of a transformer over ``tokens`` tokens: the dense part
    (6 x linear weights x tokens), the attention part (14 x depth x tokens^2 x width) and their sum.
    Linear layers whose qualified name starts with one of ``skip`` (ones a token does not pass through, e.g.
    a text encoder) are left out. ``recompute_scores``: the flash kernel's backward recomputes QK^T (14); the
    math path, which CPU attention takes with dropout on, keeps the probabilities (12: twice the forward)."""
    weights = sum(m.weight.numel() for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and not name.startswith(skip))
    dense = 6.0 * weights * tokens
    attention = (14.0 if recompute_scores else 12.0) * depth * tokens**2 * width
    return {"linear_weights": weights, "tokens": tokens, "dense": dense, "attention": attention,
            "total": dense + attention}


def usam_train_flops(model: nn.Module) -> dict[str, float]:
    """:func:`transformer_train_flops` of a :class:`usam.models.usam.USAM` (class / action conditions: the
    text encoder, cross-attention and context layers are not counted). In training with attention dropout the
    CPU attention takes the math path (no recomputation), else the flash kernel."""
    dropout = model.training and any(block.attn.dropout > 0 for block in model.blocks)
    return transformer_train_flops(model, model.bounds[-1], model.width, len(model.blocks),
                                   skip=("text", "context_", *(f"blocks.{i}.cross" for i in range(len(model.blocks)))),
                                   recompute_scores=not dropout)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return out.numel() * (module.in_channels // module.groups) * kernel
    return out.numel() * module.in_features  # nn.Linear


def layer_train_flops(step: Callable[[], object], modules: list[nn.Module]) -> dict[str, float]:
    """FLOPs of one training step whose forward is ``step()``, from the multiply-adds of every convolution and
    linear layer under ``modules`` (hooked during that forward): x 6 where the layer trains and its input needs a
    gradient (forward, input gradient, weight gradient), x 4 where only the forward and one gradient run (frozen with an input that needs a gradient, or trained on an input that
    needs none), x 2 where only the forward runs. Returns the total and the multiply-adds by passes."""
    macs = {"three_passes": 0, "two_passes": 0, "forward_only": 0}

    def hook(module, inputs, out):
        grad = torch.is_grad_enabled()
        trains = grad and any(p.requires_grad for p in module.parameters(recurse=False))
        input_grad = grad and inputs[0].requires_grad
        kind = "three_passes" if trains and input_grad else "two_passes" if trains or input_grad else "forward_only"
        macs[kind] += _macs(module, out)

    handles = [m.register_forward_hook(hook) for root in modules for m in root.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    total = 6.0 * macs["three_passes"] + 4.0 * macs["two_passes"] + 2.0 * macs["forward_only"]
    return {"macs": macs, "total": total}
