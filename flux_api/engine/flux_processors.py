"""What this project's attention processors for diffusers' FluxAttention share (qk_rope.py's FusedRopeProcessor,
fp8_attention.py's Fp8AttentionProcessor): each is diffusers' FluxAttnProcessor (0.42) with one part swapped, so the
part after the attention, and how a processor replaces diffusers' own, are written here once."""

from __future__ import annotations


def project_out(attn, hidden_states, encoder_hidden_states):
    """diffusers' FluxAttnProcessor after the attention: `hidden_states` (B, S, H * D) of the text tokens then the
    image tokens, through the output projections (a double block: the text stream's its own); a single block's as is."""
    if encoder_hidden_states is None:
        return hidden_states
    encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
        [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
    return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


def install(transformer, processor_class, accepts=lambda attn: True) -> int:
    """A `processor_class()` for each of the transformer's FluxAttention modules that still has diffusers' own
    processor (so twice is once) and `accepts`, its attention backend and parallel config kept; how many."""
    from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

    installed = 0
    for attn in transformer.modules():
        old = getattr(attn, "processor", None)
        if type(attn) is FluxAttention and type(old) is FluxAttnProcessor and accepts(attn):
            new = processor_class()
            new._attention_backend, new._parallel_config = old._attention_backend, old._parallel_config
            attn.set_processor(new)
            installed += 1
    return installed
