"""Domain mixing: schedules, the exact sampler, resumption, and the online weight updates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmlab.data.mixture import (
    DomainExhausted,
    MixtureConfig,
    MixtureSampler,
    OnlineConfig,
    OnlineWeights,
    Schedule,
)

DOMAINS = ["web", "code", "books"]


def _stages(interpolate: str = "step") -> MixtureConfig:
    return MixtureConfig(
        policy="stages",
        interpolate=interpolate,
        stages=[
            {"step": 0, "weights": {"web": 0.7, "code": 0.2, "books": 0.1}},
            {"step": 320, "weights": {"web": 0.1, "code": 0.6, "books": 0.3}},
            {"step": 640, "weights": {"web": 1, "books": 1}},  # code off, the rest normalised
        ],
    )


def test_each_stage_draws_its_weights_within_one_point() -> None:
    """320 steps of 64 = 20,480 sequences per stage; shares against the stage's weights."""
    schedule = Schedule(_stages(), DOMAINS, {})
    sampler = MixtureSampler([5000, 3000, 800], global_batch_size=64, seed=0)
    drawn = np.stack([sampler.draw(step, schedule.weights_at(step))[0] for step in range(960)])
    for stage, expected in enumerate([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.0, 0.5]]):
        rows = drawn[stage * 320 : (stage + 1) * 320].ravel()
        shares = np.bincount(rows, minlength=3) / rows.size
        np.testing.assert_allclose(shares, expected, atol=0.01)
        # Not only on average: after every batch the counts are within one of the quota.
        cumulative = np.cumsum([np.bincount(r, minlength=3) for r in drawn[stage * 320 : (stage + 1) * 320]], axis=0)
        quotas = np.outer(np.arange(1, 321) * 64, expected)
        assert np.abs(cumulative - quotas).max() <= 1.0 + 1e-9
    assert not (drawn[640:] == 1).any()  # weight 0: never drawn


