"""Issue 27 probe: diffusers' context parallelism (Ulysses, 2 ranks) on the CPU over gloo, tiny model.
Same image as one process? How long? A RECORD (README.md beside it), not maintained code.

    PYTHONPATH=. python docs/gpu/2026-12-06-issue27-gloo-probe/probe.py
"""
import os, sys, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROMPT = "a red circle in the top left on a blue background"

def pipe_for():
    from diffusers import FluxPipeline
    from flux_api.engine.tiny import ensure_tiny_model
    from flux_api.settings import BF16Settings
    path = ensure_tiny_model(BF16Settings(model="tiny").cache_dir)
    p = FluxPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p

def gen(p, steps=8):
    return p(PROMPT, width=256, height=256, num_inference_steps=steps, guidance_scale=3.5,
             generator=torch.Generator().manual_seed(1), output_type="np").images[0]

def worker(rank, world, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if torch.accelerator.device_count() == 0:  # SHIM: diffusers computes rank % device_count (0 on a CPU)
        torch.accelerator.device_count = lambda: 1
    from diffusers import ContextParallelConfig
    p = pipe_for()
    try:
        p.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    except Exception as e:
        q.put(("error", rank, f"{type(e).__name__}: {e}")); dist.destroy_process_group(); return
    try:
        gen(p, 2)
        t = time.perf_counter(); img = gen(p); dt = time.perf_counter() - t
    except Exception as e:
        import traceback; q.put(("error", rank, traceback.format_exc()[-2500:])); dist.destroy_process_group(); return
    q.put(("ok", rank, dt, img if rank == 0 else None))
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.set_num_threads(1)
    p = pipe_for(); gen(p, 2)
    t = time.perf_counter(); ref = gen(p); one = time.perf_counter() - t
    print("one process, 1 thread:", round(one, 3), "s", flush=True)
    ctx = mp.get_context("spawn"); q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, q)) for r in range(2)]
    [x.start() for x in procs]
    res = [q.get(timeout=300) for _ in procs]
    [x.join() for x in procs]
    import numpy as np
    for r in res:
        if r[0] == "error": print("ERROR rank", r[1], r[2])
        else:
            print("rank", r[1], "time", round(r[2], 3))
            if r[3] is not None:
                d = np.abs(r[3] - ref); mse = float((d**2).mean())
                print("max abs diff", float(d.max()), "PSNR", "inf" if mse == 0 else round(10*np.log10(1/mse), 2))
