"""The cluster room: where each role of a run goes on a Ray cluster, and running the main job there.

- :mod:`~longvideo_r1.cluster.resources`: the resource model of the roles (rollout, learner,
  reference, critic, reward, caption_store, video_qa), a pure placement planner checked against a
  cluster's totals and nodes, and the Ray placement groups that reserve the plan;
- :mod:`~longvideo_r1.cluster.submit`: ``lvr1 submit``, the main job as a Ray job (runtime env,
  token authentication, log streaming, exit status);
- :mod:`~longvideo_r1.cluster.commands`: the CLI glue.

It imports only ``errors`` and Ray; the rooms above (rollout, trainer, platform) use it.
"""
