"""The tiny FLUX.1: the model every machine can run, the default, and the one the tests use; and the
random-weight builders (tiny and full size) that the benchmarks and a few tests use.

`--model tiny` loads the trained drawing model shipped in `flux_api/tiny_model/` (FLUX.1-dev's
architecture at toy size, 2+2 transformer blocks, 2-layer CLIP and T5 encoders, a 4-level VAE, in the
real diffusers folder format, so through exactly the same `from_pretrained` path as the real model).
It was trained by `flux_api.tiny_train` to draw one coloured circle, square or triangle on a
background, as a prompt says ("a small red circle in the top left on a blue background"); nothing is
built or trained at start.

`build_random_pipeline(size)` builds the same architecture ("tiny") or FLUX.1-dev's ("full") with
random weights, for the GPU benchmarks and `flux_api.random_model`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# The trained tiny model, shipped with the package (flux_api/tiny_train/export.py writes it).
SHIPPED_TINY = Path(__file__).resolve().parent.parent / "tiny_model"

# Words the tokenizers learn. Enough of them that ordinary prompts map to distinct ids instead of
# collapsing onto the unknown token (a carelessly trained tokenizer does exactly that).
_WORDS = """
a an the of in on at by with and or to from over under near above below beside behind into through
photo painting drawing sketch render illustration portrait landscape closeup macro wide shot view
cat dog bird horse fox owl wolf bear lion tiger fish whale dragon robot astronaut knight wizard girl
boy man woman child people crowd city street house castle tower bridge lighthouse cliff mountain
mountains hill valley river lake sea ocean beach island forest tree trees flower flowers garden field
desert snow ice rain storm cloud clouds sky sun sunset sunrise moon stars night day dusk dawn fog
red orange yellow green blue purple pink black white gray grey golden silver bright dark colorful
beautiful old new small big tiny huge tall ancient futuristic cyberpunk fantasy realistic detailed
soft sharp blurry low high quality cinematic lighting dramatic warm cold vivid pastel neon glowing
oil watercolor pencil digital art style anime studio film camera lens bokeh depth hdr 4k 8k
sitting standing running flying walking sleeping reading holding wearing looking smiling floating
hat coat dress glasses book cup table chair window door car bicycle train boat ship plane rocket
circle square triangle shape something medium large left right top bottom center middle background
""".split()


def _corpus() -> list[str]:
    # Every word alone, and in short phrases, so merges and unigram pieces cover whole words.
    phrases = [" ".join(_WORDS[i : i + 6]) for i in range(0, len(_WORDS), 3)]
    return _WORDS + phrases * 4


def _train_tokenizers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPTokenizer, T5TokenizerFast

    corpus = _corpus()
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1000,
            special_tokens=["<|startoftext|>", "<|endoftext|>"],
            end_of_word_suffix="</w>",
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    clip_tok = CLIPTokenizer(
        tokenizer_object=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.train_from_iterator(
        corpus,
        trainers.UnigramTrainer(vocab_size=1000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"),
    )
    uni.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", uni.token_to_id("</s>"))]
    )
    t5_tok = T5TokenizerFast(
        tokenizer_object=uni, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0, model_max_length=512
    )
    return clip_tok, t5_tok


# Component sizes. "tiny" is the test/default model; "full" is FLUX.1-dev's real architecture
# (CLIP ViT-L/14 text, T5 v1.1 XXL encoder, the 12B MMDiT, the 16-channel VAE) with random weights:
# it times and weighs exactly like the real model, for GPU benchmarks where no download is possible.
# "tiny" is the shipped model's architecture (flux_api/tiny_train/model.py), so that random LoRAs made
# for it fit the trained model.
SIZES = {
    "tiny": dict(
        clip=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, projection_dim=64),
        t5=dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        transformer=dict(num_layers=2, num_single_layers=2, attention_head_dim=32, num_attention_heads=4,
                         joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=(8, 12, 12)),
        vae=dict(block_out_channels=[16, 32, 64, 64], layers_per_block=1, norm_num_groups=8),
    ),
    "full": dict(
        clip=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  projection_dim=768, hidden_act="quick_gelu"),
        t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32),
        transformer=dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                         joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
        vae=dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, sample_size=1024),
    ),
}


def build_random_pipeline(size: str = "tiny", device: str = "cpu", dtype=None):
    """Build a FLUX.1 pipeline with random weights (fixed seed) in memory."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = SIZES[size]
    clip_tok, t5_tok = _train_tokenizers()
    clip_cfg = CLIPTextConfig(
        vocab_size=1024 if size == "tiny" else 49408, max_position_embeddings=77, **cfg["clip"],
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
    )
    t5_cfg = T5Config(vocab_size=1024 if size == "tiny" else 32128, feed_forward_proj="gated-gelu", dropout_rate=0.0, **cfg["t5"])
    old_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        torch.set_default_dtype(dtype or torch.float32)
        try:
            # eval(): a model built from a config starts in training mode, with dropout on.
            clip = CLIPTextModel(clip_cfg).eval()
            t5 = T5EncoderModel(t5_cfg).eval()
            transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=True, **cfg["transformer"]).eval()
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611, **cfg["vae"],
            ).eval()
        finally:
            torch.set_default_dtype(old_dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )


def tiny_model_dir(cache_dir: Path | None = None) -> Path:
    """The folder of the tiny model: the trained one shipped with the package (`cache_dir`, where an
    earlier version built a random one, is no longer used for it)."""
    return SHIPPED_TINY


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """The tiny model's folder, after checking that it is there (nothing is built at start)."""
    target = tiny_model_dir(cache_dir)
    if not (target / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the tiny model is missing from {target}: reinstall flux_api, or retrain it with "
            "`python -m flux_api.tiny_train` (see flux_api/tiny_train/README.md)")
    return target
