"""How much a modification text says on its own: can a model that never sees the query video name the target?

For each label-pair table given (default: the pairs stage's output) and each rule phrasing, writes the
modification texts and prints: the share of pairs whose text belongs to a single target label, the mean number
of target labels per text, and the text-only ceiling (mean over pairs of 1 / targets of its text: the target
accuracy of the best model that reads the text alone). A composed-retrieval benchmark needs texts that do not
name their target; compare SynthGym's figures with the real FineGym + FineDiving labels' (run the labels and
pairs stages with `data.source: real`; they need the annotation files only, no videos).

With `--labels`, the pairs are built here from a labels table instead, once per value of `--same-event`, with the
params file's `pairing` section otherwise: how much pairing across FineGym's events changes the figures.

    python bench/text_ambiguity.py [--pairs data/build/pairs.parquet ...] [--seed 0]
    python bench/text_ambiguity.py --labels data/build/labels.parquet [--same-event true false] [--params params.yaml]
"""
import argparse
import dataclasses
import logging

import pandas as pd

from tfcovr.core import load_params
from tfcovr.data.modify import ModifyConfig, generate_modifications
from tfcovr.data.pairing import PairingConfig, build_pairs
from tfcovr.data.rules import PHRASINGS


def ambiguity(mods: pd.DataFrame) -> dict[str, float]:
    "Figures of one modification table (columns modification, target_label_id)."
    n = mods.modification.map(mods.groupby("modification").target_label_id.nunique())
    return {"pairs": len(mods), "texts": mods.modification.nunique(), "unique_target": float((n == 1).mean()),
            "targets_per_text": float(n.mean()), "text_only_ceiling": float((1 / n).mean())}


def pair_tables(args) -> list[tuple[str, pd.DataFrame]]:
    "(name, pairs) of every table to measure: the files of --pairs, or pairs built from --labels per --same-event value."
    if args.labels is None: return [(path, pd.read_parquet(path)) for path in args.pairs]
    cfg = load_params(args.params, {"pairing": PairingConfig}, strict=False)["pairing"]
    labels, out, emb = pd.read_parquet(args.labels), [], None
    for value in args.same_event:
        res = build_pairs(labels, dataclasses.replace(cfg, same_event=value == "true"), emb=emb)
        emb = res.embeddings                                     # the labels' embeddings do not depend on the rule
        out.append((f"{args.labels} same_event={value}", res.pairs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["data/build/pairs.parquet"], help="label-pair tables (pairs stage)")
    ap.add_argument("--labels", default=None, help="a labels table to pair here instead (labels stage)")
    ap.add_argument("--same-event", nargs="+", choices=["true", "false"], default=["true", "false"],
                    help="with --labels: the pairing.same_event values to compare")
    ap.add_argument("--params", default="params.yaml", help="with --labels: the params file whose pairing section is used")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    rows = []
    for name, pairs in pair_tables(args):
        labels = pd.concat([pairs.query_label_id, pairs.target_label_id]).nunique()
        cross = int(pairs["event"].astype(str).str.contains("->").sum()) if "event" in pairs else None
        for phrasing in PHRASINGS:
            mods = generate_modifications(pairs, None, ModifyConfig(phrasing=phrasing), args.seed, progress=False)
            rows.append({"pairs table": name, "labels": labels, "cross-event pairs": cross, "phrasing": phrasing, **ambiguity(mods)})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
