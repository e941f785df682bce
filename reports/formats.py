"""Render a Table as Markdown, LaTeX (booktabs) or an HTML fragment."""

from __future__ import annotations

import html

from reports.claims import NEEDS_SEEDS, NOT_TRAINED
from reports.layouts import DISAGREE
from reports.stats import VERDICTS
from reports.tables import GAP_WORDS, Table

WIDE_COLUMNS = 8
# One replacement per character, so the LaTeX a replacement writes is never escaped again.
_LATEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "δ": r"$\delta$", "†": r"$^\dagger$", "α": r"$\alpha$", "β": r"$\beta$",
    "−": r"$-$", "<": r"$<$", ">": r"$>$",
})


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX tabular cell or caption (special characters, ±, Δ, †, α, β)."""
    return text.translate(_LATEX)


def to_markdown(table: Table) -> str:
    """A caption line (and the provenance under it), a GitHub-style pipe table and the notes as a list."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    parts = [f"**{table.caption}**", ""] + ([f"*{table.provenance}*", ""] if table.provenance else [])
    parts += [line(table.header),
             "|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|"]
    parts += [line(r) for r in table.rows]
    parts += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(parts) + "\n"


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs tabular; needs \\usepackage{booktabs} and, for tables
    wider than WIDE_COLUMNS columns (scaled to the line width), \\usepackage{graphicx}. The
    caption ends with the provenance; the list of tables gets the caption alone."""
    wide = len(table.header) > WIDE_COLUMNS
    tabular = [f"\\begin{{tabular}}{{l{'r' * (len(table.header) - 1)}}}", r"\toprule",
               " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    tabular += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.rows]
    tabular += [r"\bottomrule", r"\end{tabular}"]
    if wide:
        tabular = [r"\resizebox{\linewidth}{!}{%"] + tabular + ["}"]
    lines = [f"% {table.caption} -- needs \\usepackage{{booktabs}}" + (", \\usepackage{graphicx}" if wide else ""),
             r"\begin{table}[ht]", r"\centering", r"\scriptsize",
             _latex_caption(table), f"\\label{{tab:{table.key}}}"] + tabular
    if table.notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{0.95\linewidth}\tiny"]
        lines += [latex_escape(n) + r"\par" for n in table.notes]
        lines += [r"\end{minipage}"]
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def _latex_caption(table: Table) -> str:
    if not table.provenance:
        return f"\\caption{{{latex_escape(table.caption)}}}"
    return (f"\\caption[{{{latex_escape(table.caption)}}}]"
            f"{{{latex_escape(table.caption)}. {latex_escape(table.provenance)}}}")


def _cell_class(text: str) -> str:
    if text in GAP_WORDS:
        return ' class="gap"'
    if text in VERDICTS:
        return f' class="{text}"'
    if text.startswith((NEEDS_SEEDS, NOT_TRAINED)):
        return ' class="no-verdict"'
    return ' class="disagree"' if DISAGREE in text else ""


def to_html(table: Table) -> str:
    """A ``<figure>`` with a captioned ``<table>`` (gap cells class="gap", ordering marks
    class="disagree", verdicts class="agrees" / "disagrees" / "inconclusive", a claim without one
    class="no-verdict"; the provenance in the caption, span class="provenance") followed by the notes."""
    e = html.escape
    head = "".join(f"<th scope=\"col\">{e(h)}</th>" for h in table.header)
    body = "\n".join(
        "<tr>" + f"<th scope=\"row\">{e(row[0])}</th>"
        + "".join(f"<td{_cell_class(c)}>{e(c)}</td>" for c in row[1:]) + "</tr>"
        for row in table.rows)
    notes = "".join(f"<li>{e(n)}</li>" for n in table.notes)
    prov = f'<span class="provenance">{e(table.provenance)}</span>' if table.provenance else ""
    return (f'<figure class="tood-table" id="{e(table.key)}">\n<div class="scroll"><table>\n'
            f"<caption>{e(table.caption)}{prov}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table></div>\n<ul class=\"notes\">{notes}</ul>\n</figure>\n")
