"""Where the caption store is read from: what each node can open, the served store's batched lookups."""

from __future__ import annotations

import pytest
import ray

from longvideo_r1.cluster.paths import NodeView, check_readable, node_views, store_access
from longvideo_r1.corpus.serving import CaptionStoreClient
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.errors import InputError
from tests.test_store import build, make_video


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "store"
    build(root, [make_video(f"v{i}", 600 + 100 * i) for i in range(6)], shards=4)
    return root


def test_store_access_follows_what_the_nodes_see():
    both = [NodeView("a" * 32, "10.0.0.1", ()), NodeView("b" * 32, "10.0.0.2", ())]
    one = [NodeView("a" * 32, "10.0.0.1", ()), NodeView("b" * 32, "10.0.0.2", ("/data/store",))]
    assert store_access("auto", "/data/store", both) == ("local", ["a" * 32, "b" * 32])
    assert store_access("auto", "/data/store", one) == ("served", ["a" * 32])
    assert store_access("served", "/data/store", both)[0] == "served"
    with pytest.raises(InputError, match=r"caption store=/data/store on node 10\.0\.0\.2"):
        store_access("local", "/data/store", one)               # asked for local: name the path and node
    with pytest.raises(InputError, match="no node of the cluster can open it"):
        store_access("auto", "/data/store", [NodeView("a" * 32, "10.0.0.1", ("/data/store",))])
    with pytest.raises(InputError, match="rl.store_access"):
        store_access("nfs", "/data/store", both)
    check_readable(both, {"/data/store": "rl store"})           # nothing missing: no error


def test_every_node_is_asked_what_it_can_open(ray_local, store_root, tmp_path):
    views = node_views([str(store_root), str(tmp_path / "absent")])
    assert len(views) == len(ray.nodes()) == 1
    assert views[0].missing == (str(tmp_path / "absent"),)
    assert views[0].address == ray.util.get_node_ip_address()


@ray.remote(num_cpus=0)
def _lookups_elsewhere(captions, queries):
    """In another process (as a rollout worker is): batched prefetch, then gets answered from it."""
    captions.prefetch(queries)
    after_prefetch = captions.calls
    got = [captions.get(v, ids).caption for v, ids in queries]
    return after_prefetch, captions.calls, got


def test_served_captions_travel_to_workers_and_batch_a_steps_lookups(ray_local, store_root):
    client = CaptionStoreClient(str(store_root), num_actors=2, num_cpus=0.1)
    try:
        local = CaptionStore(store_root)
        queries = [(f"v{i}", (1,)) for i in range(6)] + [(f"v{i}", (2, 3)) for i in range(6)] + [("v0", (1,))]
        after_prefetch, total, got = ray.get(_lookups_elsewhere.remote(client.handles(), queries))
        assert got == [local.get(v, ids).caption for v, ids in queries]
        assert after_prefetch == 2 and total == 2                # one call per serving actor, then none
        handles = client.handles()
        handles.prefetch([("v1", (99,)), ("v1", (1,))])           # an error is kept in place …
        with pytest.raises(InputError, match="v1"):
            handles.get("v1", (99,))                              # … and raised where it is asked for
        assert handles.get("v1", (1,)).caption == local.get("v1", (1,)).caption
        assert handles.video("v2") == local.video("v2") and handles.video("v2") is handles.video("v2")
    finally:
        client.shutdown()


def test_an_rl_run_whose_model_a_node_cannot_open_stops_at_start_naming_path_and_node(ray_local, store_root, tmp_path):
    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.trainer.rl import RLConfig, train_rl
    from longvideo_r1.trainer.rl_data import rl_rows, write_rl_parquet
    from longvideo_r1.trainer.splits import episode_config

    q = Question("v0", "What happens?", ["a", "b", "c", "d"], answer="A", qid="q0")
    write_rl_parquet(rl_rows([q], Tools(CaptionStore(store_root)), episode_config(4), "train"), tmp_path / "train.parquet")
    missing = tmp_path / "not-on-this-node" / "model"
    with pytest.raises(InputError, match=rf"policy model={missing} on node {ray.util.get_node_ip_address()}"):
        train_rl(RLConfig(steps=1), tmp_path / "train.parquet", None, store_root, missing, tmp_path / "rl")
