"""The training script's choice of what the tiny model sees (flux_api/tiny_train/train.py), on the
prompt table `prepare.py` writes: by default every training prompt as often as any other, with
`--even-said` every count of attributes said (0 to 5) as often as any other, and never a held-out
prompt either way; and how `fill_unsaid` completes what a prompt leaves unsaid (uniformly, or with
`--usual` mostly a medium object in the centre on white)."""

import pytest
import torch

from flux_api.tiny_train.grammar import COLOURS, POSITIONS, SIZES, held_out, prompt_table
from flux_api.tiny_train.prepare import prepare
from flux_api.tiny_train.render import fill_unsaid
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


@pytest.mark.slow  # the prompt table it needs takes about 6 s to prepare: in the full suite (issue 26: a quick tier under a minute)
def test_by_default_prompts_that_say_one_thing_are_rare(prepared):
    one = shares(Prompts(prepared, "cpu"))[1]
    assert one < 0.01  # 63 of the 10,502 training prompts


@pytest.mark.slow  # the prompt table it needs takes about 6 s to prepare: in the full suite (issue 26: a quick tier under a minute)
def test_even_said_draws_every_count_of_attributes_equally(prepared):
    for share in shares(Prompts(prepared, "cpu", even_said=True)):
        assert share == pytest.approx(1 / 6, abs=0.01)


@pytest.mark.parametrize("usual", [0.0, 0.8, 1.0])
def test_unsaid_size_position_background_are_usual_with_probability_usual(usual):
    n = 20_000
    said = torch.tensor([[-1, 0, -1, -1, -1]] * (n // 2) + [[2, 0, 1, 0, 3]] * (n // 2))  # "a red shape"; a complete one
    filled = fill_unsaid(said, torch.Generator().manual_seed(0), usual)
    unsaid, complete = filled[: n // 2], filled[n // 2:]
    assert (complete == said[n // 2:]).all()  # what a prompt says is never changed
    assert (unsaid[:, 1] == 0).all() and (unsaid[:, 4] != 0).all()  # its colour kept; never on its own colour
    for col, value, choices in ((0, SIZES.index("medium"), 3), (3, POSITIONS.index("center"), 9), (4, COLOURS.index("white"), 8)):
        # the usual value, or (1 - usual) of the time uniform over the choices (the usual one among them)
        expected = usual + (1 - usual) / choices
        assert (unsaid[:, col] == value).float().mean().item() == pytest.approx(expected, abs=0.015)
    assert set(unsaid[:, 2].tolist()) == {0, 1, 2}  # an unsaid shape stays random either way