def test_linear_interpolation_moves_the_weights_between_stages() -> None:
    schedule = Schedule(_stages("linear"), DOMAINS, {})
    np.testing.assert_allclose(schedule.weights_at(160), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(schedule.weights_at(320), [0.1, 0.6, 0.3])
    np.testing.assert_allclose(schedule.weights_at(5000), [0.5, 0.0, 0.5])
    held = Schedule(_stages("step"), DOMAINS, {})
    np.testing.assert_allclose(held.weights_at(319), [0.7, 0.2, 0.1])


def test_static_weights_default_to_the_sources_then_uniform() -> None:
    np.testing.assert_allclose(Schedule(MixtureConfig(), DOMAINS, {}).weights_at(7), [1 / 3] * 3)
    np.testing.assert_allclose(Schedule(MixtureConfig(), DOMAINS, {"web": 2.0}).weights_at(0), [0.5, 0.25, 0.25])
    cfg = MixtureConfig(weights={"web": 3, "code": 1})
    np.testing.assert_allclose(Schedule(cfg, DOMAINS, {"web": 2.0}).weights_at(0), [0.75, 0.25, 0.0])


def test_each_pass_over_a_domain_is_a_permutation_and_slots_are_shuffled() -> None:
    sampler = MixtureSampler([50, 70], global_batch_size=20, seed=3)
    domains, indices = zip(*(sampler.draw(step, np.array([0.5, 0.5])) for step in range(10)), strict=True)
    domains, indices = np.concatenate(domains), np.concatenate(indices)
    first_pass = indices[domains == 0][:50]
    assert sorted(first_pass.tolist()) == list(range(50))
    assert sorted(indices[domains == 0][50:100].tolist()) == list(range(50))  # the next pass, reshuffled
    assert (indices[domains == 0][:50] != indices[domains == 0][50:100]).any()
    # Every rank takes a contiguous quarter of a batch: each holds 2 or 3 of each domain's 5 slots.
    for k in range(0, 200, 5):
        assert 2 <= (domains[k : k + 5] == 0).sum() <= 3


def test_resuming_from_saved_state_reproduces_the_sample_order() -> None:
    schedule = Schedule(_stages("linear"), DOMAINS, {})
    whole = MixtureSampler([500, 300, 80], global_batch_size=32, seed=11)
    expected = [whole.draw(step, schedule.weights_at(step)) for step in range(700)]

    first = MixtureSampler([500, 300, 80], global_batch_size=32, seed=11)
    for step in range(333):
        first.draw(step, schedule.weights_at(step))
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = MixtureSampler([500, 300, 80], global_batch_size=32, seed=11)
    resumed.load_state_dict(state)
    for step in range(333, 700):
        domains, indices = resumed.draw(step, schedule.weights_at(step))
        np.testing.assert_array_equal(domains, expected[step][0])
        np.testing.assert_array_equal(indices, expected[step][1])
    with pytest.raises(ValueError, match="in order"):
        resumed.draw(5, schedule.weights_at(5))


def test_an_exhausted_domain_repeats_or_stops() -> None:
    repeat = MixtureSampler([10, 1000], global_batch_size=10, seed=0)
    stop = MixtureSampler([10, 1000], global_batch_size=10, seed=0, repeat=False)
    weights = np.array([0.5, 0.5])
    for step in range(2):  # 10 of the small domain's 10 sequences
        np.testing.assert_array_equal(repeat.draw(step, weights)[1], stop.draw(step, weights)[1])
    repeat.draw(2, weights)
    with pytest.raises(DomainExhausted, match="domain 0 ran out"):
        stop.draw(2, weights)


@pytest.mark.parametrize("method", ["doremi", "exp3"])
def test_online_weights_favour_a_domain_whose_loss_stays_high(method: str) -> None:
    cfg = OnlineConfig(method=method, learning_rate=0.5, min_weight=0.05, reference_losses={d: 2.0 for d in DOMAINS})
    online = OnlineWeights(cfg, DOMAINS, np.full(3, 1 / 3))
    history = [online.weights.copy()]
    for _ in range(6):
        history.append(online.update(np.array([2.1, 5.0, 2.0])).copy())  # code's loss held high
    history = np.array(history)
    # Raised within a few updates (EXP3 explores uniformly while eps_t = 1/K, its first 3 here).
    assert history[{"doremi": 2, "exp3": 6}[method], 1] > history[0, 1] + 0.1
    assert (np.diff(history[:, 1]) >= -1e-12).all()
    assert history[-1, 1] == history[-1].max()
    assert history.min() >= 0.05 - 1e-12  # never below the floor
    np.testing.assert_allclose(history.sum(axis=1), 1.0)


def test_online_weights_hold_the_floor_under_extreme_losses_and_resume() -> None:
    cfg = OnlineConfig(learning_rate=50.0, min_weight=0.02, smoothing=0.0)
    online = OnlineWeights(cfg, DOMAINS, np.full(3, 1 / 3))
    online.update(np.array([1.0, 1.0, np.nan]))  # books not sampled: no reference yet, no change
    for _ in range(5):
        weights = online.update(np.array([9.0, 1.0, 1.0]))
    assert weights.min() == pytest.approx(0.02)
    assert weights[0] == pytest.approx(1 - 2 * 0.02)
    copy = OnlineWeights(cfg, DOMAINS, np.full(3, 1 / 3))
    copy.load_state_dict(json.loads(json.dumps(online.state_dict())))
    np.testing.assert_array_equal(copy.update(np.array([1.0, 3.0, 1.0])), online.update(np.array([1.0, 3.0, 1.0])))


def _domain_shards(folder, sizes: dict[str, int], seq_len: int = 4):
    """Shards on disk whose rows carry their domain in every token (domain k: tokens 100k + row)."""
    from llmlab.data.shards import Manifest, ShardInfo, TokenShards

    shards = []
    for k, (domain, n) in enumerate(sizes.items()):
        rows = np.repeat((100 * k + np.arange(n))[:, None], seq_len + 1, axis=1).astype(np.uint16)
        name = f"{domain}.bin"
        rows.tofile(folder / name)
        shards.append(ShardInfo(file=name, sequences=n, first_doc=0, docs=n, tokens=rows.size, domain=domain))
    Manifest(seq_len=seq_len, dtype="uint16", vocab_size=1000, shards=shards).save(str(folder))
    return TokenShards(str(folder))


def _mixed(shards, cfg: MixtureConfig, rank: int = 0, world: int = 1, accum: int = 1):
    from llmlab.train.mixing import MixedBatches

    return MixedBatches(shards, cfg, DOMAINS, {}, batch_size=12, seed=5, dp_rank=rank, dp_size=world, grad_accum=accum)


def test_mixed_batches_split_the_global_batch_between_ranks_with_domain_labels(tmp_path) -> None:
    shards = _domain_shards(tmp_path, {"web": 40, "code": 30, "books": 20})
    cfg = MixtureConfig(weights={"web": 0.5, "code": 0.25, "books": 0.25})
    single, ranks = _mixed(shards, cfg), [_mixed(shards, cfg, rank=r, world=3, accum=2) for r in range(3)]
    for step in range(6):
        whole = torch.cat(list(single(step)))
        labels = torch.cat(list(single.groups(step)))
        parts = [torch.cat(list(r(step))) for r in ranks]
        torch.testing.assert_close(torch.cat(parts), whole)
        torch.testing.assert_close(torch.cat([torch.cat(list(r.groups(step))) for r in ranks]), labels)
        assert (whole[:, 0] // 100 == labels).all()  # every row is from the domain it is labelled with
        assert labels.bincount(minlength=3).tolist() == [6, 3, 3]
    assert single.tokens_seen.tolist() == [36 * 4, 18 * 4, 18 * 4]
    with pytest.raises(RuntimeError, match="before its batch"):
        single.groups(9)


def test_mixed_batches_resume_with_online_weights(tmp_path) -> None:
    shards = _domain_shards(tmp_path, {"web": 40, "code": 30, "books": 20})
    cfg = MixtureConfig(policy="online", online={"update_every": 2, "reference_losses": {d: 1.0 for d in DOMAINS}})
    losses = [(1.0, 2.0 + step % 3, 1.5) for step in range(1, 21)]

    def run(mixed, steps):
        out = []
        for step in steps:
            out.append(torch.cat(list(mixed(step - 1))))
            mixed.observe(step, losses[step - 1], [4, 4, 4])
        return out

    whole = run(_mixed(shards, cfg), range(1, 21))
    first = _mixed(shards, cfg)
    run(first, range(1, 12))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _mixed(shards, cfg)
    resumed.load_state_dict(state)
    for got, want in zip(run(resumed, range(12, 21)), whole[11:], strict=True):
        torch.testing.assert_close(got, want)
    np.testing.assert_array_equal(resumed.weights_at(20), _final_weights(shards, cfg, losses))
    assert resumed.weights_at(20)[1] > 1 / 3  # code's loss is highest: its weight went up


def _final_weights(shards, cfg, losses) -> np.ndarray:
    mixed = _mixed(shards, cfg)
    for step in range(1, 21):
        mixed(step - 1)
        mixed.observe(step, losses[step - 1], [4, 4, 4])
    return mixed.weights_at(20)


def test_doremi_without_a_reference_model_favours_the_domain_that_improves_least() -> None:
    online = OnlineWeights(OnlineConfig(learning_rate=5.0), DOMAINS, np.full(3, 1 / 3))
    for t in range(8):  # every loss falls; books falls slowest relative to its start
        weights = online.update(np.array([4.0 * 0.8**t, 3.0 * 0.8**t, 2.0 * 0.95**t]))
    assert weights[2] > 0.5 and weights[0] == pytest.approx(weights[1])
    assert online.update(np.full(3, np.nan)).sum() == pytest.approx(1.0)  # nothing sampled: no NaN


def test_mixed_batches_name_the_exhausted_domain(tmp_path) -> None:
    shards = _domain_shards(tmp_path, {"web": 40, "code": 30, "books": 6})
    mixed = _mixed(shards, MixtureConfig(exhausted="stop"))  # uniform: 4 books rows per batch of 12
    mixed(0)
    with pytest.raises(DomainExhausted, match="domain books ran out of its 6 training sequences at step 2"):
        mixed(1)
