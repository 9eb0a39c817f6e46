import pytest

from ds_deblur.data import ResumableDistributedSampler, SampleKey


def run(num_samples, world, epoch=0, seed=5, state=None, take=None, **kw):
    """Each rank's keys for one epoch (optionally restored from ``state`` / stopped after ``take`` each)."""
    out = []
    for rank in range(world):
        sampler = ResumableDistributedSampler(num_samples, world, rank, seed=seed, **kw)
        sampler.set_epoch(epoch)
        if state is not None:
            sampler.load_state_dict(state)
        keys = list(sampler)
        out.append(keys if take is None else keys[:take])
    return out


def consume(num_samples, world, epoch, steps, batch, seed=5):
    """Rank 0's sampler state after each rank consumed ``steps`` batches of ``batch`` samples."""
    sampler = ResumableDistributedSampler(num_samples, world, 0, seed=seed)
    sampler.set_epoch(epoch)
    for _ in range(steps):
        sampler.advance(batch)
    return sampler.state_dict()


def test_deterministic_from_seed_and_epoch():
    assert run(23, 2, epoch=1) == run(23, 2, epoch=1)
    assert run(23, 2, epoch=1) != run(23, 2, epoch=2)
    assert run(23, 2, epoch=1) != run(23, 2, epoch=1, seed=6)
    order = [k.index for k in run(23, 1)[0]]
    assert sorted(order) == list(range(23)) and order != list(range(23))


def test_rank_r_takes_r_plus_multiples_of_world():
    keys = run(10, 3, shuffle=False)
    assert [[k.index for k in rank] for rank in keys] == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    assert [k.position for k in keys[1]] == [1, 4, 7, 10]
    # positions 10 and 11 wrap to the start and are flagged as padding
    assert [k.pad for rank in keys for k in rank].count(True) == 2 and keys[1][3].pad and keys[2][3].pad


def test_drop_last_takes_floor():
    keys = run(10, 3, shuffle=False, drop_last=True)
    assert [[k.index for k in rank] for rank in keys] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert len(ResumableDistributedSampler(10, 3, 0, drop_last=True)) == 3
    assert len(ResumableDistributedSampler(10, 3, 0)) == 4


@pytest.mark.parametrize("new_world", [2, 1, 3, 4])
def test_resume_mid_epoch_same_and_other_world_size(new_world):
    n, world, epoch, steps, batch = 37, 2, 4, 3, 2
    full = run(n, world, epoch)
    state = consume(n, world, epoch, steps, batch)
    assert state["position"] == steps * batch * world and state["epoch"] == epoch
    seen = [k for rank in full for k in rank[:steps * batch]]
    rest = run(n, new_world, 0, state=state)  # epoch comes from the state
    if new_world == world:
        # exactly what the uninterrupted run would have seen next, rank by rank, element by element
        assert rest == [rank[steps * batch:] for rank in full]
    else:
        # exactly an uninterrupted new_world run from the same global position
        fresh = [[k for k in rank if k.position >= state["position"]] for rank in run(n, new_world, epoch)]
        assert rest == fresh
    # the two parts together see every sample of the epoch's order exactly once (padding aside)
    both = seen + [k for rank in rest for k in rank if not k.pad]
    assert sorted(k.index for k in both) == list(range(n))
    # ... and in the epoch's global order: positions 0..n-1, each exactly once
    assert sorted(k.position for k in both) == list(range(n))


def test_set_epoch_after_resume_and_len():
    sampler = ResumableDistributedSampler(20, 2, 1, seed=0)
    sampler.load_state_dict({"epoch": 3, "position": 8, "seed": 0, "num_samples": 20, "shuffle": True})
    sampler.set_epoch(3)  # the loop's usual call keeps the restored position
    assert len(sampler) == 6 and list(sampler)[0].position == 9
    sampler.set_epoch(4)
    assert sampler.position == 0 and len(sampler) == 10


def test_state_from_another_dataset_is_refused():
    sampler = ResumableDistributedSampler(20, 1, 0)
    with pytest.raises(ValueError, match="num_samples=21"):
        sampler.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "num_samples": 21, "shuffle": True})


def test_keys_are_sample_keys():
    key = next(iter(ResumableDistributedSampler(3, 1, 0, seed=1)))
    assert isinstance(key, SampleKey) and key.epoch == 0 and key.position == 0 and not key.pad


def test_advancing_while_iterating_does_not_shift_the_keys():
    # The loader advances the sampler per batch while its iterator is still being drawn from.
    sampler = ResumableDistributedSampler(9, 2, 0, seed=1)
    expected, got = list(sampler), []
    for key in sampler:
        got.append(key)
        sampler.advance(1)
    assert got == expected and sampler.position == 2 * len(expected)
