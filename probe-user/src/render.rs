//! The SVG flamegraph, drawn by inferno from the folded lines, coloured by
//! frame kind, with a legend.
//!
//! Each kind has a hue family (see [`kind_colour`]): kernel orange and managed
//! green as in inferno's own palettes, Go blue, native red, transition purple;
//! what is not code (process roots, grouping levels) grey. Within a family a
//! frame's shade comes from a hash of its name, so one function has one colour
//! everywhere and neighbours differ. The colours reach inferno through its
//! per-function palette map, filled beforehand from [`Folded::kinds`].
//!
//! inferno draws no legend: one is added below the frames, in a strip the SVG
//! is made taller for, outside inferno's `frames` group (its JavaScript only
//! walks that group, so zoom and search are untouched). Only kinds present in
//! the profile are listed.

use std::{fmt::Write as _, io};

use inferno::flamegraph::{
    self, Options,
    color::{Color, MultiPalette, Palette, PaletteMap},
};

use crate::{
    fold::{Folded, lines},
    frame::FrameKind,
};

/// Height of the legend strip, in pixels.
const LEGEND_HEIGHT: usize = 24;
/// inferno's default font size and width (`Options::font_size`, `font_width`).
const FONT_SIZE: usize = 12;
const FONT_WIDTH: f64 = 0.59;
/// inferno's left padding (`XPAD`).
const XPAD: usize = 10;

/// Writes an interactive SVG of `folded`, frames coloured by kind, with a
/// legend of the kinds present; `count_name` is what the counts are
/// (`samples`, `µs`).
pub fn render_svg(
    folded: &Folded,
    title: &str,
    subtitle: &str,
    count_name: &str,
    mut out: impl io::Write,
) -> io::Result<()> {
    let mut palette = PaletteMap::default();
    for (text, &kind) in &folded.kinds {
        palette.insert(text, kind_colour(kind, text));
    }
    let mut opts = Options::default();
    opts.title = title.to_owned();
    opts.subtitle = Some(subtitle.to_owned());
    opts.count_name = count_name.to_owned();
    // For a frame missing from the map (none should be): inferno's colours.
    opts.colors = Palette::Multi(MultiPalette::Java);
    opts.hash = true;
    opts.palette_map = Some(&mut palette);
    let lines = lines(folded);
    let mut svg = Vec::new();
    let result = flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg);
    match result {
        // inferno still writes a complete SVG that says there was no input.
        Err(e) if folded.stacks.is_empty() && e.kind() == io::ErrorKind::InvalidData => {}
        other => other?,
    }
    let present: Vec<FrameKind> = FrameKind::ALL
        .into_iter()
        .filter(|k| folded.kinds.values().any(|v| *v == Some(*k)))
        .collect();
    let with_legend = std::str::from_utf8(&svg)
        .ok()
        .and_then(|text| add_legend(text, &present));
    match with_legend {
        Some(text) => out.write_all(text.as_bytes()),
        // Not the layout the legend was made for (another inferno): as drawn.
        None => out.write_all(&svg),
    }
}

/// The colour of a frame of kind `kind` named `name`.
pub fn kind_colour(kind: Option<FrameKind>, name: &str) -> Color {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let a = (hash & 0xff) as f64 / 255.0;
    let b = ((hash >> 8) & 0xff) as f64 / 255.0;
    let shade = |base: u8, spread: u8, v: f64| base.saturating_add((f64::from(spread) * v) as u8);
    let (r, g, bl) = match kind {
        Some(FrameKind::Kernel) => (shade(225, 30, a), shade(130, 50, b), shade(0, 40, a)),
        Some(FrameKind::Managed) => (shade(60, 60, a), shade(170, 60, b), shade(50, 50, a)),
        Some(FrameKind::Go) => (shade(20, 60, a), shade(140, 50, b), shade(205, 50, a)),
        Some(FrameKind::Native) => (shade(205, 50, a), shade(50, 60, b), shade(50, 40, a)),
        Some(FrameKind::Transition) => (shade(160, 50, a), shade(90, 40, b), shade(205, 50, a)),
        None => {
            let v = shade(190, 30, a);
            (v, v, v)
        }
    };
    Color { r, g, b: bl }
}

/// The legend's text for `kind`.
fn legend_label(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Managed => "managed (.NET)",
        FrameKind::Transition => "transition ([cgo], [P/Invoke], glue)",
        other => other.label(),
    }
}

