"""A naive, obviously-correct UCE, written straight from the method page.

Layer by layer: pick the rows of every prompt, build the targets with that
layer's W0, accumulate explicit sums of outer products into

    mat1 = lamb W0 + s_e sum v* c^T + s_p sum (W0 c) c^T
    mat2 = lamb I  + s_e sum c c^T  + s_p sum c c^T

and return W - W0 with W = mat1 @ inverse(mat2), all in float64. Nothing here
is shared with the fast solver (it does not import it), so agreement between
the two is evidence that the fast path is right.
"""

from __future__ import annotations

import torch


def select(rows: torch.Tensor, last: int, farthest: int, mode: str) -> torch.Tensor:
    """Rows of one prompt: its last token to the end, shortened so all partners align (paper), or slot n."""
    if mode == "last_token":
        return rows[last : last + 1]
    return rows[last : rows.shape[0] - (farthest - last)]


def outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_i a_i b_i^T, written as the sum of outer products it is."""
    return torch.einsum("ni,nj->ij", a, b)


def solve_layer(w0, edit_pairs, preserve_rows, erase_scale, preserve_scale, lamb):
    """W - W0 for one layer; ``edit_pairs`` is a list of (c rows, v* rows)."""
    w0 = w0.double()
    d = w0.shape[1]
    mat1 = lamb * w0.clone()
    mat2 = lamb * torch.eye(d, dtype=torch.float64)
    if edit_pairs:
        c = torch.cat([c for c, _ in edit_pairs])
        v = torch.cat([v for _, v in edit_pairs])
        mat1 += erase_scale * outer_sum(v, c)
        mat2 += erase_scale * outer_sum(c, c)
    if preserve_rows:
        p = torch.cat(preserve_rows)
        mat1 += preserve_scale * outer_sum(p @ w0.T, p)
        mat2 += preserve_scale * outer_sum(p, p)
    return mat1 @ torch.inverse(mat2) - w0


def preserve_selection(preserve, mode):
    """(rows, last) prompts -> their preserve rows: all slots (paper) or slot n."""
    return [(rows if mode == "paper" else rows[last : last + 1]).double() for rows, last in preserve]


def reference_erase(weights, pairs, preserve, mode, erase_scale, preserve_scale, lamb):
    """``pairs``: [((concept rows, last), (guide rows, last))]; ``preserve``: [(rows, last)]."""
    out = {}
    kept = preserve_selection(preserve, mode)
    for key, w0 in weights.items():
        w0 = w0.double()
        edit_pairs = []
        for (c_rows, c_last), (g_rows, g_last) in pairs:
            farthest = max(c_last, g_last)
            c = select(c_rows.double(), c_last, farthest, mode)
            g = select(g_rows.double(), g_last, farthest, mode)
            edit_pairs.append((c, g @ w0.T))
        out[key] = solve_layer(w0, edit_pairs, kept, erase_scale, preserve_scale, lamb)
    return out


def reference_debias(weights, items, preserve, mode, erase_scale, preserve_scale, lamb):
    """``items``: [((rows, last), [(attribute rows, last), ...], [w_a, ...])]."""
    out = {}
    kept = preserve_selection(preserve, mode)
    for key, w0 in weights.items():
        w0 = w0.double()
        edit_pairs = []
        for (p_rows, p_last), attributes, attribute_weights in items:
            farthest = max([p_last] + [last for _, last in attributes])
            c = select(p_rows.double(), p_last, farthest, mode)
            o = c @ w0.T
            target = o.clone()
            for (a_rows, a_last), w in zip(attributes, attribute_weights):
                u = select(a_rows.double(), a_last, farthest, mode) @ w0.T
                u = u / torch.linalg.norm(u)
                target = target + w * torch.linalg.norm(o) * u
            edit_pairs.append((c, target))
        out[key] = solve_layer(w0, edit_pairs, kept, erase_scale, preserve_scale, lamb)
    return out


# --- affine maps (W c + b) and prompts made of several encoder segments -------------------------


def segment_rows(rows: torch.Tensor, segments, partner_segments, mode: str) -> torch.Tensor:
    """Rows of one prompt edited together with partners, segment by segment.

    ``segments``: [(start, stop, last)], last -1 = no content token (its first row stands in for it).
    paper: from the last content token on, as many rows as the shortest partner's tail; last_token: one row.
    """
    picked = []
    for s, (start, stop, last) in enumerate(segments):
        if mode == "last_token":
            count = 1
        else:
            count = min(p[s][1] - p[s][0] - p[s][2] for p in partner_segments)
        for k in range(count):
            picked.append(rows[start + max(last + k, 0)])
    return torch.stack(picked).double()


def reference_erase_affine(
    weights, biases, pairs, preserve, mode, erase_scale, preserve_scale, lamb, bias_in_targets=False
):
    """The closed form for maps y = W c + b with b kept fixed, from the objective itself.

    ``pairs``: [((concept rows, segments), (guide rows, segments))]; ``preserve``: [(rows, segments)].
    The targets are the guide's full outputs v* = W0 g + b, so W is aimed at v* - b (and a preserved
    row's full output W0 c + b stays when W c = W0 c). ``bias_in_targets`` aims W at v* itself, as the
    method authors' FLUX script does: the bias is then counted twice.
    """
    out = {}
    for key, w0 in weights.items():
        w0, b = w0.double(), biases[key].double()
        d = w0.shape[1]
        mat1, mat2 = lamb * w0.clone(), lamb * torch.eye(d, dtype=torch.float64)
        for (c_rows, c_segments), (g_rows, g_segments) in pairs:
            partners = [c_segments, g_segments]
            c = segment_rows(c_rows, c_segments, partners, mode)
            v = segment_rows(g_rows, g_segments, partners, mode) @ w0.T + b
            aim = v if bias_in_targets else v - b
            mat1 += erase_scale * outer_sum(aim, c)
            mat2 += erase_scale * outer_sum(c, c)
        for rows, segments in preserve:
            p = rows.double() if mode == "paper" else segment_rows(rows, segments, [segments], "last_token")
            mat1 += preserve_scale * outer_sum(p @ w0.T, p)
            mat2 += preserve_scale * outer_sum(p, p)
        out[key] = mat1 @ torch.inverse(mat2) - w0
    return out
