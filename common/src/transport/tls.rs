//! Mutual TLS: a private cluster CA and the node / client certificates it signs (rcgen), and the
//! rustls configurations every QUIC endpoint uses (TLS 1.3 only, client certificates required).
//!
//! Certificates directory layout (written by [`generate_cluster_certs`]):
//!
//! ```text
//! ca.pem  ca.key          the cluster CA (keep ca.key off production nodes once issued)
//! node.pem  node.key      a node certificate: SAN `tally-node` + the given hosts
//! client.pem  client.key  a client certificate (client auth only)
//! ```
//!
//! Every node certificate names [`NODE_SERVER_NAME`]; clients verify servers against that name
//! and the cluster CA, so any node signed by the CA may serve any address. Node identity beyond
//! "signed by this cluster's CA" is checked at the application level (node ids in messages).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The server name in every node certificate and the one clients verify against.
pub const NODE_SERVER_NAME: &str = "tally-node";

/// Errors creating or loading certificates and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM {what}: {detail}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// A node: serves both protocols and connects to other nodes. Extra host names / IPs go
    /// into its subject alternative names beside [`NODE_SERVER_NAME`].
    Node { hosts: Vec<String> },
    /// A client application or tool.
    Client,
}

/// Paths of one certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates `dir` with a fresh cluster CA, a node certificate (`node.pem`) and a client
/// certificate (`client.pem`). Refuses to overwrite an existing CA.
pub fn generate_cluster_certs(
    dir: &Path,
    cluster: &str,
    node_hosts: &[String],
) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert_path = dir.join("ca.pem");
    if ca_cert_path.exists() {
        return Err(TlsError::Io {
            path: ca_cert_path,
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a CA exists already"),
        });
    }
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name = name(&format!("tally cluster CA {cluster}"));
    let ca_cert = params.self_signed(&ca_key)?;
    write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    fs::write(&ca_cert_path, ca_cert.pem()).map_err(io(&ca_cert_path))?;

    issue_cert(
        dir,
        "node",
        &CertKind::Node {
            hosts: node_hosts.to_vec(),
        },
    )?;
    issue_cert(dir, "client", &CertKind::Client)?;
    Ok(())
}

/// Issues `<dir>/<name>.pem` and `<dir>/<name>.key` signed by the CA in `dir`.
pub fn issue_cert(dir: &Path, cert_name: &str, kind: &CertKind) -> Result<CertPaths, TlsError> {
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_pem = read_string(&ca_pem_path)?;
    let ca_key = KeyPair::from_pem(&read_string(&ca_key_path)?).map_err(|e| TlsError::Pem {
        path: ca_key_path.clone(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(|e| TlsError::Pem {
        path: ca_pem_path.clone(),
        what: "CA certificate",
        detail: e.to_string(),
    })?;
    // Re-creating the issuer from its parameters and key yields the same issuer name and key
    // identifier, which is all signing needs.
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = match kind {
        CertKind::Node { hosts } => {
            let mut sans = vec![NODE_SERVER_NAME.to_owned()];
            sans.extend(
                hosts
                    .iter()
                    .filter(|h| h.as_str() != NODE_SERVER_NAME)
                    .cloned(),
            );
            let mut p = CertificateParams::new(sans)?;
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p
        }
        CertKind::Client => {
            let mut p = CertificateParams::new(vec!["tally-client".to_owned()])?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    params.distinguished_name = name(cert_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let paths = CertPaths {
        cert: dir.join(format!("{cert_name}.pem")),
        key: dir.join(format!("{cert_name}.key")),
    };
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    fs::write(&paths.cert, cert.pem()).map_err(|source| TlsError::Io {
        path: paths.cert.clone(),
        source,
    })?;
    Ok(paths)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "tally");
    dn
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// A loaded identity: the trusted cluster CA plus this endpoint's certificate chain and key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub roots: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads `<dir>/ca.pem` and `<dir>/<name>.pem` / `<name>.key`.
    pub fn load(dir: &Path, cert_name: &str) -> Result<TlsIdentity, TlsError> {
        Self::load_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{cert_name}.pem")),
            &dir.join(format!("{cert_name}.key")),
        )
    }

    pub fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        Ok(TlsIdentity {
            roots: load_certs(ca)?,
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
        detail: e.to_string(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    Ok(store)
}

/// A rustls server configuration that requires client certificates signed by the cluster CA
/// and offers the given ALPN protocols.
pub fn server_config(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(&identity.roots)?),
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A rustls client configuration that trusts the cluster CA, presents this identity, and asks
/// for the given ALPN protocol.
pub fn client_config(
    identity: &TlsIdentity,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(&identity.roots)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
