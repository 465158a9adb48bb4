"""Per-token attention summaries for the `/derived_attention_scalars` route (protocol.md §5.8).

Row i holds query token i's attention-write norms to keys 0..i. Totals and maxima in and out are
normalised against their own maxima, in Python double precision as TDB does, including its
`x / (M - 1e-5)` scale (which divides by -1e-5 when M is 0: TDB quirk, kept).
"""

from __future__ import annotations


def _scale(x: float, m: float) -> float:
    return max(x / (m - 1e-5), 0.0)


def _positive_max(values) -> float:
    return max((max(v, 0.0) for v in values), default=0.0)


def token_attention_scalars(matrix: list[list[float]], tokens: list[str]) -> list[dict]:
    rows = [matrix[i][: i + 1] for i in range(len(tokens))]
    total_in = [sum(row) for row in rows]
    max_in = [max(row) for row in rows]
    total_out, max_out = [], []
    for j in range(len(rows)):
        column = [rows[i][j] for i in range(j, len(rows))]
        total = 0.0
        for x in column:
            total += x
        total_out.append(total)
        max_out.append(max(column))
    m_scalar = _positive_max(x for row in rows for x in row)
    m_total_in, m_max_in = _positive_max(total_in), _positive_max(max_in)
    m_total_out, m_max_out = _positive_max(total_out), _positive_max(max_out)
    out = []
    for i, row in enumerate(rows):
        out.append(
            {
                "token": tokens[i],
                "scalars": row,
                "normalizedScalars": [_scale(x, m_scalar) for x in row],
                "totalScalarIn": total_in[i],
                "normalizedTotalScalarIn": _scale(total_in[i], m_total_in),
                "maxScalarIn": max_in[i],
                "normalizedMaxScalarIn": _scale(max_in[i], m_max_in),
                "totalScalarOut": total_out[i],
                "normalizedTotalScalarOut": _scale(total_out[i], m_total_out),
                "maxScalarOut": max_out[i],
                "normalizedMaxScalarOut": _scale(max_out[i], m_max_out),
            }
        )
    return out
