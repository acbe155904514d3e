"""Independent plain-Python references for the ranking losses: loops over lists and pairs, float64.

Written from the loss definitions (the original's rules), never calling the code under test.
"""

from __future__ import annotations

import math

LOG_EPS = math.log(1e-10)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ndcg_gain(label):
    return 2.0**label - 1.0


def ln_discount(rank):
    return 1.0 / math.log(1.0 + rank)


def order_by(scores):
    """Positions sorted by descending score; ties keep the earlier position first."""
    return sorted(range(len(scores)), key=lambda k: -scores[k])


def item_weights(weights, b, length):
    if weights is None:
        return [1.0] * length
    if isinstance(weights, (int, float)):
        return [float(weights)] * length
    row = list(weights[b])
    return [float(row[0])] * length if len(row) == 1 else [float(w) for w in row]


def list_weight(weights, b):
    if weights is None:
        return 1.0
    if isinstance(weights, (int, float)):
        return float(weights)
    return float(list(weights[b])[0])


def sorted_list(labels_row, logits_row, weights_row):
    """(label, logit, weight) triples sorted by logit, invalid labels pushed below every logit."""
    low = min(logits_row) - 1e-6
    scores = [s if lab >= 0 else low for lab, s in zip(labels_row, logits_row)]
    return [(float(labels_row[k]), float(logits_row[k]), weights_row[k]) for k in order_by(scores)]


def ideal_dcg(labels, gain, discount, topn=None):
    ideal = sorted(labels, reverse=True)[: topn or len(labels)]
    return sum(gain(lab) * discount(r + 1) for r, lab in enumerate(ideal))


class DCGRef:
    def __init__(self, topn=None, gain=lambda x: x, discount=lambda r: 1.0 / r, normalized=False, smooth=0.0):
        self.topn, self.gain, self.discount, self.normalized, self.smooth = topn, gain, discount, normalized, smooth

    def gains(self, labels):
        clean = [max(lab, 0.0) if lab >= 0 else 0.0 for lab in labels]
        scale = 1.0
        if self.normalized:
            idcg = ideal_dcg(clean, self.gain, self.discount, self.topn)
            scale = 1.0 / idcg if idcg > 0 else 0.0
        return [self.gain(lab) * scale for lab in clean]

    def pair(self, labels, i, j):
        if labels[i] < 0 or labels[j] < 0:
            return 0.0
        g = self.gains(labels)
        n = len(labels)
        top = self.topn or n
        ri, rj = i + 1, j + 1
        ci, cj = min(ri, top + 1), min(rj, top + 1)
        diff = abs(ci - cj)
        u = abs(self.discount(diff) - self.discount(diff + 1)) if diff > 0 else 0.0
        di = self.discount(ri) if ri <= top else 0.0
        dj = self.discount(rj) if rj <= top else 0.0
        v = abs(di - dj)
        weight = abs(g[i] - g[j]) * ((1 - self.smooth) * u + self.smooth * v)
        if self.topn is not None and not (ri <= self.topn or rj <= self.topn):
            return 0.0
        return weight

    def individual(self, labels):
        return [g * self.discount(k + 1) for k, g in enumerate(self.gains(labels))]


class PrecisionRef:
    def __init__(self, topn):
        self.topn = topn

    def pair(self, labels, i, j):
        if labels[i] < 0 or labels[j] < 0:
            return 0.0
        bi, bj = float(labels[i] >= 1.0), float(labels[j] >= 1.0)
        return abs(bi - bj) if (i + 1 <= self.topn) != (j + 1 <= self.topn) else 0.0


def reduce(total, weights_used, reduction):
    """weights_used: every element's (broadcast) weight, in the loss's element set."""
    if reduction == "weighted_sum":
        return total
    nonzero = sum(1 for w in weights_used if w != 0)
    return total / nonzero if nonzero else 0.0


PAIR_FNS = {
    "hinge": lambda m: max(0.0, 1.0 - m),
    "logistic": lambda m: math.log(1.0 + math.exp(-m)),
    "soft_zero_one": lambda m: 1.0 / (1.0 + math.exp(m)),
}


