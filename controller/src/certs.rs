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
//!
//! A generated certificate is renewed before it expires (issue 12, hole 9):
//! it is valid for [`CertSettings::validity`] (a year by default) and its
//! Secret carries [`ANNOTATION_RENEW_AFTER`], two thirds into that; from
//! then on the first replica to look generates a new CA and serving
//! certificate and replaces the Secret (on condition of its
//! `resourceVersion`, so one replica wins). The new `ca.crt` holds the new
//! CA followed by the previous one, so that the `caBundle` trusts the
//! replicas still serving the old certificate until they re-read the
//! Secret; the `caBundle` is updated before a replica serves the new
//! certificate. A generated Secret without the annotation (from before
//! renewal existed, valid ten years) is renewed at once.

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
/// Annotation on a generated webhook Secret: when (RFC 3339) its
/// certificate is due for renewal, two thirds into its validity.
pub const ANNOTATION_RENEW_AFTER: &str = "stash.rs/renew-after";
/// How long a generated CA and serving certificate are valid by default.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often [`keep_current`] looks at the Secret and the `caBundle` by
/// default.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(60);

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
    /// How long a generated certificate is valid ([`DEFAULT_VALIDITY`]); it
    /// is renewed two thirds into it.
    pub validity: Duration,
    /// How often the Secret and the `caBundle` are looked at
    /// ([`DEFAULT_RECHECK`]).
    pub recheck: Duration,
}

impl CertSettings {
    /// Settings for Secret `ns/secret` and the Service `service` of `ns`,
    /// keeping the `caBundle` of `webhook_configuration`, with the default
    /// validity and recheck interval.
    pub fn new(
        ns: &str,
        secret: &str,
        service: &str,
        webhook_configuration: Option<String>,
    ) -> CertSettings {
        CertSettings {
            namespace: ns.to_owned(),
            secret: secret.to_owned(),
            dns_names: service_dns_names(service, ns),
            webhook_configuration,
            validity: DEFAULT_VALIDITY,
            recheck: DEFAULT_RECHECK,
        }
    }
}

/// When a certificate generated at `at` and valid for `validity` is due
/// for renewal: two thirds into its validity.
pub fn renew_after(
    at: chrono::DateTime<chrono::Utc>,
    validity: Duration,
) -> chrono::DateTime<chrono::Utc> {
    at + chrono::Duration::from_std(validity * 2 / 3).unwrap_or(chrono::Duration::MAX)
}

