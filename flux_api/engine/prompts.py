"""The prompt embeddings of recent prompts, kept on the device they are used on (an LRU cache).

A request of n images, a retry, a client that varies only the seed: each would run CLIP and T5-XXL
(4.8 B parameters) again for the same text. The embeddings depend only on the prompt and the T5 token
budget (LoRAs never touch the text encoders: lora_slot.py refuses those parts), so they are computed
once by the pipeline's own `encode_prompt` and handed to it as `prompt_embeds`: the same tensors the
pipeline would have made, hence the same image bytes. About 4 MiB per prompt at 512 T5 tokens in bf16.

An entry stays where it was encoded: on the GPU in the default mode, in host memory where memory_mode=low
runs the text encoders on the CPU (a 4 MiB copy per request, and no GPU memory taken). The tensors are
shared by every request that hits them, so nothing may write into them (nothing in diffusers' FLUX
pipelines or transformer does). A client can tell from the timing that a prompt was sent recently; where
clients must not learn of each other's prompts, set prompt_cache_size to 0.
"""

from __future__ import annotations

from collections import OrderedDict


class PromptCache:
    def __init__(self, size: int):
        self.size = size  # 0: off, every prompt is encoded
        self.hits = self.misses = 0
        self._entries: OrderedDict = OrderedDict()

    def embeddings(self, pipe, prompt: str, max_sequence_length: int, encode_on, device):
        """(prompt_embeds, pooled_prompt_embeds) of `prompt` on `device`, encoded on `encode_on` (and
        kept there)."""
        key = (prompt, max_sequence_length)
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            import torch

            with torch.no_grad():
                embeds, pooled, _ = pipe.encode_prompt(prompt, None, device=encode_on,
                                                       max_sequence_length=max_sequence_length)
            found = (embeds, pooled)
            if self.size:
                self._entries[key] = found
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return tuple(t.to(device) for t in found)  # no copy where they are already on `device`

    def clear(self) -> None:
        self._entries.clear()

    def status(self) -> dict:
        return {"size": self.size, "entries": len(self._entries), "hits": self.hits, "misses": self.misses}
