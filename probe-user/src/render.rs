//! The SVG flamegraph, drawn by inferno from the folded lines.

use std::io;

use inferno::flamegraph::{
    self, Options,
    color::{MultiPalette, Palette},
};

use crate::fold::{Folded, lines};

/// Writes an interactive SVG of `folded`. Kernel frames (`_[k]`) are drawn orange,
/// user frames in warm colours (inferno's "java" palette, which also knows the
/// `_[j]` JIT and `_[i]` inline annotations the runtime modules add).
pub fn render_svg(
    folded: &Folded,
    title: &str,
    subtitle: &str,
    out: impl io::Write,
) -> io::Result<()> {
    let mut opts = Options::default();
    opts.title = title.to_owned();
    opts.subtitle = Some(subtitle.to_owned());
    opts.count_name = "samples".to_owned();
    opts.colors = Palette::Multi(MultiPalette::Java);
    opts.hash = true;
    let lines = lines(folded);
    let result = flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out);
    match result {
        // inferno still writes a complete SVG that says there was no input.
        Err(e) if folded.is_empty() && e.kind() == io::ErrorKind::InvalidData => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_frames_and_kernel_colours() {
        let mut folded = Folded::new();
        folded.insert("app;main;hot".into(), 3);
        folded.insert("app;main;read;sys_read_[k]".into(), 1);
        let mut svg = Vec::new();
        render_svg(&folded, "t", "s", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("<title>hot (3 samples, 75.00%)</title>"),
            "{svg}"
        );
        assert!(svg.contains("sys_read"));
    }

    #[test]
    fn an_empty_profile_still_renders_a_whole_svg() {
        let mut svg = Vec::new();
        render_svg(&Folded::new(), "t", "s", &mut svg).unwrap();
        assert!(
            String::from_utf8(svg)
                .unwrap()
                .trim_end()
                .ends_with("</svg>")
        );
    }
}
