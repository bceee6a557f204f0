# A dated probe (2026-11-28), not part of the package: run from the repo root as
#   python docs/quality/2026-11-28-guidance-interval-probe.py .gpu/draw/from/r7a   (needs .gpu/draw/prep from prepare.py)
# Output: docs/quality/2026-11-28-guidance-interval-probe.txt
"""True CFG (uncond "a shape") applied only below a noise level: does a guidance interval keep the
complete-prompt gain without painting a lone colour over the background?"""
import sys, torch
from pathlib import Path
from flux_api.tiny_train.train import Trainer
from flux_api.tiny_train.grammar import eval_prompts, partial_prompts
from flux_api.meaning import adherence, read_scene
tr = Trainer(Path(".gpu/draw/prep"), "cpu"); m = Path(sys.argv[1]); tr.load_vae(m); tr.resume(m)
for k in ("text_encoder", "text_encoder_2", "transformer"):
    tr.models[k].eval()
def sample(idx, w, hi, seed=0):  # 8 steps, true CFG w against "a shape" below sigma hi
    img = tr.sample(idx, 8, seed, cfg=(w, hi) if w != 1 else None)
    return ((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
comp = eval_prompts(200)[:48]; part = partial_prompts()
ci = torch.tensor([tr.prompts.texts.index(t) for t, _ in comp]); pi = torch.tensor([tr.prompts.texts.index(t) for t, _ in part])
for w, hi in [(1, 1.1), (3, 1.1), (3, 0.75), (3, 0.5)]:
    c = adherence([(s, a) for (_, s), a in zip(comp, sample(ci, w, hi))])
    pairs = [(s, a) for seed in range(3) for (_, s), a in zip(part, sample(pi, w, hi, seed=seed))]
    p = adherence(pairs); obj = round(100 * sum(read_scene(a).colour is not None for _, a in pairs) / len(pairs), 1)
    print(f"w={w} below sigma {hi}: complete48 {c} | partial {p} object {obj}", flush=True)
