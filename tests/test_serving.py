"""Serving the caption store from Ray actors: same answers as in-process, routed by video id, resilient."""

import pytest
import ray

from longvideo_r1.corpus.serving import CaptionStoreClient
from longvideo_r1.corpus.store import CaptionStore, shard_of
from longvideo_r1.errors import InputError
from tests.test_store import build, make_video


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "store"
    build(root, [make_video(f"vid_{i}", 1500 + 500 * i) for i in range(6)], shards=4)
    client = CaptionStoreClient(str(root), num_actors=2, cache_size=128)
    yield root, client
    client.shutdown()


def test_actor_lookups_equal_in_process_lookups(served):
    root, client = served
    local = CaptionStore(root)
    for i in range(6):
        for ids in [(1,), (2, 3), (1, 4, 2)]:
            assert client.get(f"vid_{i}", ids) == local.get(f"vid_{i}", ids)


def test_each_actor_owns_the_shards_congruent_to_its_index(served):
    root, client = served
    for i in range(6):
        assert client.actor_for(f"vid_{i}") is client.actors[shard_of(f"vid_{i}", 4) % 2]


def test_get_many_returns_errors_in_place(served):
    _, client = served
    out = client.get_many([("vid_0", (1,)), ("missing", (1,)), ("vid_1", (9, 9)), ("vid_2", (2, 2, 2))])
    assert out[0].caption.startswith("vid_0 high")
    assert isinstance(out[1], InputError) and "not in caption store" in str(out[1])
    assert isinstance(out[2], InputError) and "ids run from 1" in str(out[2])
    assert out[3].ids == (2, 2, 2)


def test_a_bad_lookup_through_ray_raises_input_error_not_a_ray_failure(served):
    _, client = served
    with pytest.raises(InputError, match="not in caption store"):
        client.get("missing", (1,))


def test_lookups_resume_after_a_serving_actor_is_killed(served):
    _, client = served
    before = client.get("vid_3", (1, 1))
    victim = client.actor_for("vid_3")
    ray.kill(victim, no_restart=False)
    assert client.get("vid_3", (1, 1)) == before


def test_serving_actors_report_memory_and_cache(served):
    _, client = served
    client.get("vid_0", (1,))
    mem = client.memory()
    assert len(mem) == 2 and all(m["rss_bytes"] > 0 for m in mem)
    assert sum(m["cache_entries"] for m in mem) >= 1