/// `svg` (inferno's) made taller by a strip with a legend of `kinds` at the
/// bottom; `None` if there is nothing to list or the SVG is not laid out as
/// inferno 0.12 does it (a root `<svg ... height="H" ... viewBox="0 0 W H">`,
/// a background `<rect ... height="H" ...>`, then the `frames` group).
fn add_legend(svg: &str, kinds: &[FrameKind]) -> Option<String> {
    if kinds.is_empty() {
        return None;
    }
    let root_at = svg.find("<svg ")?;
    let root_end = root_at + svg[root_at..].find('>')?;
    let root = &svg[root_at..root_end];
    let height_value = attribute(root, "height")?;
    let height: usize = height_value.parse().ok()?;
    let view_box = attribute(root, "viewBox")?;
    let new_height = height + LEGEND_HEIGHT;
    let new_view_box = view_box.strip_suffix(height_value)?.to_owned() + &new_height.to_string();
    let new_root = root
        .replacen(
            &format!("height=\"{height}\""),
            &format!("height=\"{new_height}\""),
            1,
        )
        .replacen(
            &format!("viewBox=\"{view_box}\""),
            &format!("viewBox=\"{new_view_box}\""),
            1,
        );
    let bg_at = root_end + svg[root_end..].find("fill=\"url(#background)\"")?;
    let bg_start = svg[..bg_at].rfind("<rect ")?;
    let bg = &svg[bg_start..bg_at];
    let new_bg = bg.replacen(
        &format!("height=\"{height}\""),
        &format!("height=\"{new_height}\""),
        1,
    );
    if new_bg == bg {
        return None;
    }
    let frames_at = bg_at + svg[bg_at..].find("<svg id=\"frames\"")?;

    let mut legend = String::from("<g id=\"legend\">");
    let (mut x, swatch) = (XPAD, FONT_SIZE);
    let top = height + (LEGEND_HEIGHT - swatch) / 2;
    for &kind in kinds {
        let c = kind_colour(Some(kind), "");
        let label = legend_label(kind);
        write!(
            legend,
            "<rect x=\"{x}\" y=\"{top}\" width=\"{swatch}\" height=\"{swatch}\" fill=\"rgb({},{},{})\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            c.r,
            c.g,
            c.b,
            x + swatch + 4,
            top + swatch - 2,
            escape(label),
        )
        .ok()?;
        x += swatch + 4 + (label.len() as f64 * FONT_SIZE as f64 * FONT_WIDTH) as usize + 16;
    }
    legend.push_str("</g>\n");

    let mut out = String::with_capacity(svg.len() + legend.len() + 64);
    out.push_str(&svg[..root_at]);
    out.push_str(&new_root);
    out.push_str(&svg[root_end..bg_start]);
    out.push_str(&new_bg);
    out.push_str(&svg[bg_at..frames_at]);
    out.push_str(&legend);
    out.push_str(&svg[frames_at..]);
    Some(out)
}

