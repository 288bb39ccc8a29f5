//! The TLS files of the agent's `https` export destinations (`--ca-file`,
//! `--cert-file`, `--key-file`, else the system's roots), read and checked
//! once at start, then given to ureq (HTTP) or tonic (gRPC).

use std::path::Path;

/// The TLS files of `https` destinations, read and checked once at start:
/// the roots (`--ca-file`'s, else the system's: the first bundle of
/// [`SYSTEM_ROOTS`] that holds a certificate; `None`: the Mozilla roots
/// built in), and the client certificate chain and key (`--cert-file`,
/// `--key-file`). Files are read without following a link, at most 1 MiB
/// each; a key others can read is refused.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificates to trust.
    pub roots_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key to present.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads and checks the files.
    pub fn read(
        ca_file: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, crate::error::UsageError> {
        use ureq::tls::PemItem;
        let bad = |path: &Path, why: String| crate::error::UsageError::TlsFile {
            path: path.to_path_buf(),
            why,
        };
        // (bytes, certificates in it, whether it holds a private key)
        let pem = |path: &Path,
                   private: bool|
         -> Result<(Vec<u8>, usize, bool), crate::error::UsageError> {
            let bytes = read_pem_file(path, private).map_err(|e| bad(path, e.to_string()))?;
            let items = ureq::tls::parse_pem(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, format!("not PEM: {e}")))?;
            let certs = items
                .iter()
                .filter(|i| matches!(i, PemItem::Certificate(_)))
                .count();
            let key = items.iter().any(|i| matches!(i, PemItem::PrivateKey(_)));
            Ok((bytes, certs, key))
        };
        let roots_pem = match ca_file {
            Some(path) => {
                let (bytes, certs, _) = pem(path, false)?;
                if certs == 0 {
                    return Err(bad(path, "it holds no PEM certificate".into()));
                }
                Some(bytes)
            }
            None => SYSTEM_ROOTS
                .iter()
                .filter_map(|p| pem(Path::new(p), false).ok())
                .find(|(_, certs, _)| *certs > 0)
                .map(|(bytes, _, _)| bytes),
        };
        let client_pem = match client {
            Some((cert_path, key_path)) => {
                let (chain, certs, _) = pem(cert_path, false)?;
                if certs == 0 {
                    return Err(bad(cert_path, "it holds no PEM certificate".into()));
                }
                let (key, _, has_key) = pem(key_path, true)?;
                if !has_key {
                    return Err(bad(key_path, "it holds no PEM private key".into()));
                }
                Some((chain, key))
            }
            None => None,
        };
        Ok(TlsFiles {
            roots_pem,
            client_pem,
        })
    }

    /// As ureq's settings (HTTP).
    pub fn ureq(&self) -> ureq::tls::TlsConfig {
        use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
        let items = |pem: &[u8]| -> Vec<PemItem<'static>> {
            ureq::tls::parse_pem(pem).filter_map(Result::ok).collect()
        };
        let certs = |pem: &[u8]| -> Vec<Certificate<'static>> {
            items(pem)
                .into_iter()
                .filter_map(|i| match i {
                    PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect()
        };
        let roots = match &self.roots_pem {
            Some(pem) => RootCerts::new_with_certs(&certs(pem)),
            None => RootCerts::WebPki,
        };
        let client = self.client_pem.as_ref().and_then(|(chain, key)| {
            let key: PrivateKey<'static> = items(key).into_iter().find_map(|i| match i {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })?;
            Some(ClientCert::new_with_certs(&certs(chain), key))
        });
        TlsConfig::builder()
            .root_certs(roots)
            .client_cert(client)
            .build()
    }
}

/// Where the system's certificate bundle is, by distribution (Debian and
/// Ubuntu, Fedora and RHEL, openSUSE, Alpine's and others' compatibility
/// link).
pub const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A PEM file's bytes: a regular file, not through a link (the system
/// bundle's own path may be a link: its folder is root's), at most 1 MiB;
/// a `private` one (a key) readable by its owner only.
fn read_pem_file(path: &Path, private: bool) -> std::io::Result<Vec<u8>> {
    use std::{
        io::Read as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    };
    let nofollow = if SYSTEM_ROOTS.iter().any(|p| Path::new(p) == path) {
        0
    } else {
        libc::O_NOFOLLOW
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    if private && meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "other users can read or write it (mode {:o}): chmod 600 {}",
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes)?;
    Ok(bytes)
}
