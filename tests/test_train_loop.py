"""The shared training loop: it learns, logs, checkpoints atomically and resumes exactly."""

import json

import pytest
import torch

from saferlhfv.config import TrainConfig
from saferlhfv.train.loop import Trainer, length_grouped_order

TRUE_W = torch.tensor([2.0, -1.0, 0.5])


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return [{"x": xi, "y": (xi @ TRUE_W).unsqueeze(0)} for xi in x]


def _collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _loss(model, batch):
    err = model(batch["x"]) - batch["y"]
    return (err**2).mean(), {"abs_err": err.abs().mean().item()}


CFG = TrainConfig(learning_rate=0.3, epochs=3, batch_size=8, warmup_ratio=0.0, save_every=4, eval_every=5)


def test_trainer_learns_and_logs(tmp_path):
    data = _data()
    trainer = Trainer(
        model=_model(),
        dataset=data,
        collate_fn=_collate,
        loss_fn=_loss,
        cfg=CFG,
        out_dir=tmp_path,
        eval_fn=lambda m: {"mse": _loss(m, _collate(data))[0].item()},
    )
    result = trainer.train()
    assert result["steps"] == 15 and not result["resumed"]  # 3 epochs x ceil(40 / 8)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 16))
    assert train[-1]["loss"] < 0.2 * train[0]["loss"]  # it learned
    assert [r["step"] for r in records if r["split"] == "eval"] == [5, 10, 15]
    assert (tmp_path / "checkpoint" / "trainer_state.json").is_file()
    assert not list(tmp_path.glob(".checkpoint*"))  # no temporary folder left


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    data = _data()
    straight = Trainer(
        model=_model(), dataset=data, collate_fn=_collate, loss_fn=_loss, cfg=CFG, out_dir=tmp_path / "a"
    )
    expected = straight.train()
    expected_w = straight.accelerator.unwrap_model(straight.model).weight.detach().clone()

    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint at step 4, mid-epoch 2
            raise KeyboardInterrupt("killed")
        return _loss(model, batch)

    crashing = Trainer(
        model=_model(), dataset=data, collate_fn=_collate, loss_fn=crashing_loss, cfg=CFG, out_dir=tmp_path / "b"
    )
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4

    resumed = Trainer(model=_model(), dataset=data, collate_fn=_collate, loss_fn=_loss, cfg=CFG, out_dir=tmp_path / "b")
    result = resumed.train()
    assert result["resumed"] and result["steps"] == expected["steps"]
    torch.testing.assert_close(resumed.accelerator.unwrap_model(resumed.model).weight, expected_w)
    assert result["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 16))  # no duplicated lines from the crashed run


def _batches(order, size):
    return [order[b : b + size] for b in range(0, len(order), size)]


def test_length_grouped_order_is_a_seeded_permutation_of_batches_with_one_length():
    # two kinds of rows, as the guard has: short input rows and long output rows, interleaved
    lengths = [5 if i % 3 else 50 for i in range(100)]
    order = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(100))  # every row once
    batches = _batches(order, 8)
    assert len(batches[-1]) == 4 and all(len(b) == 8 for b in batches[:-1])  # the short batch stays last
    mixed = [b for b in batches if len({lengths[i] for i in b}) > 1]
    assert len(mixed) == 1  # only the batch where the sorted window turns from long to short rows
    again = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(1))
    other = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(2))
    assert again == order and other != order

    def padded(o):  # tokens a right-padded batch holds
        return sum(len(b) * max(lengths[i] for i in b) for b in _batches(o, 8))

    plain = torch.randperm(100, generator=torch.Generator().manual_seed(1)).tolist()
    assert padded(order) < 0.6 * padded(plain)
    # a window of one batch is a plain shuffle in batches: sorted inside each batch only
    one = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(1), window_batches=1)
    assert sorted(one) == list(range(100))
    assert len([b for b in _batches(one, 8) if len({lengths[i] for i in b}) > 1]) > 5


def test_trainer_with_lengths_trains_on_grouped_batches(tmp_path):
    data = _data()
    lengths = [i % 2 for i in range(len(data))]
    index = {id(d): k for k, d in enumerate(data)}
    seen = []

    def collate(items):
        seen.append({lengths[index[id(i)]] for i in items})
        return _collate(items)

    before = _loss(_model(), _collate(data))[0].item()
    result = Trainer(
        model=_model(), dataset=data, collate_fn=collate, loss_fn=_loss, cfg=CFG, out_dir=tmp_path, lengths=lengths
    ).train()
    assert result["steps"] == 15 and result["train_loss"] < 0.2 * before  # it learned
    assert sum(len(s) > 1 for s in seen) <= 3  # at most one mixed batch per epoch
    with pytest.raises(ValueError, match="2 lengths for 40 examples"):
        Trainer(
            model=_model(), dataset=data, collate_fn=_collate, loss_fn=_loss, cfg=CFG, out_dir=tmp_path, lengths=[1, 2]
        )
