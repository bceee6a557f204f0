"""The tiny drawing model's architecture: FLUX.1's classes at toy sizes, and building them.

Needs torch, diffusers and transformers' model classes only (no tokenizers), so the training run can
build it on a machine that has nothing else. Token ids here match the tokenizers of `prepare.py`.
"""

from __future__ import annotations

CLIP = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
            projection_dim=64, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
T5 = dict(vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
          dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TRANSFORMER = dict(patch_size=1, in_channels=64, guidance_embeds=True, num_layers=2, num_single_layers=2,
                   attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
                   axes_dims_rope=(8, 12, 12))
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, use_quant_conv=False, use_post_quant_conv=False,
           block_out_channels=[16, 32, 64, 64], layers_per_block=1, norm_num_groups=8, sample_size=256)
T5_LENGTH = 512  # the services' max_sequence_length: the pipeline pads T5's input to it, with no mask
CLIP_LENGTH = 77


def build(seed: int = 0, device: str = "cpu", vae_shift: float = 0.0, vae_scale: float = 1.0) -> dict:
    """The four models, randomly initialised from `seed`, in float32, in eval mode."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return dict(
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)).eval(),
            text_encoder_2=T5EncoderModel(T5Config(**T5)).eval(),
            transformer=FluxTransformer2DModel(**TRANSFORMER).eval(),
            vae=AutoencoderKL(**VAE, shift_factor=vae_shift, scaling_factor=vae_scale).eval(),
        )


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)
