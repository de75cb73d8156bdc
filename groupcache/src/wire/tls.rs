//! TLS between peers, on rustls with the `ring` provider: the CA that peers' certificates must
//! chain to, and optionally this replica's own certificate to present as a client (mTLS).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::Error;

/// Trust and identity for peer connections over TLS.
///
/// ```no_run
/// # fn run(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), groupcache_rs::Error> {
/// let tls = groupcache_rs::PeerTls::new(ca)?.identity(cert, key)?;
/// let server_config = tls.server_config(true)?; // for groupcache_rs::Server::tls
/// // Groupcache::builder(...).peer_tls(tls) for the client side; peer URLs start with https://
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PeerTls {
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("PeerTls")
            .field("trusted_roots", &self.roots.len())
            .field("has_identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl PeerTls {
    /// Trusts the certificates in `ca_pem` (one or more PEM certificates).
    pub fn new(ca_pem: &[u8]) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for certificate in certificates(ca_pem)? {
            roots
                .add(certificate)
                .map_err(|e| tls_error("CA certificate", e))?;
        }
        Ok(PeerTls {
            roots: Arc::new(roots),
            identity: None,
            server_name: None,
        })
    }

    /// This replica's certificate chain and private key (PEM), presented to peers as a client
    /// certificate and, through [`PeerTls::server_config`], as the server certificate.
    pub fn identity(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls_error("private key PEM", e))?;
        self.identity = Some((certificates(cert_chain_pem)?, Arc::new(key)));
        Ok(self)
    }

    /// Verifies every peer's certificate against `name` instead of the host in the peer's URL.
    ///
    /// Where peers are dialled by address (pods at `https://POD_IP:8081`, whose addresses change
    /// with every restart), no one certificate can name every replica's address. With a server
    /// name, every replica can present one certificate for `name` (a DNS name, such as
    /// `groupcache-peer`, or an IP address), issued by the CA: trust still comes from the CA, and
    /// the replicas of one deployment share one identity either way. Without it (the default),
    /// each peer's certificate must name the host its URL has.
    ///
    /// ```no_run
    /// # fn run(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), groupcache_rs::Error> {
    /// let tls = groupcache_rs::PeerTls::new(ca)?
    ///     .identity(cert, key)?
    ///     .server_name("groupcache-peer")?;
    /// # Ok(()) }
    /// ```
    pub fn server_name(mut self, name: &str) -> Result<Self, Error> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| Error::Config(format!("TLS server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name peers' certificates are verified against, if set by
    /// [`server_name`](PeerTls::server_name).
    pub(crate) fn verified_name(&self) -> Option<ServerName<'static>> {
        self.server_name.clone()
    }

    /// The client side: verify peers against the CA, present the identity if there is one.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("client protocol versions", e))?
            .with_root_certificates(self.roots.clone());
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| tls_error("client certificate", e)),
        }
    }

    /// The server side, for [`Server::tls`](crate::Server::tls): present the identity and, if
    /// `require_client_certificates`, refuse clients without a certificate from the CA (mTLS).
    pub fn server_config(
        &self,
        require_client_certificates: bool,
    ) -> Result<Arc<rustls::ServerConfig>, Error> {
        let (chain, key) = self.identity.as_ref().ok_or_else(|| {
            Error::Config("a TLS server needs an identity (certificate and key)".into())
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("server protocol versions", e))?;
        let builder = if require_client_certificates {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
                    .build()
                    .map_err(|e| tls_error("client verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("server certificate", e))?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error("certificate PEM", e))?;
    if certificates.is_empty() {
        return Err(Error::Config("no certificate found in the PEM".into()));
    }
    Ok(certificates)
}

fn tls_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS {what}: {error}"))
}
