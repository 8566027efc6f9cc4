//! `understudy certs init`: a small CA and one certificate per server of a pair, for TLS with
//! mutual certificates between engines.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::UserError;

/// One server: its name and the addresses peers reach it at.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its name (a DNS name, used in the certificate and the file names).
    pub name: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Parses `NAME[=IP,IP…]`.
///
/// # Errors
///
/// A malformed address.
pub fn parse_host(text: &str) -> Result<Host, UserError> {
    let (name, addresses) = text.split_once('=').unwrap_or((text, ""));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(UserError(format!(
            "{name:?} is not a host name (letters, digits, '-' and '.')"
        )));
    }
    let addresses = addresses
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|_| UserError(format!("{a:?} is not an IP address"))))
        .collect::<Result<_, _>>()?;
    Ok(Host { name: name.to_string(), addresses })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

/// Makes `dir/ca.pem` (and its key) and `dir/NAME.pem` / `dir/NAME-key.pem` for each host.
///
/// # Errors
///
/// The folder already holds a CA, or files cannot be written.
pub fn init(dir: &Path, hosts: &[Host]) -> Result<()> {
    if hosts.is_empty() {
        return Err(UserError(
            "name the servers: --host alpha=198.51.100.1 --host beta=198.51.100.2".into(),
        )
        .into());
    }
    if dir.join("ca.pem").exists() {
        return Err(UserError(format!(
            "{} already holds a CA (ca.pem): use another folder",
            dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.distinguished_name.push(DnType::CommonName, "understudy CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the CA")?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    write_private(&dir.join("ca-key.pem"), &ca.key().serialize_pem())?;
    for host in hosts {
        let key = KeyPair::generate().context("generating a server key")?;
        let mut params =
            CertificateParams::new(vec![host.name.clone()]).context("server parameters")?;
        params.distinguished_name.push(DnType::CommonName, host.name.clone());
        params.subject_alt_names.extend(host.addresses.iter().map(|a| SanType::IpAddress(*a)));
        // One certificate serves both directions: it accepts as a target, connects as a source.
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let cert = params.signed_by(&key, &ca).with_context(|| format!("signing {}", host.name))?;
        std::fs::write(dir.join(format!("{}.pem", host.name)), cert.pem())?;
        write_private(&dir.join(format!("{}-key.pem", host.name)), &key.serialize_pem())?;
    }
    println!(
        "wrote ca.pem (and ca-key.pem: keep it off the servers) and, per server, NAME.pem and NAME-key.pem in {}",
        dir.display()
    );
    for host in hosts {
        println!(
            "  on {0}: understudy serve --tls-ca ca.pem --tls-cert {0}.pem --tls-key {0}-key.pem ...",
            host.name
        );
    }
    Ok(())
}