/// Whether the generated Secret `s` is due for renewal at `now`: its
/// [`ANNOTATION_RENEW_AFTER`] has passed, or it has none (or an unreadable
/// one). Secrets this controller did not generate are never due.
pub fn renewal_due(s: &Secret, now: chrono::DateTime<chrono::Utc>) -> bool {
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    if !annotations.contains_key(ANNOTATION_GENERATED) {
        return false;
    }
    match annotations
        .get(ANNOTATION_RENEW_AFTER)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) => now >= t,
        None => true,
    }
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
/// `dns_names` (names that parse as IP addresses become IP SANs), both
/// valid from yesterday (clock skew) until `validity` from now.
pub fn generate(dns_names: &[String], validity: Duration) -> Result<ServingCert> {
    let gen = |e: rcgen::Error| Error::Certificate {
        what: "generate the webhook's certificate".into(),
        reason: e.to_string(),
    };
    let now = chrono::Utc::now();
    let (not_before, not_after) = {
        use chrono::{Datelike, Timelike};
        let y = now - chrono::Duration::days(1);
        let since_midnight = Duration::from_secs(u64::from(now.num_seconds_from_midnight()));
        (
            rcgen::date_time_ymd(y.year(), y.month() as u8, y.day() as u8),
            rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8)
                + since_midnight
                + validity,
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
        let cert = generate(&settings.dns_names, settings.validity)?;
        let secret = generated_secret(settings, &cert, None);
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

/// The Secret holding generated `cert`, due for renewal two thirds into
/// `settings.validity`; with the `resourceVersion` of the Secret it
/// replaces, if any.
fn generated_secret(
    settings: &CertSettings,
    cert: &ServingCert,
    resource_version: Option<String>,
) -> Secret {
    let data = |v: &str| ByteString(v.as_bytes().to_vec());
    let renew = renew_after(chrono::Utc::now(), settings.validity);
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(settings.secret.clone()),
            namespace: Some(settings.namespace.clone()),
            resource_version,
            annotations: Some(
                [
                    (
                        ANNOTATION_GENERATED.to_owned(),
                        "stash-controller".to_owned(),
                    ),
                    (
                        ANNOTATION_RENEW_AFTER.to_owned(),
                        renew.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                ]
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
    }
}

/// The first certificate of a PEM bundle (with its markers), if any.
fn first_pem_certificate(bundle: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let end = bundle[start..].find(END)? + start + END.len();
    Some(&bundle[start..end])
}

/// Renews the generated Secret `old` if it is due: a new CA and serving
/// certificate, `ca.crt` the new CA followed by the old one (the replicas
/// still serving the old certificate stay trusted until they re-read it).
/// Replaced on condition of `old`'s `resourceVersion`: when another replica
/// renewed first, theirs is read instead. Returns the Secret's certificate
/// afterwards.
pub async fn renew_if_due(
    client: &Client,
    settings: &CertSettings,
    old: &Secret,
) -> Result<Option<ServingCert>> {
    if !renewal_due(old, chrono::Utc::now()) {
        return Ok(None);
    }
    let ns = &settings.namespace;
    let name = &settings.secret;
    let mut cert = generate(&settings.dns_names, settings.validity)?;
    if let Some(previous) = from_secret(old)
        .as_ref()
        .and_then(|c| first_pem_certificate(&c.ca_pem).map(str::to_owned))
    {
        cert.ca_pem = format!("{}\n{previous}\n", cert.ca_pem.trim_end());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = generated_secret(settings, &cert, old.metadata.resource_version.clone());
    match api.replace(name, &PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{ns}/{name}"), "renewed the webhook's CA and serving certificate");
            Ok(Some(cert))
        }
        // Another replica renewed (or someone changed it) first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(kube_err("renew webhook Secret", ns, name)(e)),
    }
}

/// The Secret's certificate, renewed first if it is due.
async fn load_renewing(client: &Client, settings: &CertSettings) -> Result<ServingCert> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    if let Some(s) = api.get_opt(&settings.secret).await.map_err(kube_err(
        "get webhook Secret",
        &settings.namespace,
        &settings.secret,
    ))? {
        if let Some(cert) = renew_if_due(client, settings, &s).await? {
            return Ok(cert);
        }
    }
    load_or_create(client, settings).await
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

    /// The certificate served now.
    pub fn serving(&self) -> ServingCert {
        self.inner.read().expect("cert lock").1.clone()
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
    let cert = load_renewing(client, settings).await?;
    if let Some(cfg) = &settings.webhook_configuration {
        patch_ca_bundle(client, cfg, &cert.ca_pem).await?;
    }
    CurrentCert::new(cert)
}

/// Every [`CertSettings::recheck`] until `shutdown`: renews a generated
/// certificate that is due, puts the Secret's CA into the `caBundle` if it
/// differs, and then serves the Secret's certificate if it changed. Errors
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
            () = tokio::time::sleep(settings.recheck) => {}
        }
        let result = async {
            let cert = load_renewing(&client, &settings).await?;
            // Trust first, then serve: the apiserver never sees a
            // certificate its caBundle does not yet trust.
            if let Some(cfg) = &settings.webhook_configuration {
                patch_ca_bundle(&client, cfg, &cert.ca_pem).await?;
            }
            if current.replace(cert.clone())? {
                tracing::info!(secret = %settings.secret, "serving the webhook Secret's new certificate");
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
        let cert = generate(&names, DEFAULT_VALIDITY).unwrap();
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
        assert!(current
            .replace(generate(&names, DEFAULT_VALIDITY).unwrap())
            .unwrap());
    }

    #[test]
    fn generated_secrets_are_due_two_thirds_into_their_validity() {
        let settings = CertSettings::new("ns", "tls", "svc", None);
        let cert = generate(&settings.dns_names, Duration::from_secs(3000)).unwrap();
        let secret = generated_secret(
            &CertSettings {
                validity: Duration::from_secs(3000),
                ..settings
            },
            &cert,
            None,
        );
        let now = chrono::Utc::now();
        assert!(!renewal_due(&secret, now));
        assert!(!renewal_due(&secret, now + chrono::Duration::seconds(1990)));
        assert!(renewal_due(&secret, now + chrono::Duration::seconds(2001)));
        // From before renewal existed: due at once.
        let mut old = secret.clone();
        old.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANNOTATION_RENEW_AFTER);
        assert!(renewal_due(&old, now));
        // Someone else's (cert-manager's): never.
        let mut theirs = secret;
        theirs.metadata.annotations = None;
        assert!(!renewal_due(&theirs, now + chrono::Duration::days(10000)));
        // The certificate itself expires when the Secret says it would.
        let leaf = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let root = CertificateDer::from_pem_slice(cert.ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let at = |secs: i64| {
            rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
                (now.timestamp() + secs) as u64,
            ))
        };
        let name = rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &name, &[], at(2900))
            .is_ok());
        assert!(verifier
            .verify_server_cert(&leaf, &[], &name, &[], at(3100))
            .is_err());
    }

    #[test]
    fn a_broken_key_is_refused_with_the_reason() {
        let mut cert = generate(&["x".into()], DEFAULT_VALIDITY).unwrap();
        cert.key_pem = "not a key".into();
        let err = CurrentCert::new(cert).unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");
    }
}