def pairwise(kind, labels, logits, weights=None, lambda_ref=None, lambda_scale=True, reduction=None):
    reduction = reduction or "weighted_sum_by_nonzero_weights"
    total, used = 0.0, []
    for b in range(len(labels)):
        items = sorted_list(labels[b], logits[b], item_weights(weights, b, len(labels[b])))
        lab = [t[0] for t in items]
        n = len(items)
        for i in range(n):
            for j in range(n):
                li, si, wi = items[i]
                lj, sj, _ = items[j]
                if li < 0 or lj < 0 or not li > lj:
                    used.append(0.0)
                    continue
                w = wi * (lambda_ref.pair(lab, i, j) if lambda_ref is not None else abs(li - lj))
                if lambda_ref is not None and lambda_scale:
                    w *= n
                total += w * PAIR_FNS[kind](si - sj)
                used.append(w)
    return reduce(total, used, reduction)


def softmax(labels, logits, weights=None, lambda_ref=None, reduction="weighted_sum_by_nonzero_weights"):
    total, used = 0.0, []
    for b in range(len(labels)):
        items = sorted_list(labels[b], logits[b], item_weights(weights, b, len(labels[b])))
        lab = [t[0] if t[0] >= 0 else 0.0 for t in items]
        s = [t[1] if t[0] >= 0 else LOG_EPS for t in items]
        if isinstance(lambda_ref, DCGRef):
            lab = lambda_ref.individual(lab)
        lab = [x * t[2] for x, t in zip(lab, items)]
        label_sum = sum(lab)
        if not label_sum > 0:
            continue
        top = max(s)
        log_z = top + math.log(sum(math.exp(x - top) for x in s))
        cross_entropy = -sum((x / label_sum) * (sk - log_z) for x, sk in zip(lab, s))
        total += label_sum * cross_entropy
        used.append(label_sum)
    return reduce(total, used, reduction)


def pointwise(kind, labels, logits, weights=None, reduction="weighted_sum_by_nonzero_weights"):
    total, used = 0.0, []
    for b in range(len(labels)):
        ws = item_weights(weights, b, len(labels[b]))
        for lab, s, w in zip(labels[b], logits[b], ws):
            if lab < 0:
                continue
            lab, s = float(lab), float(s)
            if kind == "sigmoid":
                p = 1.0 / (1.0 + math.exp(-s))
                loss = -(lab * math.log(p) + (1.0 - lab) * math.log(1.0 - p))
            else:
                loss = (s - lab) ** 2
            total += w * loss
            used.append(w)
    return reduce(total, used, reduction)


def list_mle_row(labels_row, logits_row, order_valid, discount=None):
    """−log likelihood of the list ordered as `order_valid` (valid positions), invalid entries last."""
    n = len(labels_row)
    invalid = [k for k in range(n) if labels_row[k] < 0]
    seq = [float(logits_row[k]) for k in order_valid] + [LOG_EPS] * len(invalid)
    nll = 0.0
    for k in range(n):
        rest = seq[k:]
        top = max(rest)
        term = top + math.log(sum(math.exp(x - top) for x in rest)) - seq[k]
        nll += term * (discount(k + 1) if discount else 1.0)
    return nll


def approx_ndcg(labels, logits, weights=None, alpha=10.0, reduction="weighted_sum"):
    total, used = 0.0, []
    for b in range(len(labels)):
        low = min(float(x) for x in logits[b]) - 1e3
        lab = [float(x) if x >= 0 else 0.0 for x in labels[b]]
        s = [float(x) if y >= 0 else low for x, y in zip(logits[b], labels[b])]
        if not sum(lab) > 0:
            continue
        dcg = 0.0
        for i in range(len(s)):
            rank = 0.5 + sum(sigmoid(alpha * (s[j] - s[i])) for j in range(len(s)))
            dcg += ndcg_gain(lab[i]) * ln_discount(rank)
        idcg = ideal_dcg(lab, ndcg_gain, ln_discount)
        w = list_weight(weights, b)
        total += w * (-dcg / idcg if idcg > 0 else 0.0)
        used.append(w)
    return reduce(total, used, reduction)
