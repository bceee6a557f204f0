"""What the backends' fused paths share (fp8_fused.py, bf16_fused.py): diffusers' FLUX block forwards with the
MLP's two layers given, and the loop that swaps them into a transformer's blocks (instances only)."""

from __future__ import annotations

import types
from typing import Callable

import torch


def single_block_forward(mlp: Callable, out: Callable) -> Callable:
    """diffusers' FluxSingleTransformerBlock.forward (0.42), with `mlp(block, x)` making the MLP's hidden states
    from the normed input and `out(block, attention, mlp_hidden)` computing proj_out(cat([attention, gelu(mlp_hidden)]))."""
    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
        mlp_hidden_states = mlp(self, norm_hidden_states)
        attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                                **(joint_attention_kwargs or {}))
        hidden_states = residual + gate.unsqueeze(1) * out(self, attn_output, mlp_hidden_states)
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]

    return forward


def gelu_tanh(module) -> bool:
    return getattr(module, "approximate", None) == "tanh"


def install(transformer, single: tuple[Callable, Callable], feed_forward: tuple[Callable, Callable]) -> int:
    """Swap `single`'s forward into each single block and `feed_forward`'s into each feed-forward (diffusers'
    FeedForward: GELU tanh, dropout, Linear) where their check (block -> bool) says the fused code applies;
    diffusers' forward stays elsewhere. Each is (check, forward). The number swapped. Before compiling."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    fused = 0
    for module in transformer.modules():
        if type(module) is FluxSingleTransformerBlock and gelu_tanh(module.act_mlp) and single[0](module):
            module.forward = types.MethodType(single[1], module)
            fused += 1
        elif (type(module) is FeedForward and len(module.net) == 3 and gelu_tanh(module.net[0])
              and type(module.net[1]) is torch.nn.Dropout and feed_forward[0](module)):
            module.forward = types.MethodType(feed_forward[1], module)
            fused += 1
    return fused
