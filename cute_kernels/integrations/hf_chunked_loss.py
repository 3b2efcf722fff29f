"""A Hugging Face causal LM's training loss through `chunked_linear_cross_entropy`: the
`chunked_loss=` option of `patch_nemotron_h`.

    remover = install_chunked_loss(model, chunk_tokens=None)   # model: NemotronHForCausalLM
    out = model(input_ids=ids, labels=ids)   # out.loss: Hugging Face's loss; out.logits is None
    remover.remove()

With `labels`, the model's forward runs Hugging Face's own forward with logits kept for no
position (`logits_to_keep` an empty index: the LM head makes a (batch, 0, vocab) tensor),
takes the final norm's output from the base model (a forward hook for the call) and
computes the loss as Hugging Face's `ForCausalLMLoss` does (labels shifted by one, padded
with `ignore_index`, or `shift_labels` as given; mean over the targets that are not
`ignore_index`, or the sum over `num_items_in_batch` when that is passed) with the LM head
and the cross-entropy in token chunks: the step never holds a tokens x vocab tensor.
`outputs.logits` is then None: ask without `labels` for logits (that call is Hugging
Face's forward untouched).  Everything else of the output (cache, hidden states) is
Hugging Face's.  `logits_to_keep` together with `labels` is refused.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ..checks import InputError
from .chunked_ce import chunked_linear_cross_entropy

LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")


def check_chunk_argument(chunked_loss) -> int | None:
    """`chunked_loss` as given to patch_nemotron_h -> tokens per chunk (0: the default for the
    vocabulary), or None when off."""
    if chunked_loss is False or chunked_loss is None:
        return None
    if chunked_loss is True:
        return 0
    if isinstance(chunked_loss, int) and chunked_loss >= 1:
        return chunked_loss
    raise InputError(f"chunked_loss must be False, True (chunk size from the vocabulary) or a positive number of "
                     f"tokens per chunk, got {chunked_loss!r}")


def check_causal_lm(model: nn.Module):
    """Refuses a model whose loss chunked_loss cannot reproduce (no LM head, another loss)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or not isinstance(getattr(model, "model", None), nn.Module):
        raise InputError(f"chunked_loss needs the causal LM (NemotronHForCausalLM: its lm_head computes the loss), "
                         f"got {type(model).__name__}")
    from transformers.loss.loss_utils import ForCausalLMLoss

    loss_fn = model.loss_function
    if getattr(loss_fn, "__func__", loss_fn) is not ForCausalLMLoss:
        raise InputError(f"chunked_loss reproduces transformers' ForCausalLMLoss; the model's loss_function is "
                         f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}")
    if "forward" in vars(model):
        raise InputError("chunked_loss: model.forward is already replaced on the instance (by another wrapper); "
                         "patch the plain model")


def causal_lm_loss(hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor, *, chunk_tokens: int | None,
                   ignore_index: int = -100, shift_labels: torch.Tensor | None = None,
                   num_items_in_batch=None) -> torch.Tensor:
    """transformers' ForCausalLMLoss(head(hidden).float(), labels, ...) without the logits."""
    if shift_labels is None:  # tokens < n predict n; the last position has no target
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = shift_labels.reshape(-1).to(hidden.device)
    if targets.numel() != hidden.size(0):
        raise InputError(f"labels hold {targets.numel()} targets for {hidden.size(0)} positions (shapes "
                         f"{tuple(shift_labels.shape)} and {tuple(hidden.shape)})")
    loss = chunked_linear_cross_entropy(hidden, head.weight, targets, head.bias, ignore_index=ignore_index,
                                        chunk_tokens=chunk_tokens or None,
                                        reduction="mean" if num_items_in_batch is None else "sum")
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


class ChunkedLossForward:
    """Installed as `model.forward` (an instance attribute over the class's); `remove()` takes it away."""

    def __init__(self, model: nn.Module, chunk_tokens: int):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.hf_forward = type(model).forward.__get__(model)  # the class's forward, bound
        self.signature = inspect.signature(self.hf_forward)
        self.var_keyword = next((p.name for p in self.signature.parameters.values()
                                 if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        model.forward = self

    def remove(self):
        if vars(self.model).get("forward") is self:
            del self.model.forward

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs).arguments
        call = {k: v for k, v in bound.items() if k != self.var_keyword}
        call.update(bound.get(self.var_keyword, {}))
        labels = call.pop("labels", None)
        if labels is None:
            return self.hf_forward(**call)
        keep = call.get("logits_to_keep", 0)
        if not (isinstance(keep, int) and keep == 0):
            raise InputError("chunked_loss: logits_to_keep with labels is not supported (the loss needs every "
                             "position's hidden state)")
        return_dict = call.pop("return_dict", None)
        call["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=labels.device)  # no logits at all
        seen = []
        hook = self.model.model.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
        try:
            out = self.hf_forward(**call, return_dict=True)
        finally:
            hook.remove()
        loss = causal_lm_loss(seen[-1], self.model.lm_head, labels, chunk_tokens=self.chunk_tokens,
                              **{k: call[k] for k in LOSS_KWARGS if k in call})
        out = type(out)(**{k: v for k, v in out.items() if k not in ("logits", "loss")}, loss=loss)
        if return_dict is None:
            return_dict = getattr(self.model.config, "return_dict", True)
        return out if return_dict else out.to_tuple()


def install_chunked_loss(model: nn.Module, chunk_tokens: int) -> ChunkedLossForward:
    """Checks `model` (check_causal_lm) and makes its labelled forward use the chunked loss;
    chunk_tokens 0: the default for the vocabulary."""
    check_causal_lm(model)
    return ChunkedLossForward(model, chunk_tokens)
