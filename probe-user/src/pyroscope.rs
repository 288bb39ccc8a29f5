//! Pyroscope's ingest API (`agent --pyroscope-url URL`): each window is sent
//! as one request per process, its stacks as a pprof profile.
//!
//! The request, as Pyroscope documents it (`docs/sources/configure-server/
//! about-server-api.md` in grafana/pyroscope, read at commit 345131f8):
//! `POST URL/ingest?name=APP{k=v,...}&from=UNIX_S&until=UNIX_S&format=pprof`,
//! the body `multipart/form-data` with the profile in a file field named
//! `profile` and the sample types described in one named
//! `sample_type_config` (JSON: units, aggregation, display name, sampled);
//! with `format=pprof` the name is the application's *prefix*, each sample
//! type's display name is added to it (`myapp.cpu{...}`). A tenant goes in
//! `X-Scope-OrgID`. The profile part is the gzipped pprof the agent writes
//! (pprof readers, Pyroscope's among them, take it gzipped).
//!
//! What is sent: the application name from `--app-name` (default `{comm}`),
//! labels `pid`, `exe`, `host`, and `container_id`/`pod_uid` where known;
//! names and values are reduced to the characters Pyroscope's name syntax
//! takes (others become `_`).

/// The ingest path, added to `--pyroscope-url` unless it ends with it.
pub const INGEST_PATH: &str = "/ingest";

/// What the name of a process's application is made of.
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts<'a> {
    /// Its pid.
    pub pid: u32,
    /// Its comm (the process's own name).
    pub comm: &'a str,
    /// Its executable's path, if known.
    pub exe: Option<&'a str>,
    /// This host's name.
    pub host: &'a str,
    /// Its container's id, if it runs in one.
    pub container_id: Option<&'a str>,
    /// Its Kubernetes pod's UID, if it runs in one.
    pub pod_uid: Option<&'a str>,
}

/// `--app-name`'s placeholders.
pub const PLACEHOLDERS: [&str; 4] = ["{comm}", "{exe}", "{pid}", "{host}"];

/// Checks an `--app-name` template: text and [`PLACEHOLDERS`] only.
pub fn parse_app_name(template: &str) -> Result<String, String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let tail = &rest[open..];
        let Some(p) = PLACEHOLDERS.iter().find(|p| tail.starts_with(*p)) else {
            return Err(format!(
                "{template:?} has a placeholder other than {}",
                PLACEHOLDERS.join(", ")
            ));
        };
        rest = &tail[p.len()..];
    }
    if rest.contains('}') || template.trim().is_empty() {
        return Err(format!("{template:?} is not an application name template"));
    }
    Ok(template.to_owned())
}

