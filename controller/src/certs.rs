//! The admission webhook's TLS: a serving certificate the apiserver trusts.
//!
//! The certificate lives in a Secret of the controller's namespace
//! (`--webhook-secret`, `kubernetes.io/tls` with `ca.crt`), so that every
//! replica serves the same one and the MutatingWebhookConfiguration's
//! `caBundle` trusts them all. When the Secret does not exist, the first
//! replica to start generates a self-signed CA and a serving certificate for
//! the webhook Service's DNS names and creates it; the others, losing that
//! race, read the winner's. A Secret made by someone else (cert-manager's,
//! say) is used as it is and never written.
//!
//! [`keep_current`] re-reads the Secret and re-checks the `caBundle` every
//! minute: a rotated certificate is served without a restart, and a
//! `caBundle` reset by re-applying the manifests is put back.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::{kube_err, Error, Result};

/// Annotation marking a webhook Secret this controller generated (and so
/// may replace).
pub const ANNOTATION_GENERATED: &str = "stash.rs/generated-by";
/// How long a generated CA and serving certificate are valid, in years.
const VALIDITY_YEARS: i32 = 10;
/// How often [`keep_current`] looks at the Secret and the `caBundle`.
const RECHECK: Duration = Duration::from_secs(60);

/// A serving certificate, its key and the CA that signed it, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingCert {
    /// The CA certificate: the webhook configuration's `caBundle`.
    pub ca_pem: String,
    /// The serving certificate (chain).
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// Where the webhook's certificate comes from and where its CA goes.
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// Namespace of the Secret (the controller's).
    pub namespace: String,
    /// Name of the `kubernetes.io/tls` Secret holding `ca.crt`, `tls.crt`
    /// and `tls.key`.
    pub secret: String,
    /// DNS names a generated certificate is valid for (the webhook
    /// Service's `<svc>.<ns>.svc` and friends).
    pub dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose `caBundle`s to keep at the CA;
    /// none to leave it alone (e.g. cert-manager's CA injector does it).
    pub webhook_configuration: Option<String>,
}

/// The DNS names of a Service: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and
/// `<svc>.<ns>.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A new self-signed CA, and a serving certificate it signed for
/// `dns_names` (names that parse as IP addresses become IP SANs).
pub fn generate(dns_names: &[String]) -> Result<ServingCert> {
    let gen = |e: rcgen::Error| Error::Certificate {
        what: "generate the webhook's certificate".into(),
        reason: e.to_string(),
    };
    let now = chrono::Utc::now();
    let (not_before, not_after) = {
        use chrono::Datelike;
        let y = now - chrono::Duration::days(1);
        (
            rcgen::date_time_ymd(y.year(), y.month() as u8, y.day() as u8),
            rcgen::date_time_ymd(now.year() + VALIDITY_YEARS, now.month() as u8, 1),
        )
    };
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "stash-controller webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(gen)?;
    let mut leaf = CertificateParams::new(dns_names.to_vec()).map_err(gen)?;
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer).map_err(gen)?;
    Ok(ServingCert {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn secret_text(s: &Secret, key: &str) -> Option<String> {
    let b = s.data.as_ref()?.get(key)?;
    String::from_utf8(b.0.clone()).ok()
}

fn from_secret(s: &Secret) -> Option<ServingCert> {
    Some(ServingCert {
        ca_pem: secret_text(s, "ca.crt")?,
        cert_pem: secret_text(s, "tls.crt")?,
        key_pem: secret_text(s, "tls.key")?,
    })
}

/// The certificate in the Secret, creating the Secret with a generated one
/// when it does not exist.
pub async fn load_or_create(client: &Client, settings: &CertSettings) -> Result<ServingCert> {
    let ns = &settings.namespace;
    let name = &settings.secret;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        if let Some(s) =
            api.get_opt(name)
                .await
                .map_err(kube_err("get webhook Secret", ns, name))?
        {
            return from_secret(&s).ok_or_else(|| Error::Certificate {
                what: format!("Secret {ns}/{name}"),
                reason: "it lacks ca.crt, tls.crt or tls.key (delete it to have the \
                         controller generate one, or let cert-manager fill it)"
                    .into(),
            });
        }
        let cert = generate(&settings.dns_names)?;
        let data = |v: &str| ByteString(v.as_bytes().to_vec());
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                annotations: Some(
                    [(
                        ANNOTATION_GENERATED.to_owned(),
                        "stash-controller".to_owned(),
                    )]
                    .into(),
                ),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_owned(),
                        "stash-controller".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("ca.crt".to_owned(), data(&cert.ca_pem)),
                    ("tls.crt".to_owned(), data(&cert.cert_pem)),
                    ("tls.key".to_owned(), data(&cert.key_pem)),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{ns}/{name}"), "generated the webhook's CA and serving certificate");
                return Ok(cert);
            }
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube_err("create webhook Secret", ns, name)(e)),
        }
    }
    Err(Error::Certificate {
        what: format!("Secret {ns}/{name}"),
        reason: "it was created and deleted again while this replica read it".into(),
    })
}

