//! The page frame and small pieces every page uses. `maud` escapes every interpolated string,
//! so registry data (names, tags, recipe text) is always text, never markup.

use std::fmt::Write as _;

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// A whole page: the navigation, the title and `body`.
pub(crate) fn page(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · crossmerge" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    a.brand href="/" { "crossmerge" }
                    a href="/checkpoints" { "Checkpoints" }
                    a href="/lineage" { "Lineage" }
                    a href="/vectors" { "Vectors" }
                    a href="/evaluations" { "Evaluations" }
                    a href="/studies" { "Studies" }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// `s` percent-encoded, every byte but ASCII letters, digits and `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `s` made safe for a URL path (a reference may hold `/`, kept so that
/// `/checkpoints/org/name@1` reads as it is named).
pub(crate) fn path_part(s: &str) -> String {
    percent_encode(s, b"-._~/@=+,:")
}

/// `s` made safe for a query value (`+`, `/`, `&`, `=` encoded).
pub(crate) fn query_part(s: &str) -> String {
    percent_encode(s, b"-._~@")
}

/// `?k=v&…` of the pairs whose value is set and not empty (or nothing).
pub(crate) fn query_string(pairs: &[(&str, &Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            let v = v.as_deref().filter(|v| !v.is_empty())?;
            Some(format!("{k}={}", query_part(v)))
        })
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

pub(crate) fn checkpoint_link(reference: &str) -> Markup {
    html! { a href={ "/checkpoints/" (path_part(reference)) } { (reference) } }
}

pub(crate) fn vector_link(reference: &str) -> Markup {
    html! { a href={ "/vectors/" (path_part(reference)) } { (reference) } }
}

pub(crate) fn evaluation_link(id: &str, text: &str) -> Markup {
    html! { a href={ "/evaluations/" (path_part(id)) } { (text) } }
}

/// An optional string, or a dash.
pub(crate) fn opt(s: Option<&String>) -> &str {
    s.map_or("-", String::as_str)
}

/// Bytes in decimal units, as the CLI prints them.
pub(crate) fn bytes(n: u64) -> String {
    crossmerge_core::report::decimal_bytes(n)
}

/// A number as the study's tables print it (`-` for none).
pub(crate) fn num(v: Option<f64>) -> String {
    crossmerge_core::results::number(v)
}

/// An SVG document (from plotters) for inline use: its XML declaration dropped. plotters
/// escapes the text it draws.
pub(crate) fn inline_svg(svg: &str) -> Markup {
    let body = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    };
    html! { div.plot { (PreEscaped(body)) } }
}

#[cfg(test)]
mod tests {
    use super::{inline_svg, path_part, query_part, query_string};

    #[test]
    fn links_keep_names_readable_and_encode_everything_else() {
        assert_eq!(
            path_part("toy/ner+de/lambda=0.5@1"),
            "toy/ner+de/lambda=0.5@1"
        );
        assert_eq!(path_part("a b\"<>?#%"), "a%20b%22%3C%3E%3F%23%25");
        assert_eq!(path_part("é"), "%C3%A9");
        // In a query, `+` is a space and `/`, `&`, `=` split it: all encoded.
        assert_eq!(query_part("ner+de/x=1&y"), "ner%2Bde%2Fx%3D1%26y");
    }

    #[test]
    fn query_strings_keep_only_the_filters_that_are_set() {
        let (set, empty, none) = (Some("a+b".to_owned()), Some(String::new()), None);
        assert_eq!(
            query_string(&[("x", &set), ("y", &empty), ("z", &none)]),
            "?x=a%2Bb"
        );
        assert_eq!(query_string(&[("y", &empty), ("z", &none)]), "");
    }

    #[test]
    fn inline_svg_drops_the_xml_declaration() {
        let m = inline_svg("<?xml version=\"1.0\"?>\n<svg x=\"1\"></svg>").into_string();
        assert_eq!(m, "<div class=\"plot\"><svg x=\"1\"></svg></div>");
    }
}
