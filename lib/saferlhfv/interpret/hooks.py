"""Read and write the decoder's activations by layer, for any supported VLM family.

Two places of the decoder carry what the interpretability methods of this project read:

* the **residual stream** after decoder layer ``l`` (``hidden [B, T, H]``), what ShiftDC projects
  on a safety direction and edits (:mod:`saferlhfv.interpret.shiftdc`);
* the **MLP neurons** of layer ``l``: the input of its ``down_proj`` (``act_fn(gate_proj(x)) *
  up_proj(x)``, ``[B, T, I]``), what the safety-neuron method scores and patches
  (:mod:`saferlhfv.interpret.neurons`).

LLaVA (a Llama / Mistral decoder) and Qwen2-VL / Qwen2.5-VL share that layout
(``language_model.layers[l]`` with ``.mlp.down_proj``), also inside a peft wrapper, so the same
four context managers serve the tiny models and the 7B ones:

==================  ==============================================================================
:func:`record_hidden`  every forward pass appends each layer's output ``[B, T, H]`` to a list
:func:`edit_hidden`    a function of each layer's output replaces it (``None`` keeps it)
:func:`record_mlp`     every forward pass appends each layer's neurons ``[B, T, I]``
:func:`edit_mlp`       a function of each layer's neurons replaces them before ``down_proj``
==================  ==============================================================================

Under ``generate`` with the KV cache, the first forward pass (the *prefill*) covers the whole
prompt (``T`` = prompt length) and each later one a single new token (``T = 1``): an edit that
should act during the prefill only checks ``hidden.shape[1] > 1``.

Hooks are removed when the ``with`` block ends, also on an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from saferlhfv.models.factory import language_model

__all__ = [
    "decoder_layers",
    "num_layers",
    "num_neurons",
    "record_hidden",
    "edit_hidden",
    "record_mlp",
    "edit_mlp",
    "at_last_prompt_token",
]

#: what a recording context yields: layer -> the activation of each forward pass, in order.
Recording = dict[int, list[torch.Tensor]]
#: an edit: the activation ``[B, T, D]`` in, its replacement (same shape) or ``None`` (unchanged) out.
Edit = Callable[[torch.Tensor], torch.Tensor | None]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a LLaVA or Qwen2-VL model (also inside a peft wrapper), in order."""
    return language_model(model).layers


def num_layers(model: torch.nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def num_neurons(model: torch.nn.Module) -> int:
    """MLP neurons per decoder layer (the intermediate size: ``down_proj``'s input width)."""
    return decoder_layers(model)[0].mlp.down_proj.in_features


def _layers(model: torch.nn.Module, layers: Iterable[int] | None) -> list[int]:
    n = num_layers(model)
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the decoder has {n} layers (0..{n - 1})")
    return chosen


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _first(output):
    """A decoder layer returns its hidden states, or (in older transformers) a tuple starting with them."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_hidden(model: torch.nn.Module, layers: Iterable[int] | None = None) -> Iterator[Recording]:
    """Record the residual stream after each of ``layers`` (all when None).

    Yields:
        ``{layer: [hidden [B, T, H] of each forward pass, in order]}`` (detached, float32), filled
        while the block runs. Layer ``l``'s entry equals ``output_hidden_states[l + 1]`` of the same
        pass for every layer but the last (whose ``output_hidden_states`` entry has the final norm
        applied).
    """
    out: dict[int, list[torch.Tensor]] = {i: [] for i in _layers(model, layers)}
    blocks = decoder_layers(model)

    def hook(i):
        def fn(module, args, output):
            out[i].append(_first(output).detach().float())

        return fn

    with _hooks([blocks[i].register_forward_hook(hook(i)) for i in out]):
        yield out


@contextmanager
def edit_hidden(model: torch.nn.Module, edits: dict[int, Edit]) -> Iterator[None]:
    """Replace the residual stream after layer ``l`` by ``edits[l](hidden)`` on every forward pass.

    Args:
        edits: layer -> function of ``hidden [B, T, H]`` returning its replacement, or ``None`` to
            keep it. The next layer (and the final norm and LM head) read the replacement.
    """
    blocks = decoder_layers(model)
    _layers(model, edits)

    def hook(fn):
        def run(module, args, output):
            hidden = _first(output)
            new = fn(hidden)
            if new is None:
                return None
            if new.shape != hidden.shape:
                raise ValueError(f"an edit returned shape {tuple(new.shape)} for hidden states {tuple(hidden.shape)}")
            new = new.to(hidden.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return run

    with _hooks([blocks[i].register_forward_hook(hook(fn)) for i, fn in edits.items()]):
        yield


@contextmanager
def record_mlp(model: torch.nn.Module, layers: Iterable[int] | None = None) -> Iterator[Recording]:
    """Record the MLP neurons (``down_proj``'s input) of each of ``layers`` (all when None).

    Yields:
        ``{layer: [activations [B, T, I] of each forward pass, in order]}`` (detached, float32).
    """
    out: dict[int, list[torch.Tensor]] = {i: [] for i in _layers(model, layers)}
    blocks = decoder_layers(model)

    def hook(i):
        def fn(module, args):
            out[i].append(args[0].detach().float())

        return fn

    with _hooks([blocks[i].mlp.down_proj.register_forward_pre_hook(hook(i)) for i in out]):
        yield out


@contextmanager
def edit_mlp(model: torch.nn.Module, edits: dict[int, Edit]) -> Iterator[None]:
    """Replace the MLP neurons of layer ``l`` by ``edits[l](activations)`` before ``down_proj`` reads them.

    Args:
        edits: layer -> function of ``activations [B, T, I]`` returning the replacement, or ``None``.
    """
    blocks = decoder_layers(model)
    _layers(model, edits)

    def hook(fn):
        def run(module, args):
            act = args[0]
            new = fn(act)
            if new is None:
                return None
            if new.shape != act.shape:
                raise ValueError(f"an edit returned shape {tuple(new.shape)} for activations {tuple(act.shape)}")
            return (new.to(act.dtype), *args[1:])

        return run

    with _hooks([blocks[i].mlp.down_proj.register_forward_pre_hook(hook(fn)) for i, fn in edits.items()]):
        yield


@torch.no_grad()
def at_last_prompt_token(
    model: torch.nn.Module,
    processor,
    images,
    questions,
    *,
    record: Callable[..., AbstractContextManager[Recording]] = record_hidden,
    layers: Iterable[int] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """What ``record`` reads at the last prompt token (where the answer starts), one forward pass per batch.

    Prompts are left padded, so the last position of every row is its last real token.

    Args:
        images, questions: ``N`` pictures and their questions (the chat template adds the rest).
        record: :func:`record_hidden` (the residual stream, ``D = H``) or :func:`record_mlp` (neurons, ``D = I``).
        layers: decoder layers to read (all when None).

    Returns:
        ``[N, L, D]`` float32 on the CPU, layers in the order given.
    """
    from saferlhfv.models.generation import VISION_KEYS, encode_prompts, model_inputs

    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    chosen = _layers(model, layers)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(questions), batch_size):
            stop = start + batch_size
            enc = encode_prompts(processor, list(images[start:stop]), list(questions[start:stop])).to(device)
            vision = {k: enc[k] for k in VISION_KEYS if k in enc}
            with record(model, chosen) as rec:
                model(**model_inputs(enc["input_ids"], enc["attention_mask"], vision), use_cache=False)
            out.append(torch.stack([rec[i][0][:, -1] for i in chosen], dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