/// Sets `caBundle` of every webhook of MutatingWebhookConfiguration `name`
/// to `ca_pem`, unless they already are; whether it changed anything.
pub async fn patch_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let cfg =
        api.get(name)
            .await
            .map_err(kube_err("get MutatingWebhookConfiguration", "", name))?;
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks = cfg.webhooks.unwrap_or_default();
    let mut ops = Vec::new();
    for (i, w) in webhooks.iter().enumerate() {
        if w.client_config.ca_bundle.as_ref() != Some(&want) {
            // Pinned to the webhook's name: a concurrent edit that reorders
            // them fails the patch instead of trusting the wrong one.
            ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
            ops.push(
                json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                            "value": want}),
            );
        }
    }
    if ops.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON patch");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(kube_err(
            "patch caBundle of MutatingWebhookConfiguration",
            "",
            name,
        ))?;
    tracing::info!(configuration = name, "set the webhook's caBundle");
    Ok(true)
}

/// rustls's view of a [`ServingCert`].
fn certified_key(cert: &ServingCert) -> Result<CertifiedKey> {
    let bad = |reason: String| Error::Certificate {
        what: "the webhook's serving certificate".into(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(bad("tls.crt holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| bad(format!("tls.key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| bad(format!("tls.key: {e}")))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The serving certificate, replaceable while connections are served.
#[derive(Debug)]
pub struct CurrentCert {
    /// What rustls hands out, and the PEM it came from.
    inner: RwLock<(Arc<CertifiedKey>, ServingCert)>,
}

impl CurrentCert {
    /// Serves `cert`.
    pub fn new(cert: ServingCert) -> Result<Arc<CurrentCert>> {
        let key = Arc::new(certified_key(&cert)?);
        Ok(Arc::new(CurrentCert {
            inner: RwLock::new((key, cert)),
        }))
    }

    /// Serves `cert` from now on; whether it differs from the one served.
    pub fn replace(&self, cert: ServingCert) -> Result<bool> {
        if self.inner.read().expect("cert lock").1 == cert {
            return Ok(false);
        }
        let key = Arc::new(certified_key(&cert)?);
        *self.inner.write().expect("cert lock") = (key, cert);
        Ok(true)
    }

    /// A TLS server configuration serving the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.read().ok()?.0.clone())
    }
}

/// Loads (or creates) the certificate and sets the `caBundle`: what the
/// webhook needs before it can serve.
pub async fn prepare(client: &Client, settings: &CertSettings) -> Result<Arc<CurrentCert>> {
    let cert = load_or_create(client, settings).await?;
    if let Some(cfg) = &settings.webhook_configuration {
        patch_ca_bundle(client, cfg, &cert.ca_pem).await?;
    }
    CurrentCert::new(cert)
}

/// Every minute until `shutdown`: serves the Secret's certificate if it
/// changed, and puts the CA back into the `caBundle` if it differs. Errors
/// are logged and tried again.
pub async fn keep_current(
    client: Client,
    settings: CertSettings,
    current: Arc<CurrentCert>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECHECK) => {}
        }
        let result = async {
            let cert = load_or_create(&client, &settings).await?;
            if current.replace(cert.clone())? {
                tracing::info!(secret = %settings.secret, "serving the webhook Secret's new certificate");
            }
            if let Some(cfg) = &settings.webhook_configuration {
                patch_ca_bundle(&client, cfg, &cert.ca_pem).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot keep the webhook's certificate current");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn generated_certificate_is_served_and_verifies_against_its_ca() {
        let names = service_dns_names("stash-controller-webhook", "stash-system");
        let cert = generate(&names).unwrap();
        let current = CurrentCert::new(cert.clone()).unwrap();
        let _ = current.server_config();
        // The CA verifies the serving certificate for the Service's name,
        // and only for its names.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in [
            "stash-controller-webhook.stash-system.svc",
            "stash-controller-webhook",
        ] {
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &rustls::pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    now,
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from("evil.example.com").unwrap(),
                &[],
                now,
            )
            .is_err());
        // Replacing with the same certificate changes nothing.
        assert!(!current.replace(cert).unwrap());
        assert!(current.replace(generate(&names).unwrap()).unwrap());
    }

    #[test]
    fn a_broken_key_is_refused_with_the_reason() {
        let mut cert = generate(&["x".into()]).unwrap();
        cert.key_pem = "not a key".into();
        let err = CurrentCert::new(cert).unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");
    }
}
