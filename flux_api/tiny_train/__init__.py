"""Training the tiny FLUX.1 that `--model tiny` loads (shipped in flux_api/tiny_model): see README.md.

grammar.py   the visual language: colours, shapes, sizes, positions, backgrounds; every prompt; held-out ones
render.py    drawing scenes in torch (CPU or GPU)
model.py     the architecture (FLUX.1's classes at toy size)
prepare.py   1. tokenizers, saved once, and every prompt tokenized as the pipeline will
train.py     2. the VAE, then the transformer and text encoders (flow matching), then the green LoRA
export.py    3. the weights -> the diffusers folder flux_api/tiny_model (and its loras/)
adherence.py 4. the adherence table, through the services (docs/QUALITY.md)

The meaning checker itself is flux_api/meaning.py (the tests use it too).
"""
