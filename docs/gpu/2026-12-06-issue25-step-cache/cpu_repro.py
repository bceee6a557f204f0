"""The CPU reproduction of the fourth run's 3 compiles on a live request (a RECORD, not maintained code). The tiny
model, blocks compiled as the services compile them; the transformer first runs as GraphedForward's capture ran it
(clones of the tensor arguments only: "old"; with the call's other arguments too: "fixed"), then one First Block
Cache call. TORCH_LOGS=recompiles PYTHONPATH=. python cpu_repro.py old|fixed; output in cpu_repro.txt."""
import torch
from pathlib import Path
from diffusers import FluxPipeline, FirstBlockCacheConfig
from flux_api.engine.tiny import ensure_tiny_model
from flux_api.engine.speed import compile_blocks
from flux_api.engine.compiles import compiled_graphs
d = ensure_tiny_model(Path("/tmp/fbc/cache"))
pipe = FluxPipeline.from_pretrained(d, torch_dtype=torch.float32); pipe.set_progress_bar_config(disable=True)
tr = pipe.transformer
compile_blocks(tr, Path("/tmp/fbc/cache"), True)
eager = tr.forward
captured = {}
def graphed(*args, return_dict=True, **kw):
    # like GraphedForward's capture: the forward run on clones of the tensor inputs only
    import sys
    tensors = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    others = {k: v for k, v in kw.items() if not isinstance(v, torch.Tensor) and v is not None} if "fixed" in sys.argv else {}
    static = {**others, **tensors}
    out = eager(**static, return_dict=False)
    return out if not return_dict else out
tr.forward = graphed
run = lambda: pipe("a red circle", width=256, height=256, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np")
run(); print("after warm-up", compiled_graphs())
tr.forward = eager
tr.enable_cache(FirstBlockCacheConfig(threshold=1e-9)); run(); tr.disable_cache()
print("after FBC", compiled_graphs())
