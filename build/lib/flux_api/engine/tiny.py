"""The tiny random FLUX.1 pipeline: the model every machine can run, and the one the tests use.

It has the real FLUX.1-dev architecture at toy sizes (1+1 transformer blocks, 2-layer CLIP and T5
encoders, a 4-level VAE), tokenizers trained here with `tokenizers`, and is saved in the real
diffusers folder format, so it loads through exactly the same `from_pretrained` path as the real
model. Building is deterministic: the same recipe gives the same weights on every machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

# Bump when the recipe changes, so that a cached build of an older recipe is never reused.
TINY_VERSION = "v1"

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
SIZES = {
    "tiny": dict(
        clip=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        t5=dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
        transformer=dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
        vae=dict(block_out_channels=[8] * 4, layers_per_block=1, norm_num_groups=4),
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


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / f"tiny-flux-{TINY_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return the folder of the tiny model, building and saving it once if it is not there yet.

    Two services starting at once must not both write it: a file lock serialises the build, and the
    folder appears by an atomic rename, so a reader never sees half a model.
    """
    target = tiny_model_dir(cache_dir)
    cache_dir = target.parent
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".tiny-flux-{TINY_VERSION}.lock")):
        if (target / "model_index.json").is_file():
            return target
        log.info("building the tiny random FLUX model in %s", target)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache_dir))
        try:
            build_random_pipeline("tiny").save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
