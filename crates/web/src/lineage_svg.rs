//! The lineage graph as inline SVG: five columns (bases, fine-tuned models, vectors, merged
//! models, evaluations), each node a link to its page, each edge a curve from input to output.

use crossmerge_core::registry::Lineage;
use maud::{Markup, html};

use crate::html::{path_part, query_part};

const NODE_W: u32 = 230;
const NODE_H: u32 = 24;
const COL_GAP: u32 = 70;
const ROW_GAP: u32 = 8;
const TOP: u32 = 34;
const COLUMNS: [&str; 5] = [
    "bases",
    "language and task models",
    "vectors",
    "merged models",
    "evaluations",
];

fn fill(kind: &str, detail: &str) -> &'static str {
    match (kind, detail) {
        ("checkpoint", "base") => "#dbe7f5",
        ("checkpoint", "language") => "#e3f1e0",
        ("checkpoint", "task") => "#f7ecd9",
        ("checkpoint", _) => "#eadff3",
        ("vector", _) => "#f1f1f1",
        _ => "#fff7d6",
    }
}

/// Shortened to `n` characters with an ellipsis (the full name is the node's tooltip).
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

pub(crate) fn draw(g: &Lineage) -> Markup {
    let mut rows = [0u32; 5];
    let pos: Vec<(u32, u32)> = g
        .nodes
        .iter()
        .map(|n| {
            let c = usize::from(n.column.min(4));
            let r = rows[c];
            rows[c] += 1;
            (
                c as u32 * (NODE_W + COL_GAP) + 10,
                TOP + r * (NODE_H + ROW_GAP),
            )
        })
        .collect();
    let width = 5 * (NODE_W + COL_GAP) + 20;
    let height = TOP + rows.iter().max().copied().unwrap_or(0) * (NODE_H + ROW_GAP) + 10;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } font-family="sans-serif" font-size="12"
            role="img" aria-label="lineage graph" {
            @for (c, label) in COLUMNS.iter().enumerate() {
                text x=(c as u32 * (NODE_W + COL_GAP) + 10) y="18" font-weight="bold" fill="#5b6570" { (label) }
            }
            @for &(a, b) in &g.edges {
                @let (x1, y1) = (pos[a].0 + NODE_W, pos[a].1 + NODE_H / 2);
                @let (x2, y2) = (pos[b].0, pos[b].1 + NODE_H / 2);
                @let mid = u32::midpoint(x1, x2);
                path d={ "M" (x1) " " (y1) " C" (mid) " " (y1) " " (mid) " " (y2) " " (x2) " " (y2) }
                    fill="none" stroke="#8a96a3" stroke-width="1" {}
            }
            @for (i, n) in g.nodes.iter().enumerate() {
                @let (x, y) = pos[i];
                @let href = match n.kind {
                    "checkpoint" => format!("/checkpoints/{}", path_part(&n.reference)),
                    "vector" => format!("/vectors/{}", path_part(&n.reference)),
                    _ => format!("/evaluations?checkpoint={}", query_part(&n.reference)),
                };
                @let label = match n.kind {
                    "evaluations" => format!("{} evaluation(s)", n.detail),
                    _ => short(&n.reference, 32),
                };
                a href=(href) class={ "node " (n.kind) } {
                    title { (n.reference) " (" (n.kind) ", " (n.detail) ")" }
                    rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="4"
                        fill=(fill(n.kind, &n.detail)) stroke="#7b8794" {}
                    text x=(x + 6) y=(y + 16) { (label) }
                }
            }
        }
    }
}
