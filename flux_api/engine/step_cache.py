"""First Block Cache, per request: the `first_block_cache` parameter (and the `fast` preset / `quality: low`).

diffusers' `FirstBlockCacheConfig(threshold)` runs the first transformer block at every step and, where its
residual changed less than `threshold` (relative mean absolute difference) since the last step that ran
in full, skips the other blocks and adds the residual they gave then. Faster, and lossy: an opt-in, never
the default. Its adherence cost on the tiny model is in docs/QUALITY.md.

How it stays out of the default path's way:
- The hooks are installed for one image's pipeline call and removed after it (`StepCache.on`): a request
  without it runs exactly what it ran before, its CUDA graph and its bytes; each image of a request of
  several starts with a fresh cache, so image i is still the image of the request alone with its seed.
- The compiled blocks: the hooks wrap each block's compiled forward from outside (`speed.compile_blocks`),
  so nothing compiles on the request.
- CUDA graphs: whether a step skips depends on its data, so a step cannot replay one captured graph;
  while the cache is on, `GraphedForward` runs the ordinary forward (the compiled blocks), `active`.
- How many transformer passes it skipped is counted for the response (`steps_skipped`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass
class SkipCount:
    """Transformer passes of one pipeline call: those that ran past the first block, those that reused."""

    computed: int = 0
    skipped: int = 0


class StepCache:
    """First Block Cache over one transformer, switched on for one pipeline call at a time (the replica's
    worker thread: one call at a time)."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.active = False

    @contextlib.contextmanager
    def on(self, threshold: float | None, pipeline_names_passes: bool = True):
        """Within: the cache at `threshold` (None: off, nothing installed). Yields a SkipCount, filled as
        the steps decide (None where the cache is off). `pipeline_names_passes`: whether the pipeline
        names each transformer call's cache context itself ("cond", "uncond": FluxPipeline does; diffusers'
        image-to-image and inpainting pipelines do not, and the hooks refuse to run without one)."""
        if threshold is None:
            yield None
            return
        from diffusers import FirstBlockCacheConfig

        self.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        self.active = True
        handles = () if pipeline_names_passes else self._name_passes()
        try:
            yield self._count()
        finally:
            for h in handles:
                h.remove()
            self.active = False
            self.transformer.disable_cache()

    def _name_passes(self) -> tuple:
        """For a pipeline that names no cache context: each transformer call gets one named by the prompt
        embeddings it is given. A pipeline passes the same tensor at every step, the prompt's and, with
        true CFG, the negative prompt's: two passes, each compared with its own previous step."""
        names: dict[int, str] = {}
        entered = []

        def before(module, args, kwargs):
            embeds = kwargs.get("encoder_hidden_states")
            name = names.setdefault(embeds.data_ptr() if embeds is not None else 0, f"pass{len(names)}")
            context = module.cache_context(name)
            context.__enter__()
            entered.append(context)

        def after(module, args, kwargs, output):
            entered.pop().__exit__(None, None, None)

        return (self.transformer.register_forward_pre_hook(before, with_kwargs=True),
                self.transformer.register_forward_hook(after, with_kwargs=True))

    def _count(self) -> SkipCount:
        """Wrap the head block hook's decision (diffusers names it `_should_compute_remaining_blocks`) to
        count it. Its first call at a step with nothing cached computes, like every later "compute"."""
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        count = SkipCount()
        for module in self.transformer.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook(_FBC_LEADER_BLOCK_HOOK) if isinstance(registry, HookRegistry) else None
            if hook is None:
                continue
            decide = hook._should_compute_remaining_blocks

            def counting(residual, decide=decide):
                compute = decide(residual)
                if compute:
                    count.computed += 1
                else:
                    count.skipped += 1
                return compute

            hook._should_compute_remaining_blocks = counting
        return count
