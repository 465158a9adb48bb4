"""Activations and gradients of a Hugging Face model at the modules families.md §3 names,
captured with forward hooks (and the eager attention function, wrapped), independently of actq's
engine. Keys are actq's (location, layer) pairs; tensors are per batch row as actq shapes them."""

from __future__ import annotations

import contextlib
import importlib

import torch

MODULES = {  # family -> (modeling module, base attr, embed, final norm, attention, mlp in, mlp out)
    "llama": ("llama", "model", "embed_tokens", "norm", "self_attn", "gate_proj", "down_proj"),
    "qwen2": ("qwen2", "model", "embed_tokens", "norm", "self_attn", "gate_proj", "down_proj"),
    "mistral": ("mistral", "model", "embed_tokens", "norm", "self_attn", "gate_proj", "down_proj"),
    "gpt_neox": (
        "gpt_neox",
        "gpt_neox",
        "embed_in",
        "final_layer_norm",
        "attention",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ),
}


def _norm_scale(x: torch.Tensor, centred: bool, eps: float) -> torch.Tensor:
    if centred:
        x = x - x.mean(dim=-1, keepdim=True)
    return torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


class Capture:
    """Run `hf` once with hooks; `.values[key]` are tensors (grads retained for backward)."""

    def __init__(self, hf, family: str, vocab: int, edits: dict | None = None):
        self.hf, self.family, self.vocab = hf, family, vocab
        self.values: dict = {}
        self.edits = edits or {}  # key -> fn(tensor) -> tensor, applied to the module's tensor
        self.names = MODULES[family]
        cfg = hf.config
        self.centred = family == "gpt_neox"
        self.eps = cfg.layer_norm_eps if self.centred else cfg.rms_norm_eps
        self.parallel = self.centred and cfg.use_parallel_residual

    def _keep(self, key, x):
        if key in self.edits:
            x = self.edits[key](x)
        if x.requires_grad:
            x.retain_grad()
        self.values[key] = x
        return x

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        handles = []
        modeling_name, base_name, embed, final, attn, mlp_in, mlp_out = self.names
        base = getattr(self.hf, base_name)
        modeling = importlib.import_module(
            f"transformers.models.{modeling_name}.modeling_{modeling_name}"
        )

        def out_hook(key):
            def hook(module, args, output):
                first = output[0] if isinstance(output, tuple) else output
                kept = self._keep(key, first)
                return (kept, *output[1:]) if isinstance(output, tuple) else kept

            return hook

        def in_hook(key, scale_key=None):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                if scale_key is not None:
                    self.values[scale_key] = _norm_scale(x, self.centred, self.eps)
                if key is None:
                    return None
                x = self._keep(key, x)
                return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

            return hook

        handles.append(
            getattr(base, embed).register_forward_hook(out_hook(("resid.post_emb", None)))
        )
        handles.append(
            getattr(base, final).register_forward_pre_hook(
                in_hook(None, ("resid.ln_f.scale", None)), with_kwargs=True
            )
        )
        for layer, block in enumerate(base.layers):
            handles += self._layer_hooks(layer, block, attn, mlp_in, mlp_out, in_hook, out_hook)
        original = modeling.eager_attention_forward
        with contextlib.ExitStack() as stack:
            stack.callback(lambda: [h.remove() for h in handles])
            modeling.eager_attention_forward = self._eager(original)
            stack.callback(setattr, modeling, "eager_attention_forward", original)
            logits = self.hf(tokens).logits[..., : self.vocab]
        if logits.requires_grad:
            logits.retain_grad()
        self.values[("logits", None)] = logits
        return logits

    def _layer_hooks(self, layer, block, attn, mlp_in, mlp_out, in_hook, out_hook):
        a = getattr(block, attn)
        o_proj = a.o_proj if hasattr(a, "o_proj") else a.dense
        mlp = block.mlp
        post_key = None if self.parallel else ("resid.post_attn", layer)
        hs = [
            block.input_layernorm.register_forward_pre_hook(
                in_hook(None, ("attn_ln.scale", layer)), with_kwargs=True
            ),
            o_proj.register_forward_pre_hook(in_hook(("attn.v_out", layer)), with_kwargs=True),
            a.register_forward_hook(out_hook(("resid.delta_attn", layer))),
            block.post_attention_layernorm.register_forward_pre_hook(
                in_hook(post_key, ("mlp_ln.scale", layer)), with_kwargs=True
            ),
            getattr(mlp, mlp_in).register_forward_hook(out_hook(("mlp.pre_act", layer))),
            getattr(mlp, mlp_out).register_forward_pre_hook(
                in_hook(("mlp.post_act", layer)), with_kwargs=True
            ),
            mlp.register_forward_hook(out_hook(("resid.delta_mlp", layer))),
            block.register_forward_hook(out_hook(("resid.post_mlp", layer))),
        ]
        a._capture_layer = layer
        return hs

    def _eager(self, original):
        def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            layer = module._capture_layer
            for name, x in (("q", query), ("k", key), ("v", value)):
                if x.requires_grad:
                    x.retain_grad()
                self.values[(f"attn.{name}_hf", layer)] = x
            rep = query.shape[1] // key.shape[1]
            k = key.repeat_interleave(rep, dim=1)
            v = value.repeat_interleave(rep, dim=1)
            self.values[("attn.q", layer)] = (query * scaling**0.5).transpose(1, 2)
            self.values[("attn.k", layer)] = (k * scaling**0.5).transpose(1, 2)
            self.values[("attn.v", layer)] = v.transpose(1, 2)
            logits = torch.matmul(query, k.transpose(2, 3)) * scaling
            self.values[("attn.qk_logits", layer)] = logits.permute(0, 2, 3, 1)
            self.values[("attn.mask", layer)] = attention_mask
            out, weights = original(
                module, query, key, value, attention_mask, scaling, dropout, **kwargs
            )
            if ("attn.qk_probs", layer) in self.edits:
                weights = self.edits[("attn.qk_probs", layer)](weights.permute(0, 2, 3, 1))
                weights = weights.permute(0, 3, 1, 2)
                out = torch.matmul(weights, v).transpose(1, 2).contiguous()
            if weights.requires_grad:
                weights.retain_grad()
            self.values[("attn.qk_probs_hf", layer)] = weights
            return out, weights

        return eager

    def get(self, key, row: int = 0) -> torch.Tensor:
        """The captured value at `key`, actq's layout."""
        if key[0] == "attn.qk_probs":
            return self.values[("attn.qk_probs_hf", key[1])][row].permute(1, 2, 0)
        x = self.values[key][row]
        if key[0] == "attn.v_out":
            return x.reshape(x.shape[0], self.hf.config.num_attention_heads, -1)
        return x

    def kv_grad(self, key, row: int = 0) -> torch.Tensor:
        """The gradient at HF's query / key / value [T, heads, e] (K/V: per K/V head)."""
        name = {"attn.q": "attn.q_hf", "attn.k": "attn.k_hf", "attn.v": "attn.v_hf"}[key[0]]
        return self.values[(name, key[1])].grad[row].transpose(0, 1)

    def grad(self, key, row: int = 0) -> torch.Tensor:
        if key[0] == "attn.qk_probs":
            return self.values[("attn.qk_probs_hf", key[1])].grad[row].permute(1, 2, 0)
        g = self.values[key].grad[row]
        if key[0] == "attn.v_out":
            return g.reshape(g.shape[0], self.hf.config.num_attention_heads, -1)
        return g
