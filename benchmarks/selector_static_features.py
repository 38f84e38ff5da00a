"""How much of the selector's choice could come from what describes the deployment, not its traffic?

    python benchmarks/selector_static_features.py            # ~1 min on 2 cores

Offline, on the selector's labels (``training/models/selector-mix-data.npz``: every setting's
share of each system's best, and the probe features, over 240 training systems of the mix):
forests fitted on a subset of the probe features pick a setting for each held-out fold's
systems, and the table gives the mean share of each system's best those picks reach, against
the default setting (the first). The static subset is known before traffic arrives: the kinds of
sites, their RTTs and draft costs, whether the target drafts and the runtime streams, and the
share of arrivals from edge devices.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.flags import OneLineParser, whole  # noqa: E402

STATIC = ("has_remote", "remote_rtt", "has_edge", "edge_rtt", "target_drafts", "draft_ahead", "target_draft_cost",
          "remote_draft_cost", "edge_draft_cost", "edge_origin_share")


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="training/models/selector-mix-data.npz", help="labels from `python -m training.selector --data`")
    p.add_argument("--draws", type=whole("number of fold draws"), default=5, help="5-fold splits drawn (default 5)")
    p.add_argument("--trees", type=whole("number of trees"), default=300)
    args = p.parse_args(argv)
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold

    from controllers.selector import SELECTOR_FEATURES

    if not Path(args.data).is_file():
        raise SystemExit(f"error: {args.data} not found; record labels with `python -m training.selector --data FILE`")
    d = np.load(args.data)
    x, goodput = d["features"], d["goodput"]
    share = goodput / goodput.max(axis=1, keepdims=True)
    print(f"{len(x)} systems, {share.shape[1]} settings; the default setting reaches {share[:, 0].mean():.4f} of each system's best")
    for name, cols in (("static", [SELECTOR_FEATURES.index(f) for f in STATIC]), ("every probe feature", list(range(x.shape[1])))):
        means = []
        for draw in range(args.draws):
            pick = np.zeros(len(x), dtype=int)
            for train, test in KFold(5, shuffle=True, random_state=draw).split(x):
                forest = RandomForestRegressor(args.trees, min_samples_leaf=3, random_state=draw, n_jobs=2)
                pick[test] = forest.fit(x[train][:, cols], share[train]).predict(x[test][:, cols]).argmax(axis=1)
            means.append(share[np.arange(len(x)), pick].mean())
        print(f"  {name}: {np.mean(means):.4f} of each system's best (sd {np.std(means):.4f} over {args.draws} draws)")


if __name__ == "__main__":
    main()
