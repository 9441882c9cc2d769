"""Label pairs shared by the tests of the rule and LLM modification generators."""
import pandas as pd

from tfcovr.data.attributes import parse_label

VT = "(VT) round-off, flic-flac with 0.5 turn on, stretched salto forward with {} turn off"
PAIRS = [(1, 3, VT.format("0.5"), VT.format("2")),
         (1, 2, VT.format("0.5"), VT.format("1")),
         (1, 0, VT.format("0.5"), VT.format("1.5")),
         (40, 41, "(FX) switch leap with 0.5 turn", "(FX) switch leap with 1 turn")]


def _gen(gen, pairs=PAIRS):
    return [gen.generate(q, t, parse_label(q), parse_label(t), qi, ti) for qi, ti, q, t in pairs]


def _table(pairs=PAIRS):
    return pd.DataFrame(pairs, columns=["query_label_id", "target_label_id", "query_label", "target_label"])
