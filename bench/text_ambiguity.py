"""How much a modification text says on its own: can a model that never sees the query video name the target?

For each label-pair table given (default: the pairs stage's output) and each rule phrasing, writes the
modification texts and prints: the share of pairs whose text belongs to a single target label, the mean number
of target labels per text, and the text-only ceiling (mean over pairs of 1 / targets of its text: the target
accuracy of the best model that reads the text alone). A composed-retrieval benchmark needs texts that do not
name their target; compare SynthGym's figures with the real FineGym + FineDiving labels' (run the labels and
pairs stages with `data.source: real`; they need the annotation files only, no videos).

    python bench/text_ambiguity.py [--pairs data/build/pairs.parquet ...] [--seed 0]
"""
import argparse
import logging

import pandas as pd

from tfcovr.data.modify import ModifyConfig, generate_modifications
from tfcovr.data.rules import PHRASINGS


def ambiguity(mods: pd.DataFrame) -> dict[str, float]:
    "Figures of one modification table (columns modification, target_label_id)."
    n = mods.modification.map(mods.groupby("modification").target_label_id.nunique())
    return {"pairs": len(mods), "texts": mods.modification.nunique(), "unique_target": float((n == 1).mean()),
            "targets_per_text": float(n.mean()), "text_only_ceiling": float((1 / n).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["data/build/pairs.parquet"], help="label-pair tables (pairs stage)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    rows = []
    for path in args.pairs:
        pairs = pd.read_parquet(path)
        labels = pd.concat([pairs.query_label_id, pairs.target_label_id]).nunique()
        for phrasing in PHRASINGS:
            mods = generate_modifications(pairs, None, ModifyConfig(phrasing=phrasing), args.seed, progress=False)
            rows.append({"pairs table": path, "labels": labels, "phrasing": phrasing, **ambiguity(mods)})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
