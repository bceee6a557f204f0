"""The training script's choice of what the tiny model sees (flux_api/tiny_train/train.py), on the
prompt table `prepare.py` writes: by default every training prompt as often as any other, with
`--even-said` every count of attributes said (0 to 5) as often as any other, and never a held-out
prompt either way."""

import pytest
import torch

from flux_api.tiny_train.grammar import held_out, prompt_table
from flux_api.tiny_train.prepare import prepare
from flux_api.tiny_train.train import Prompts

DRAWS = 60_000
HELD_OUT = {text for text, spec in prompt_table() if held_out(spec)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("prep"))


def shares(prompts: Prompts) -> list[float]:
    idx = prompts.sample(DRAWS, torch.Generator().manual_seed(0))
    assert HELD_OUT.isdisjoint(prompts.texts[i] for i in idx.unique().tolist())
    said = (prompts.attrs[idx] >= 0).sum(1)
    return (torch.bincount(said, minlength=6).float() / DRAWS).tolist()


def test_by_default_prompts_that_say_one_thing_are_rare(prepared):
    one = shares(Prompts(prepared, "cpu"))[1]
    assert one < 0.01  # 63 of the 10,502 training prompts


def test_even_said_draws_every_count_of_attributes_equally(prepared):
    for share in shares(Prompts(prepared, "cpu", even_said=True)):
        assert share == pytest.approx(1 / 6, abs=0.01)