/// The application name of a process: `template` with its placeholders
/// filled, reduced to Pyroscope's name characters.
pub fn app_name(template: &str, facts: &ProcessFacts) -> String {
    let exe = facts
        .exe
        .and_then(|e| e.rsplit('/').next())
        .filter(|e| !e.is_empty())
        .unwrap_or(facts.comm);
    let name = template
        .replace("{comm}", facts.comm)
        .replace("{exe}", exe)
        .replace("{pid}", &facts.pid.to_string())
        .replace("{host}", facts.host);
    let name = clean(&name, |c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// `text` with every character `keep` refuses made `_`.
fn clean(text: &str, keep: impl Fn(char) -> bool) -> String {
    text.chars()
        .map(|c| if keep(c) { c } else { '_' })
        .collect()
}

/// A label value in Pyroscope's name syntax (no `{`, `}`, `,`, `=`, quote or
/// space).
fn label_value(v: &str) -> String {
    clean(v, |c| c.is_ascii_alphanumeric() || "_.-:/@+".contains(c))
}

/// `APP{k=v,...}`: the `name` query parameter, labels sorted.
pub fn series_name(app: &str, facts: &ProcessFacts) -> String {
    let mut labels = vec![("pid", facts.pid.to_string())];
    if let Some(exe) = facts.exe {
        labels.push(("exe", exe.to_owned()));
    }
    if !facts.host.is_empty() {
        labels.push(("host", facts.host.to_owned()));
    }
    if let Some(c) = facts.container_id {
        labels.push(("container_id", c.to_owned()));
    }
    if let Some(p) = facts.pod_uid {
        labels.push(("pod_uid", p.to_owned()));
    }
    labels.sort();
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", label_value(v)))
        .collect();
    format!("{app}{{{}}}", inner.join(","))
}

/// Percent-encodes `s` for a query (everything but the unreserved
/// characters of RFC 3986).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query of one process's window's request (added to the ingest URL).
pub fn ingest_query(series: &str, from_s: u64, until_s: u64) -> String {
    format!(
        "?name={}&from={from_s}&until={until_s}&format=pprof&spyName=crossprof",
        query_escape(series)
    )
}

/// The `sample_type_config` of a profile of sample `types` (name, unit;
/// `crate::pprof::Kind::sample_types`): on-CPU time as Go's own
/// CPU profiles are configured by Pyroscope (`cpu`, units `samples`,
/// sampled: the nanoseconds divided by the period), the sample count left
/// out (Pyroscope would show it as a series of its own); off-CPU and
/// goroutine-wait nanoseconds summed as they are (Pyroscope's ingest API
/// documents no time unit: they show as their values under `samples`).
pub fn sample_type_config(types: &[(&str, &str)]) -> String {
    let entries: Vec<String> = types
        .iter()
        .filter(|(name, _)| *name != "samples")
        .map(|(name, _)| {
            let sampled = *name == "cpu";
            format!(
                "\"{name}\":{{\"units\":\"samples\",\"aggregation\":\"sum\",\
                 \"display-name\":\"{name}\",\"sampled\":{sampled}}}"
            )
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// A `multipart/form-data` body of the file fields `parts` (name, bytes),
/// and its content type. The boundary is chosen so it is in no part.
pub fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    multipart_seeded(parts, seed)
}

fn multipart_seeded(parts: &[(&str, &[u8])], seed: u128) -> (String, Vec<u8>) {
    let mut n = 0u32;
    let boundary = loop {
        let b = format!("crossprof-{seed:x}-{n}");
        if !parts
            .iter()
            .any(|(_, body)| body.windows(b.len()).any(|w| w == b.as_bytes()))
        {
            break b;
        }
        n += 1;
    };
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ProcessFacts<'static> {
        ProcessFacts {
            pid: 42,
            comm: "my app",
            exe: Some("/usr/bin/my{app}"),
            host: "h1",
            container_id: Some("abc"),
            pod_uid: None,
        }
    }

    #[test]
    fn app_names_fill_their_placeholders_with_pyroscope_s_characters() {
        let f = facts();
        assert_eq!(app_name("{comm}", &f), "my_app");
        assert_eq!(app_name("svc.{exe}.{pid}@{host}", &f), "svc.my_app_.42_h1");
        assert_eq!(app_name("{comm}", &ProcessFacts::default()), "unknown");
        assert!(parse_app_name("{comm}-{pid}").is_ok());
        assert!(parse_app_name("{cmd}").is_err());
        assert!(parse_app_name("a}").is_err());
        assert!(parse_app_name(" ").is_err());
    }

    #[test]
    fn a_series_name_carries_sorted_clean_labels() {
        assert_eq!(
            series_name("app", &facts()),
            "app{container_id=abc,exe=/usr/bin/my_app_,host=h1,pid=42}"
        );
    }

    #[test]
    fn the_url_is_escaped_and_has_every_required_parameter() {
        let url = ingest_query("a{pid=1,exe=/x}", 10, 20);
        assert_eq!(
            url,
            "?name=a%7Bpid%3D1%2Cexe%3D%2Fx%7D&from=10&until=20\
             &format=pprof&spyName=crossprof"
        );
    }

    #[test]
    fn the_sample_type_config_is_json_of_the_profile_s_types() {
        let cfg = sample_type_config(&[("samples", "count"), ("cpu", "nanoseconds")]);
        let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(v["cpu"]["sampled"], true);
        assert_eq!(v["cpu"]["units"], "samples");
        assert!(v.get("samples").is_none());
    }

    #[test]
    fn multipart_parts_are_framed_by_a_boundary_they_do_not_hold() {
        let (ct, body) = multipart(&[("profile", b"\x1f\x8b\r\n--x"), ("cfg", b"{}")]);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(text.contains("name=\"profile\""));
        // A boundary found in a part is not used.
        let (ct, _) = multipart_seeded(&[("p", b"..crossprof-ff-0..")], 0xff);
        assert_eq!(ct, "multipart/form-data; boundary=crossprof-ff-1");
    }
}
