"""Step 1 of training (where `tokenizers` and transformers' tokenizer classes are installed): train
the two tokenizers once and save them, and tokenize every prompt of the grammar exactly as the
pipeline will (CLIP padded to 77, T5 to 512), so the training run needs no tokenizer at all.

    python -m flux_api.tiny_train.prepare --out DIR     # DIR/tokenizer, DIR/tokenizer_2, DIR/prompts.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

T5_KEEP = 32  # T5 ids kept per prompt; the rest are padding (id 0) up to 512


def tokenizers():
    """(CLIP's, T5's) tokenizers for the drawing model. CLIP's is the byte-level BPE that
    `engine.tiny` trains; T5's is a Unigram whose pieces are the whole words of that vocabulary (plus
    single characters for anything else), laid out here rather than trained, so it is the same on
    every machine and never splits "triangle" into four pieces. CLIP's lowercases its input (T5's
normalizer does not survive transformers' save and load, so T5 sees case: the grammar is lowercase)."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    from ..engine.tiny import _WORDS, _train_tokenizers

    clip_tok, _ = _train_tokenizers()
    clip_tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    chars = sorted(set("".join(_WORDS)) | set(string.ascii_letters + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -5.0) for w in dict.fromkeys(_WORDS)]
    vocab += [("\u2581", -8.0)] + [(c, -10.0) for c in chars] + [("\u2581" + c, -10.0) for c in chars]
    uni = Tokenizer(models.Unigram(vocab, unk_id=2))
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t5_tok = T5TokenizerFast(tokenizer_object=uni, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                             model_max_length=512)
    return clip_tok, t5_tok


def prepare(out: Path) -> Path:
    import torch

    from .grammar import held_out, prompt_table, words
    from .model import CLIP, CLIP_LENGTH, T5, T5_LENGTH

    out.mkdir(parents=True, exist_ok=True)
    clip_tok, t5_tok = tokenizers()
    assert clip_tok.bos_token_id == CLIP["bos_token_id"] and clip_tok.eos_token_id == CLIP["eos_token_id"]
    assert t5_tok.pad_token_id == T5["pad_token_id"] and t5_tok.eos_token_id == T5["eos_token_id"]
    clip_tok.save_pretrained(out / "tokenizer")
    t5_tok.save_pretrained(out / "tokenizer_2")
    # what the pipeline will load must tokenize as what was trained on
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tok, t5_tok = CLIPTokenizer.from_pretrained(out / "tokenizer"), T5TokenizerFast.from_pretrained(out / "tokenizer_2")
    table = prompt_table()
    texts = [t for t, _ in table]
    clip_ids = clip_tok(texts, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt").input_ids
    t5_ids = t5_tok(texts, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt").input_ids
    assert (t5_ids[:, T5_KEEP:] == T5["pad_token_id"]).all(), "a prompt is longer than T5_KEEP tokens"
    for w in words():
        assert clip_tok.unk_token_id not in clip_tok(w).input_ids[1:-1], f"CLIP's tokenizer does not know {w!r}"
        assert t5_tok(w).input_ids[:-1] == [t5_tok.convert_tokens_to_ids("\u2581" + w)], f"T5 splits {w!r}"
    torch.save({
        "texts": texts,
        "attrs": torch.tensor([s.as_tuple() for _, s in table], dtype=torch.int8),
        "train": torch.tensor([not held_out(s) for _, s in table]),
        "clip_ids": clip_ids.to(torch.int16),
        "t5_ids": t5_ids[:, :T5_KEEP].to(torch.int16),
    }, out / "prompts.pt")
    print(f"prepared {len(texts)} prompts in {out}", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    prepare(ap.parse_args(argv).out)


if __name__ == "__main__":
    main()
