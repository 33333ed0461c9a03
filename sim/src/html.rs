//! `kvsim run --html`: one self-contained page showing a run as a
//! space-time diagram (a lane per node, messages as arrows, faults as
//! marks, role bands, client operations as bars).
//!
//! The page is the [`Timeline`] as one JSON object in a
//! `<script type="application/json">` block, plus the CSS and JavaScript
//! (`html/view.css`, `html/view.js`) that draw it; it needs no network.
//! Every `<` in the JSON is written `\u003c` (JSON's own escape, so the
//! data reads back the same), which keeps `</script>` and `<!--` in keys or
//! values from ending the block; the script puts text into the page only
//! through `textContent` and attributes, never as markup.

use crate::timeline::Timeline;
use std::path::Path;

const CSS: &str = include_str!("html/view.css");
const JS: &str = include_str!("html/view.js");

/// The data as embedded in the page: JSON with every `<` escaped.
pub fn data_json(t: &Timeline) -> String {
    let json = serde_json::to_string(t).expect("a timeline serializes");
    json.replace('<', "\\u003c")
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn page(t: &Timeline) -> String {
    let title = if t.recorded {
        escape(&format!("kvsim replay: {}", t.scenario))
    } else {
        escape(&format!("kvsim: {} seed {}", t.scenario, t.seed))
    };
    let data = data_json(t);
    let mut s = String::with_capacity(data.len() + CSS.len() + JS.len() + 4096);
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(&format!("<title>{title}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n"));
    s.push_str(BODY);
    s.push_str("<script type=\"application/json\" id=\"kvsim-data\">");
    s.push_str(&data);
    s.push_str("</script>\n<script>\n");
    s.push_str(JS);
    s.push_str("</script>\n</body>\n</html>\n");
    s
}

/// Writes the page to `path`.
pub fn write(path: &Path, t: &Timeline) -> std::io::Result<()> {
    std::fs::write(path, page(t))
}

/// The page's fixed markup; the script fills it in.
const BODY: &str = r#"<header>
<h1 id="title">kvsim</h1>
<div id="controls">
<button id="zoom-in" title="zoom in (+ or the mouse wheel)">+</button>
<button id="zoom-out" title="zoom out (-)">&minus;</button>
<button id="pan-left" title="earlier (left arrow, or drag)">&larr;</button>
<button id="pan-right" title="later (right arrow, or drag)">&rarr;</button>
<button id="reset" title="the whole run (0)">whole run</button>
<label title="pings, empty heartbeats and their acknowledgements, as --trace messages leaves out"><input type="checkbox" id="hide-chatter" checked> hide chatter</label>
<span id="window"></span>
</div>
<div id="legend"></div>
</header>
<div id="view"><svg id="svg" xmlns="http://www.w3.org/2000/svg"></svg></div>
<div id="tip" hidden></div>
<div id="detail"><span class="hint">Click a message, mark, band or operation to see its trace line.</span></div>
<pre id="errors" hidden></pre>
<details id="about"><summary>scenario and summary</summary><pre id="about-text"></pre><pre id="summary-text"></pre></details>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_end_its_script_block() {
        let t = Timeline { scenario: "</script><!-- x".into(), ..Timeline::default() };
        let json = data_json(&t);
        assert!(!json.contains('<'), "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["scenario"], "</script><!-- x");
        let p = page(&t);
        assert!(p.contains("<title>kvsim: &lt;/script&gt;&lt;!-- x seed 0</title>"), "{p}");
        assert_eq!(p.matches("</script>").count(), 2, "only the two blocks' own ends");
    }
}
