//! OTLP over gRPC (`--otlp-protocol grpc`): each window's
//! `ExportProfilesServiceRequest` sent with the `ProfilesService/Export` call
//! of the client the `opentelemetry-proto` crate generates with tonic (the
//! OpenTelemetry Collector's `otlp` receiver on port 4317), gzip-compressed
//! by tonic, with the export headers as gRPC metadata.
//!
//! The exporter's thread is a plain thread (as for HTTP); this one runs a
//! tokio runtime of its own on it, one thread, for the calls. The outbox
//! holds the request protobuf-encoded; it is decoded again here (a few
//! hundred microseconds a window) so that tonic's generated code, not ours,
//! encodes what goes out.
//!
//! Retried as the OTLP specification says for gRPC (`docs/specification.md`,
//! "OTLP/gRPC Throttling" and "Failures", v1.10.0): `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `CANCELLED`,
//! `OUT_OF_RANGE` and `DATA_LOSS` are tried again later, and a connection
//! that fails (`UNKNOWN` with a transport cause); any other status drops the
//! request. A partial success (some
//! profiles rejected) is logged.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
};
use tonic::{
    Code,
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{outbox::Stored, tls::TlsFiles};

/// Why a call failed.
pub enum Failed {
    /// Try again later.
    Retry(String),
    /// Never again: drop the request.
    Refused(String),
}

/// A gRPC client of one endpoint, with its runtime.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    client: ProfilesServiceClient<Channel>,
    /// `(key, value)` metadata every call carries.
    metadata: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    /// The URL as shown in errors.
    shown: String,
}

impl Client {
    /// A client of `url` (`http://host:4317` or `https://...`), its calls
    /// limited to `timeout`, connected when first used.
    pub fn new(
        url: &str,
        headers: &[(String, String)],
        tls: &TlsFiles,
        timeout: Duration,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for gRPC: {e}"))?;
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url}: {e}"))?
            .timeout(timeout)
            .connect_timeout(timeout);
        if url.starts_with("https://") {
            let mut config = ClientTlsConfig::new();
            config = match &tls.roots_pem {
                Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
                None => config.with_webpki_roots(),
            };
            if let Some((cert, key)) = &tls.client_pem {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("{url}: TLS: {e}"))?;
        }
        let channel = {
            let _inside = runtime.enter();
            endpoint.connect_lazy()
        };
        let client = ProfilesServiceClient::new(channel)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        let metadata = headers
            .iter()
            .map(|(k, v)| {
                let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("header {k}: {e}"))?;
                let value =
                    MetadataValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
                Ok((key, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Client {
            runtime,
            client,
            metadata,
            shown: url.to_owned(),
        })
    }

    /// Sends one stored request (a protobuf-encoded
    /// `ExportProfilesServiceRequest`).
    pub fn send(&mut self, r: &Stored) -> Result<(), Failed> {
        let shown = &self.shown;
        let body = if r.gzip {
            match crate::pprof::gunzip(&r.body) {
                Ok(b) => std::borrow::Cow::Owned(b),
                Err(e) => return Err(Failed::Refused(format!("{shown}: a stored request: {e}"))),
            }
        } else {
            std::borrow::Cow::Borrowed(&r.body[..])
        };
        let message = match <ExportProfilesServiceRequest as prost::Message>::decode(&body[..]) {
            Ok(m) => m,
            Err(e) => return Err(Failed::Refused(format!("{shown}: a stored request: {e}"))),
        };
        let mut request = tonic::Request::new(message);
        for (k, v) in &self.metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        let client = &mut self.client;
        match self.runtime.block_on(client.export(request)) {
            Ok(answer) => {
                if let Some(partial) = &answer.get_ref().partial_success
                    && partial.rejected_profiles > 0
                {
                    log::warn!(
                        "otlp: {shown} rejected {} profile(s): {}",
                        partial.rejected_profiles,
                        partial.error_message
                    );
                }
                Ok(())
            }
            Err(status) => {
                let why = format!("{shown}: gRPC {:?}: {}", status.code(), status.message());
                match status.code() {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::OutOfRange
                    | Code::DataLoss => Err(Failed::Retry(why)),
                    // A transport failure (a connection cut, TLS) can come as
                    // Unknown with its cause attached: tried again; a
                    // server's own Unknown is not.
                    Code::Unknown if std::error::Error::source(&status).is_some() => {
                        Err(Failed::Retry(why))
                    }
                    _ => Err(Failed::Refused(format!("{why}, request dropped"))),
                }
            }
        }
    }
}
