"""The evaluation room: running navigators over benchmarks, metrics, and the pictures and reports
made from episodes. It may import every room below the platform (corpus, agent, reward)."""