/// The value of attribute `name` in tag text `tag` (` name="value"`).
fn attribute<'t>(tag: &'t str, name: &str) -> Option<&'t str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// `text` safe inside an XML element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_frames_and_kernel_colours() {
        let mut folded = Folded::default();
        folded.stacks.insert("app;main;hot".into(), 3);
        folded.stacks.insert("app;main;read;sys_read_[k]".into(), 1);
        let mut svg = Vec::new();
        render_svg(&folded, "t", "s", "samples", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("<title>hot (3 samples, 75.00%)</title>"),
            "{svg}"
        );
        assert!(svg.contains("sys_read"));
    }

    /// A profile with frames of every kind, and the kind of each frame text.
    fn mixed() -> Folded {
        let mut folded = Folded::default();
        let frames: [(&str, Option<FrameKind>); 9] = [
            ("app", None),
            ("Prog::Main_[j]", Some(FrameKind::Managed)),
            (
                "dynamicClass::IL_STUB_PInvoke_[j]",
                Some(FrameKind::Transition),
            ),
            ("[P/Invoke]", Some(FrameKind::Transition)),
            ("main.inner", Some(FrameKind::Go)),
            ("[cgo]", Some(FrameKind::Transition)),
            ("cfunc", Some(FrameKind::Native)),
            ("sys_write_[k]", Some(FrameKind::Kernel)),
            ("main.mix_[i]", Some(FrameKind::Go)),
        ];
        for (text, kind) in frames {
            folded.kinds.insert(text.into(), kind);
        }
        folded.stacks.insert(
            "app;Prog::Main_[j];dynamicClass::IL_STUB_PInvoke_[j];[P/Invoke];cfunc".into(),
            2,
        );
        folded.stacks.insert(
            "app;main.inner;main.mix_[i];[cgo];cfunc;sys_write_[k]".into(),
            3,
        );
        folded
    }

    fn render(folded: &Folded) -> String {
        let mut svg = Vec::new();
        render_svg(folded, "t", "s", "samples", &mut svg).unwrap();
        String::from_utf8(svg).unwrap()
    }

    /// The fill of the frame whose tooltip starts with `label`.
    fn fill(svg: &str, label: &str) -> String {
        let at = svg
            .find(&format!("<title>{label} ("))
            .unwrap_or_else(|| panic!("no frame {label}"));
        let fill = at + svg[at..].find("fill=\"").unwrap() + 6;
        svg[fill..fill + svg[fill..].find('"').unwrap()].to_owned()
    }

    fn rgb(c: Color) -> String {
        format!("rgb({},{},{})", c.r, c.g, c.b)
    }

    #[test]
    fn frames_are_coloured_by_kind() {
        let folded = mixed();
        let svg = render(&folded);
        for (text, &kind) in &folded.kinds {
            // inferno shows frames without their annotation.
            let label = text
                .strip_suffix("_[j]")
                .or_else(|| text.strip_suffix("_[k]"))
                .or_else(|| text.strip_suffix("_[i]"))
                .unwrap_or(text);
            assert_eq!(fill(&svg, label), rgb(kind_colour(kind, text)), "{text}");
        }
    }

    #[test]
    fn each_kind_has_a_hue_family_of_its_own() {
        let family = |c: Color| {
            let (r, g, b) = (c.r, c.g, c.b);
            if r == g && g == b {
                None
            } else if g > r && g > b {
                Some(FrameKind::Managed)
            } else if b >= 200 && r < 100 {
                Some(FrameKind::Go)
            } else if b >= 200 && r >= 150 {
                Some(FrameKind::Transition)
            } else if r > g && r > b && g >= 130 {
                Some(FrameKind::Kernel)
            } else if r > g && r > b && g < 120 {
                Some(FrameKind::Native)
            } else {
                panic!("{c:?} in no family")
            }
        };
        for i in 0..500 {
            let name = format!("function_{i}");
            for kind in FrameKind::ALL.map(Some).into_iter().chain([None]) {
                assert_eq!(family(kind_colour(kind, &name)), kind, "{name}");
            }
        }
        // One name, one colour; other names, other shades.
        let go = |n: &str| kind_colour(Some(FrameKind::Go), n);
        assert_eq!(go("main.main"), go("main.main"));
        assert_ne!(go("main.main"), go("main.work"));
    }

    #[test]
    fn the_legend_lists_the_kinds_present_below_the_frames_in_well_formed_xml() {
        use quick_xml::events::Event;

        let svg = render(&mixed());
        let mut reader = quick_xml::Reader::from_str(&svg);
        // Open elements: tag and id.
        let mut open: Vec<(Vec<u8>, Option<String>)> = Vec::new();
        let inside = |open: &[(Vec<u8>, Option<String>)], id: &str| {
            open.iter().any(|(_, i)| i.as_deref() == Some(id))
        };
        let mut root_height: Option<f64> = None;
        let (mut frames_bottom, mut legend_top, mut legend_bottom) = (0f64, f64::MAX, 0f64);
        let mut labels = Vec::new();
        loop {
            let event = reader.read_event().expect("well-formed XML");
            match &event {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => {
                    let attr = |name: &str| {
                        e.try_get_attribute(name)
                            .unwrap()
                            .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
                    };
                    let number = |name: &str| attr(name).unwrap().parse::<f64>().unwrap();
                    let tag = e.name().as_ref().to_vec();
                    if tag == b"svg" && root_height.is_none() {
                        root_height = Some(number("height"));
                    }
                    if tag == b"g" && attr("id").as_deref() == Some("legend") {
                        assert!(!inside(&open, "frames"), "legend inside the frames");
                    }
                    if tag == b"rect" && inside(&open, "frames") {
                        frames_bottom = frames_bottom.max(number("y") + number("height"));
                    } else if tag == b"rect" && inside(&open, "legend") {
                        legend_top = legend_top.min(number("y"));
                        legend_bottom = legend_bottom.max(number("y") + number("height"));
                    }
                    if matches!(event, Event::Start(_)) {
                        open.push((tag, attr("id")));
                    }
                }
                Event::Text(t)
                    if inside(&open, "legend")
                        && open.last().is_some_and(|(tag, _)| tag == b"text") =>
                {
                    labels.push(std::str::from_utf8(t).unwrap().to_owned());
                }
                Event::End(_) => {
                    open.pop();
                }
                _ => {}
            }
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert!(frames_bottom > 0.0);
        assert!(
            legend_top >= frames_bottom,
            "{legend_top} < {frames_bottom}"
        );
        assert!(
            legend_bottom <= root_height.unwrap(),
            "legend off the canvas"
        );
        assert_eq!(
            labels,
            [
                "managed (.NET)",
                "Go",
                "native",
                "transition ([cgo], [P/Invoke], glue)",
                "kernel"
            ]
        );
    }

    #[test]
    fn the_legend_shows_only_the_kinds_present() {
        let mut folded = Folded::default();
        folded.kinds.insert("app".into(), None);
        folded.kinds.insert("main.main".into(), Some(FrameKind::Go));
        folded.stacks.insert("app;main.main".into(), 1);
        let svg = render(&folded);
        let legend = &svg[svg.find("<g id=\"legend\">").expect("a legend")..];
        let legend = &legend[..legend.find("</g>").unwrap()];
        assert_eq!(legend.matches("<text").count(), 1, "{legend}");
        assert!(legend.contains(">Go</text>"));
        // Nothing of a known kind: no legend.
        let mut bare = Folded::default();
        bare.stacks.insert("app;x".into(), 1);
        assert!(!render(&bare).contains("id=\"legend\""));
    }

    #[test]
    fn an_empty_profile_still_renders_a_whole_svg() {
        let mut svg = Vec::new();
        render_svg(&Folded::default(), "t", "s", "samples", &mut svg).unwrap();
        assert!(
            String::from_utf8(svg)
                .unwrap()
                .trim_end()
                .ends_with("</svg>")
        );
    }
}
